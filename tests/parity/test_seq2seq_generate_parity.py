"""attnkit's encoder-decoder decoding against Hugging Face ``generate`` on the same weights:
tiny random MarianMTModel, BartForConditionalGeneration and T5ForConditionalGeneration built
here (no download), converted with ``attnkit.load``.

Random transformers repeat one token forever and never emit eos, which would let a wrong
search pass. So the bodies are random and the LM head (untied) is fitted by least squares to
copy the source, then stop: the outputs depend on the source and rows end at different steps
(asserted). HF gets every setting explicitly (no forced bos/eos, no bad words, no defaults of
its generation config). HF's beam search pads finished rows with ``pad_token_id or eos``; the
comparison pads every row after its eos with ``pad_token_id``, as attnkit does.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

import attnkit  # noqa: E402 (after the skip)

VOCAB = 61
S = 10  # longest source
COMMON = dict(
    vocab_size=VOCAB,
    d_model=32,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=48,
    decoder_ffn_dim=48,
    max_position_embeddings=40,
    tie_word_embeddings=False,
)


def marian():
    cfg = transformers.MarianConfig(
        **COMMON,
        encoder_layers=2,
        decoder_layers=3,
        activation_function="swish",
        scale_embedding=True,
        pad_token_id=VOCAB - 1,
        eos_token_id=0,
        decoder_start_token_id=VOCAB - 1,
    )
    return transformers.MarianMTModel(cfg)


def bart():
    return transformers.BartForConditionalGeneration(
        transformers.BartConfig(**COMMON, encoder_layers=3, decoder_layers=2)
    )


def t5():
    # equal depths: transformers 5.x's T5 generate sizes its cache by num_layers
    cfg = transformers.T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=12,
        decoder_start_token_id=0,
        tie_word_embeddings=False,
    )
    return transformers.T5ForConditionalGeneration(cfg)


FAMILIES = {"marian": marian, "bart": bart, "t5": t5}
STD = {"marian": 0.1, "bart": 0.3, "t5": 0.3}  # of the random body: larger is degenerate


def sources(cfg, n, seed, min_len=2):
    """n sources of random lengths in [min_len, S], right-padded, with their mask."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, S + 1, (n,), generator=g)
    src = torch.randint(3, VOCAB - 2, (n, S), generator=g)
    mask = (torch.arange(S)[None] < lengths[:, None]).long()
    src[mask == 0] = cfg.pad_token_id
    return src, mask, lengths


def fitted(family):
    """The HF model: random body, LM head fitted to copy the source then emit eos."""
    torch.manual_seed(0)
    hf = FAMILIES[family]().eval()
    cfg = hf.config
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "embed_positions" in name and family == "marian":
                continue  # Marian's sinusoidal table is computed
            p.normal_(1.0 if "layer_norm" in name else 0.0, STD[family])
        shared = getattr(hf, "model", hf).shared.weight  # one token table for both stacks
        for stack in (hf.get_encoder(), hf.get_decoder()):
            if stack.embed_tokens.weight is not shared:
                stack.embed_tokens.weight.copy_(shared)
        src, mask, lengths = sources(cfg, 256, seed=1)
        labels = torch.full((256, S + 1), -100)
        for i, n in enumerate(lengths.tolist()):
            labels[i, :n] = src[i, :n]
            labels[i, n] = cfg.eos_token_id
        out = hf(input_ids=src, attention_mask=mask, labels=labels, output_hidden_states=True)
        h = out.decoder_hidden_states[-1][labels != -100].double()  # (N, C)
        y = labels[labels != -100]
        X = torch.cat([h, torch.ones(len(h), 1, dtype=torch.float64)], dim=1)
        Y = torch.full((len(h), VOCAB), -10.0 / VOCAB, dtype=torch.float64)
        Y[torch.arange(len(h)), y] += 10.0
        W = torch.linalg.solve(X.T @ X + 1e-2 * torch.eye(X.shape[1], dtype=torch.float64), X.T @ Y)
        hf.lm_head.weight.copy_(W[:-1].T.float())
        if family != "t5":
            hf.final_logits_bias.copy_(W[-1:].float())
    return hf


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request, tmp_path_factory):
    hf = fitted(request.param)
    path = tmp_path_factory.mktemp(request.param) / "hf"
    hf.save_pretrained(path)
    return hf, attnkit.load(path)


