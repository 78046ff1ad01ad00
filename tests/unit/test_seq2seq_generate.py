"""Encoder-decoder decoding without transformers: greedy against the uncached full forward, a
padded batch against each source alone, beam search against an exhaustive search of every
output, the n-gram and min-length rules against plain Python, sampling against the softmax,
the cache reorder, and every argument's check. (HF ``generate`` parity is in
tests/parity/test_seq2seq_generate_parity.py.)"""

import math

import pytest
import torch

import attnkit
from attnkit.generation.beam import ban_eos_before, ban_repeated_ngrams
from attnkit.generation.seq2seq import generate_seq2seq
from attnkit.models import build_model
from attnkit.models.encdec import EncoderDecoder
from attnkit.models.encdec_config import get_encdec_preset

SMALL = dict(d_model=32, n_heads=4, d_ff=40, n_encoder_layers=2, n_decoder_layers=2)


def make(family="bart", vocab=23, seed=0, std=0.3):
    """A tiny model with weights large enough that its choices depend on the source."""
    extra = {"marian": dict(pad_token_id=vocab - 1, decoder_start_token_id=vocab - 1)}
    extra["t5"] = dict(head_dim=8, relative_buckets=8, relative_max_distance=10)
    cfg = get_encdec_preset(f"tiny-{family}", vocab_size=vocab, **SMALL, **extra.get(family, {}))
    torch.manual_seed(seed)
    model = EncoderDecoder(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, std)
    return model


def batch(model, lengths, seed=0):
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    S = max(lengths)
    src = torch.randint(3, cfg.vocab_size - 1, (len(lengths), S), generator=g)
    mask = (torch.arange(S)[None] < torch.tensor(lengths)[:, None]).long()
    return src.masked_fill(mask == 0, cfg.pad_token_id), mask


def full_logits(model, src, mask, prefix):
    """Last-position logits (R, V) of the decoder prefix (R, T), no cache."""
    with torch.no_grad():
        return model(input_ids=src, attention_mask=mask, decoder_input_ids=prefix).logits[:, -1]


@pytest.mark.parametrize("family", ["marian", "bart", "t5"])
def test_greedy_equals_the_uncached_argmax_and_each_source_alone(family):
    model = make(family)
    cfg = model.config
    src, mask = batch(model, [7, 3, 5, 1])
    out = attnkit.generate(model, src, attention_mask=mask, max_new_tokens=9)
    assert out.dtype == torch.long and out.shape[0] == 4 and out.shape[1] <= 10
    for i in range(4):
        n = int(mask[i].sum())
        s, m = src[i : i + 1, :n], mask[i : i + 1, :n]
        prefix = torch.tensor([[cfg.decoder_start_token_id]])
        while prefix.shape[1] < 10:
            nxt = full_logits(model, s, m, prefix).argmax(-1, keepdim=True)
            prefix = torch.cat([prefix, nxt], dim=1)
            if nxt.item() == cfg.eos_token_id:
                break
        L = prefix.shape[1]
        assert out[i, :L].tolist() == prefix[0].tolist()
        assert (out[i, L:] == cfg.pad_token_id).all()
        alone = attnkit.generate(model, s, attention_mask=m, max_new_tokens=9)
        assert alone[0].tolist() == out[i, : alone.shape[1]].tolist()


def all_outputs(model, src, mask, max_new, eos):
    """Every finished output of up to ``max_new`` tokens: (tokens, summed log probability)."""
    V = model.config.vocab_size
    start = model.config.decoder_start_token_id
    found = []
    live = [((), 0.0)]
    for step in range(max_new):
        prefixes = torch.tensor([[start, *t] for t, _ in live])
        R = len(live)
        logp = torch.log_softmax(
            full_logits(model, src.expand(R, -1), mask.expand(R, -1), prefixes).double(), -1
        )
        nxt = []
        for (toks, score), row in zip(live, logp):
            for v in range(V):
                item = (toks + (v,), score + row[v].item())
                (found if v == eos or step == max_new - 1 else nxt).append(item)
        live = nxt
    return found


@pytest.mark.parametrize(
    ("length_penalty", "early_stopping"), [(1.0, False), (0.0, True), (2.0, "never"), (-1.0, False)]
)
def test_beam_search_covering_every_prefix_finds_the_best_output(length_penalty, early_stopping):
    """With V^2 beams and 3 new tokens nothing is pruned: the best hypotheses returned are
    the best of all outputs, scored by summed log probability / length^length_penalty."""
    model = make("t5", vocab=6, seed=0, std=0.1)
    cfg = model.config
    src, mask = batch(model, [5], seed=1)
    found = all_outputs(model, src, mask, 3, cfg.eos_token_id)
    ranked = sorted(found, key=lambda f: -f[1] / len(f[0]) ** length_penalty)
    out = attnkit.generate(
        model,
        src,
        attention_mask=mask,
        max_new_tokens=3,
        num_beams=36,
        num_return_sequences=3,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
    )
    assert len({toks[:2] for toks, _ in ranked[:3]}) == 3  # they come from different beams
    if early_stopping is True:  # stops once 36 are finished: the best one is still exact
        ranked = ranked[:1]
    for row, (toks, _) in zip(out.tolist(), ranked):
        assert row[0] == cfg.decoder_start_token_id
        assert row[1 : 1 + len(toks)] == list(toks)
        assert all(t == cfg.pad_token_id for t in row[1 + len(toks) :])


def ngram_reference(row, n):
    banned = set()
    if n and len(row) >= n:
        tail = tuple(row[len(row) - n + 1 :])
        for i in range(len(row) - n + 1):
            if tuple(row[i : i + n - 1]) == tail:
                banned.add(row[i + n - 1])
    return banned


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4])
def test_no_repeat_ngram_bans_exactly_the_repeating_tokens(n):
    g = torch.Generator().manual_seed(n)
    for T in range(1, 9):
        ids = torch.randint(0, 4, (6, T), generator=g)  # a small alphabet: many repeats
        scores = torch.randn(6, 7, generator=g)
        got = ban_repeated_ngrams(ids, scores, n)
        for r in range(6):
            want = ngram_reference(ids[r].tolist(), n)
            assert {v for v in range(7) if got[r, v] == -math.inf} == want
            keep = [v for v in range(7) if v not in want]
            assert torch.equal(got[r, keep], scores[r, keep])


def test_min_length_bans_eos_until_reached():
    scores = torch.zeros(2, 5)
    eos = torch.tensor([1, 3])
    assert (
        ban_eos_before(torch.zeros(2, 3, dtype=torch.long), scores, 4, eos)[:, [1, 3]] == -math.inf
    ).all()
    assert torch.equal(ban_eos_before(torch.zeros(2, 4, dtype=torch.long), scores, 4, eos), scores)
    model = make("t5")
    src, mask = batch(model, [6, 4, 2])
    start = model.config.decoder_start_token_id
    free = attnkit.generate(model, src, attention_mask=mask, max_new_tokens=8, eos_token_id=[])
    eos = sorted(set(free[:, 1:3].flatten().tolist()) - {start})  # emitted early: the eos ids
    early = attnkit.generate(model, src, attention_mask=mask, max_new_tokens=8, eos_token_id=eos)
    assert torch.isin(early[:, 1:3], torch.tensor(eos)).any(1).all()
    for kw in (dict(num_beams=1), dict(num_beams=3)):
        out = attnkit.generate(
            model, src, attention_mask=mask, max_new_tokens=8, min_length=5, eos_token_id=eos, **kw
        )
        assert out.shape[1] >= 5
        assert not torch.isin(out[:, 1:4], torch.tensor(eos)).any()


def test_rows_end_at_eos_then_pad_and_lengths_follow_max_length():
    model = make("bart", vocab=8, seed=1)
    cfg = model.config
    src, mask = batch(model, [6, 5, 4, 3, 2, 6, 5, 4])
    free = attnkit.generate(model, src, attention_mask=mask, max_new_tokens=6, eos_token_id=[])
    assert free.shape == (8, 7)  # no eos: every row runs to the end
    counts = torch.bincount(free[:, 2:].flatten(), minlength=8)
    counts[cfg.decoder_start_token_id] = 0
    eos = int(counts.argmax())  # a token emitted in some rows: as eos, rows end at it
    for kw in (dict(num_beams=1), dict(num_beams=4)):
        out = attnkit.generate(
            model, src, attention_mask=mask, max_length=7, eos_token_id=eos, **kw
        )
        assert out.shape[1] <= 7
        same = attnkit.generate(
            model, src, attention_mask=mask, max_new_tokens=6, eos_token_id=eos, **kw
        )
        assert torch.equal(out, same)
        ended = 0
        for row in out.tolist():
            if eos in row[1:]:
                k = row.index(eos, 1)
                assert all(t == cfg.pad_token_id for t in row[k + 1 :])
                ended += 1
        assert ended >= 2