def hf_generate(hf, src, mask, **kw):
    cfg = hf.config
    eos = kw.pop("eos_token_id", cfg.eos_token_id)
    with torch.no_grad():
        out = hf.generate(
            input_ids=src,
            attention_mask=mask,
            do_sample=False,
            pad_token_id=cfg.pad_token_id,
            eos_token_id=eos,
            decoder_start_token_id=cfg.decoder_start_token_id,
            forced_bos_token_id=None,
            forced_eos_token_id=None,
            bad_words_ids=None,
            repetition_penalty=1.0,
            min_length=kw.pop("min_length", 0),
            no_repeat_ngram_size=kw.pop("no_repeat_ngram_size", 0),
            **kw,
        )
    # pad after each row's first eos with pad_token_id (HF's beam search pads with eos for T5)
    is_eos = torch.isin(out, torch.tensor(eos)) & (torch.arange(out.shape[1]) > 0)
    after = (torch.cumsum(is_eos, dim=1) - is_eos.long()) > 0
    return out.masked_fill(after, cfg.pad_token_id)


def ends(out, eos):
    """Each row's generated length (to its eos, or all of it)."""
    lengths = []
    for row in out.tolist():
        hits = [i for i, t in enumerate(row) if i > 0 and t == eos]
        lengths.append(hits[0] if hits else len(row) - 1)
    return lengths


CASES = [
    ("greedy", dict(num_beams=1, max_new_tokens=14)),
    ("greedy ngram", dict(num_beams=1, max_new_tokens=14, no_repeat_ngram_size=2)),
    ("beam", dict(num_beams=4, max_new_tokens=14, early_stopping=False, length_penalty=1.0)),
    ("beam early", dict(num_beams=4, max_new_tokens=14, early_stopping=True, length_penalty=1.0)),
    (
        "beam never lp2",
        dict(num_beams=3, max_new_tokens=12, early_stopping="never", length_penalty=2.0),
    ),
    (
        "beam lp-0.5 ngram3 two",
        dict(
            num_beams=4,
            max_new_tokens=12,
            early_stopping=False,
            length_penalty=-0.5,
            no_repeat_ngram_size=3,
            num_return_sequences=2,
        ),
    ),
    (
        "beam short min",
        dict(num_beams=2, max_new_tokens=6, early_stopping=True, min_length=4, length_penalty=0.0),
    ),
]


@pytest.mark.parametrize("seed", [0, 1])
def test_greedy_and_beam_match_hf_token_for_token(pair, seed):
    hf, ours = pair
    cfg = hf.config
    src, mask, _ = sources(cfg, 5, seed=10 + seed)
    lengths = set()
    for name, kw in CASES:
        want = hf_generate(hf, src, mask, **dict(kw))
        got = attnkit.generate(ours, src, attention_mask=mask, **kw)
        assert got.dtype == torch.long and got.shape == want.shape, (name, got.shape, want.shape)
        assert torch.equal(got, want), f"{name}:\n{got}\n{want}"
        assert (got[:, 0] == cfg.decoder_start_token_id).all()
        if "min" not in name:
            lengths.update(ends(got, cfg.eos_token_id))
    # the outputs are not degenerate: rows end at several different steps
    assert len(lengths) >= 3, lengths


def test_several_eos_ids_match_hf(pair):
    """Rows end at any of the eos ids (the second one a token the model emits early)."""
    hf, ours = pair
    cfg = hf.config
    src, mask, _ = sources(cfg, 6, seed=20)
    free = hf_generate(hf, src, mask, num_beams=1, max_new_tokens=8, eos_token_id=[])
    counts = torch.bincount(free[:, 1:4].flatten(), minlength=VOCAB)
    counts[[cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id]] = 0
    eos = [cfg.eos_token_id, int(counts.argmax())]
    for kw in (dict(num_beams=1), dict(num_beams=3, early_stopping=True)):
        want = hf_generate(hf, src, mask, max_new_tokens=10, eos_token_id=eos, **kw)
        got = attnkit.generate(
            ours, src, attention_mask=mask, max_new_tokens=10, eos_token_id=eos, **kw
        )
        assert torch.equal(got, want), f"{kw}:\n{got}\n{want}"
        assert torch.isin(got[:, 1:], torch.tensor(eos[1:])).any()