def test_sampling_follows_the_softmax_and_the_seed():
    model = make("marian", vocab=12, seed=2, std=0.15)
    src, mask = batch(model, [5])
    cfg = model.config
    start = torch.tensor([[cfg.decoder_start_token_id]])
    probs = torch.softmax(full_logits(model, src, mask, start)[0].double(), -1)
    n = 2000
    many = src.expand(n, -1)
    for temperature in (1.0, 0.5):
        out = attnkit.generate(
            model, many, max_new_tokens=1, do_sample=True, temperature=temperature, seed=7
        )
        freq = torch.bincount(out[:, 1], minlength=cfg.vocab_size).double() / n
        want = torch.softmax(torch.log(probs) / temperature, -1)
        assert (freq - want).abs().max().item() < 0.04, (freq, want)
    top3 = attnkit.generate(model, many[:500], max_new_tokens=1, do_sample=True, top_k=3, seed=1)
    assert set(top3[:, 1].tolist()) == set(torch.topk(probs, 3).indices.tolist())
    src, mask = batch(model, [5, 3, 4], seed=4)
    a = attnkit.generate(model, src, attention_mask=mask, do_sample=True, seed=3, max_new_tokens=8)
    b = attnkit.generate(model, src, attention_mask=mask, do_sample=True, seed=3, max_new_tokens=8)
    c = attnkit.generate(model, src, attention_mask=mask, do_sample=True, seed=4, max_new_tokens=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = attnkit.generate(model, src, attention_mask=mask, max_new_tokens=8)
    k1 = attnkit.generate(
        model, src, attention_mask=mask, do_sample=True, top_k=1, seed=0, max_new_tokens=8
    )
    assert torch.equal(greedy, k1)
    several = attnkit.generate(
        model, src, attention_mask=mask, do_sample=True, num_return_sequences=4, seed=0
    )
    assert several.shape[0] == 12
    assert len({tuple(r) for r in several[:4].tolist()}) > 1


def test_lists_of_ids_are_padded_and_the_mode_is_restored():
    model = make("t5")
    model.train()
    rows = [[5, 6, 7, 8], [9, 4]]
    src, mask = batch(model, [4, 2])
    src[0, :4] = torch.tensor(rows[0])
    src[1, :2] = torch.tensor(rows[1])
    out = generate_seq2seq(model, rows, 6, num_beams=2)
    assert model.training
    model.eval()
    assert torch.equal(
        out, attnkit.generate(model, src, attention_mask=mask, max_new_tokens=6, num_beams=2)
    )


def test_reorder_for_beams_alternates_two_storages():
    model = make("bart")
    src, mask = batch(model, [4, 3])
    with torch.no_grad():
        cache = model.new_cache(model.encode(src, mask), mask, max_len=8)
        cache.reorder(torch.tensor([0, 0, 1, 1]))
        model.decode_step(torch.tensor([[2], [2], [2], [2]]), cache)
        model.decode_step(torch.tensor([[5], [6], [7], [8]]), cache)
    k = cache.self_attn[0].k
    before = k[:, :, :2].clone()
    cross = cache.cross[0][0]
    cache.reorder(torch.tensor([1, 1, 3, 2]), memory=False)
    other = cache.self_attn[0].k  # the rows went to a second storage of the same shape
    assert other.shape == k.shape and torch.equal(other[:, :, :2], before[[1, 1, 3, 2]])
    cache.reorder(torch.tensor([0, 2, 1, 3]), memory=False)
    assert cache.self_attn[0].k is k  # and back: two storages, no new allocation per step
    assert torch.equal(k[:, :, :2], before[[1, 1, 3, 2]][[0, 2, 1, 3]])
    assert cache.cross[0][0] is cross
    with pytest.raises(ValueError, match="memory=False keeps the batch size 4"):
        cache.reorder(torch.tensor([0, 1]), memory=False)


def test_grouped_memory_equals_a_copy_per_row_and_select_drops_sources():
    model = make("marian").double()
    src, mask = batch(model, [5, 2, 4])
    step1 = torch.tensor([[22]] * 6)
    step2 = torch.tensor([[5], [6], [7], [8], [9], [10]])
    with torch.no_grad():
        memory = model.encode(src, mask)
        grouped = model.new_cache(memory, mask, max_len=8)
        grouped.repeat(2)  # memory held once per source
        copied = model.new_cache(memory, mask, max_len=8)
        copied.reorder(torch.arange(3).repeat_interleave(2))  # memory copied per row
        assert grouped.group == 2 and grouped.cross[0][0].shape[0] == 3
        assert copied.group == 1 and copied.cross[0][0].shape[0] == 6
        assert grouped.batch_size == copied.batch_size == 6
        for ids in (step1, step2):
            a, b = model.decode_step(ids, grouped), model.decode_step(ids, copied)
            assert (a - b).abs().max().item() < 1e-12
        # keep sources 2 and 0, rows (5, 4) and (1, 1): equal to the copied cache's rows
        grouped.select(torch.tensor([2, 0]), torch.tensor([5, 4, 1, 1]))
        copied.reorder(torch.tensor([5, 4, 1, 1]))
        assert grouped.batch_size == 4 and grouped.cross[0][0].shape[0] == 2
        nxt = torch.tensor([[3], [4], [5], [6]])
        a, b = model.decode_step(nxt, grouped), model.decode_step(nxt, copied)
        assert (a - b).abs().max().item() < 1e-12
        # with memory=True a grouped cache falls back to one memory row per decoder row
        grouped.reorder(torch.tensor([3, 0]))
        copied.reorder(torch.tensor([3, 0]))
        assert grouped.group == 1 and grouped.cross[0][0].shape[0] == 2
        nxt = torch.tensor([[7], [8]])
        a, b = model.decode_step(nxt, grouped), model.decode_step(nxt, copied)
        assert (a - b).abs().max().item() < 1e-12
    with pytest.raises(ValueError, match="select keeps 2 sources of 1 rows each; got 3"):
        grouped.select(torch.tensor([0, 1]), torch.tensor([0, 1, 1]))


@pytest.mark.parametrize("early_stopping", [False, True])
def test_beam_batch_with_sources_ending_apart_equals_each_source_alone(early_stopping):
    """Sources that finish at different steps leave the batch; each row is the search of its
    source alone."""
    model = make("bart", seed=0)
    eos = model.config.eos_token_id
    with torch.no_grad():
        model.logits_bias[0, eos] += 0.5  # eos likelier: rows end at different steps
    src, mask = batch(model, [9, 1, 6, 3, 2, 7], seed=4)
    kw = dict(num_beams=3, max_new_tokens=12, early_stopping=early_stopping)
    out = attnkit.generate(model, src, attention_mask=mask, **kw)
    ended = [next((j for j, t in enumerate(r) if j and t == eos), None) for r in out.tolist()]
    assert len(set(ended)) >= 3, ended  # some end early, some late, some not at all
    for i in range(6):
        n = int(mask[i].sum())
        alone = attnkit.generate(
            model, src[i : i + 1, :n], attention_mask=mask[i : i + 1, :n], **kw
        )
        L = alone.shape[1]
        assert out[i, :L].tolist() == alone[0].tolist()
        assert (out[i, L:] == model.config.pad_token_id).all()


BAD = [
    (dict(num_beams=0), ValueError, "num_beams must be an int >= 1, got 0"),
    (dict(num_beams=2.0), TypeError, "num_beams must be an int >= 1"),
    (dict(max_new_tokens=0), ValueError, "max_new_tokens must be an int >= 1, got 0"),
    (dict(max_length=1), ValueError, "max_length must be an int >= 2"),
    (dict(max_new_tokens=500), ValueError, "exceeds the model's max_seq_len"),
    (dict(min_length=-1), ValueError, "min_length must be an int >= 0"),
    (dict(length_penalty=float("nan")), ValueError, "length_penalty must be a float"),
    (dict(length_penalty="1"), TypeError, "length_penalty must be a float"),
    (dict(early_stopping="yes"), ValueError, "early_stopping must be True, False or 'never'"),
    (dict(early_stopping=1), ValueError, "early_stopping must be True, False or 'never'"),
    (dict(no_repeat_ngram_size=-2), ValueError, "no_repeat_ngram_size must be an int >= 0"),
    (dict(num_beams=2, num_return_sequences=3), ValueError, "num_return_sequences=3 exceeds"),
    (dict(num_return_sequences=2), ValueError, "needs do_sample=True"),
    (dict(temperature=0.7), ValueError, "pass do_sample=True"),
    (dict(top_k=5), ValueError, "pass do_sample=True"),
    (dict(do_sample=True, num_beams=2), ValueError, "not supported"),
    (dict(do_sample="yes"), TypeError, "do_sample must be a bool"),
    (dict(do_sample=True, top_p=0.0), ValueError, "top_p must be a float in"),
    (dict(do_sample=True, temperature=-1.0), ValueError, "temperature must be a float"),
    (dict(do_sample=True, seed=-1), ValueError, "seed must be an int >= 0"),
    (dict(eos_token_id=99), ValueError, "eos_token_id must be an int or list of ints in"),
    (dict(pad_token_id=-1), ValueError, "pad_token_id must be a token id in"),
    (dict(decoder_start_token_id=23), ValueError, "decoder_start_token_id must be a token id"),
    (dict(stop="\n"), ValueError, "stop='\\\\n' is an option of decoder-only"),
    (dict(repetition_penalty=1.2), ValueError, "repetition_penalty=1.2 is an option of"),
    (dict(bogus=1), TypeError, "unexpected keyword argument 'bogus'"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD)
def test_bad_options_are_named(kwargs, error, message):
    model = make("bart")
    src, mask = batch(model, [4, 2])
    with pytest.raises(error, match=message):
        attnkit.generate(model, src, attention_mask=mask, **kwargs)


def test_bad_sources_are_named():
    model = make("bart")
    src, mask = batch(model, [4, 2])
    cases = [
        (src.float(), None, TypeError, "integer token ids"),
        (src + 100, None, ValueError, r"token id 1\d\d, expected \[0, 23\)"),
        (src[:, :0], None, ValueError, "B, S >= 1"),
        (src, mask[:, :3], ValueError, "attention_mask must have input_ids' shape"),
        (src, mask * 2, ValueError, "only 0 and 1"),
        (src, mask * torch.tensor([[1], [0]]), ValueError, "source 1 has no real token"),
        (src, mask.tolist(), TypeError, "attention_mask must be a"),
        ("text", None, TypeError, "input_ids must be"),
        ([[1, 2], []], None, TypeError, "input_ids must be"),
    ]
    for ids, m, error, message in cases:
        with pytest.raises(error, match=message):
            attnkit.generate(model, ids, attention_mask=m)
    gpt = build_model(attnkit.get_preset("tiny"))
    with pytest.raises(TypeError, match=r"\['num_beams'\]: options of encoder-decoder models"):
        attnkit.generate(gpt, [1, 2], num_beams=2)
    with pytest.raises(TypeError, match="must be an attnkit EncoderDecoder"):
        generate_seq2seq(gpt, src)


def test_combinations_run():
    """Every mode with n-gram blocking, several eos ids and return sequences, at once."""
    model = make("marian")
    src, mask = batch(model, [5, 2, 4])
    cfg = model.config
    for kw in (
        dict(num_beams=3, num_return_sequences=3, no_repeat_ngram_size=2, early_stopping="never"),
        dict(
            do_sample=True,
            top_p=0.9,
            temperature=0.8,
            seed=1,
            no_repeat_ngram_size=1,
            num_return_sequences=3,
        ),
    ):
        out = attnkit.generate(model, src, attention_mask=mask, max_new_tokens=7, **kw)
        assert out.shape[0] == 9 and (out[:, 0] == cfg.decoder_start_token_id).all()
        n = kw["no_repeat_ngram_size"]
        for row in out.tolist():
            toks = row[: row.index(cfg.eos_token_id) + 1] if cfg.eos_token_id in row[1:] else row
            grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
            assert len(grams) == len(set(grams)), row
