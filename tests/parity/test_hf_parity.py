"""attnkit against Hugging Face transformers on tiny random models built here (no download).

HF -> attnkit conversion must reproduce HF's hidden states and logits (max abs diff <= 1e-5 in
float32) with and without padding; attnkit -> HF export must load in transformers and give
the same outputs again.
"""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

import attnkit  # noqa: E402 (after the skip)
from attnkit.checkpoints import CheckpointError  # noqa: E402
from attnkit.checkpoints.hf import convert_from_hf, export_hf  # noqa: E402

TOL = 1e-5
VOCAB = 101


def bert_config(**kw):
    base = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=40,
        type_vocab_size=2,
        initializer_range=0.1,
        hidden_act="gelu",
    )
    base.update(kw)
    return transformers.BertConfig(**base)


def gpt2_config(**kw):
    base = dict(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=40,
        initializer_range=0.1,
        bos_token_id=0,
        eos_token_id=0,
    )
    base.update(kw)
    return transformers.GPT2Config(**base)


def batch(padded: bool):
    ids = torch.randint(1, VOCAB, (3, 13))
    mask = torch.ones(3, 13, dtype=torch.long)
    if padded:
        mask[1, 9:] = 0
        mask[2, 4:] = 0
        ids[mask == 0] = 0
    types = torch.zeros(3, 13, dtype=torch.long)
    types[:, 6:] = 1
    return ids, mask, types


def head_output(out):
    """The logits, or the hidden states of a model without a head."""
    return out.hidden_states if out.logits is None else out.logits


def max_diff_on_real_tokens(ref, got, mask):
    if ref.dim() == 3:
        return (ref - got)[mask.bool()].abs().max().item()
    return (ref - got).abs().max().item()


BERT_CLASSES = ["BertModel", "BertForMaskedLM", "BertForSequenceClassification"]


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("cls_name", BERT_CLASSES)
def test_bert_family_conversion_matches_transformers(cls_name, padded):
    hf = getattr(transformers, cls_name)(bert_config(num_labels=3)).eval()
    ours = convert_from_hf(hf.state_dict(), hf.config.to_dict()).eval()
    ids, mask, types = batch(padded)
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        ref = out.last_hidden_state if cls_name == "BertModel" else out.logits
        got = head_output(ours(ids, attention_mask=mask, token_type_ids=types))
    assert got.shape == ref.shape
    assert ref.abs().max() > 0.1  # a real signal, not near-zero outputs
    assert max_diff_on_real_tokens(ref, got, mask) <= TOL
    if cls_name == "BertModel":
        torch.testing.assert_close(ours.pooler(got), out.pooler_output, atol=TOL, rtol=0)
        return
    # the loss, with HF's label conventions (-100 ignored; class ids)
    if cls_name == "BertForMaskedLM":
        labels = torch.where(torch.rand(ids.shape) < 0.3, ids, torch.full_like(ids, -100))
        labels[0, 1] = ids[0, 1]  # at least one counted position
    else:
        labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels).loss
        loss = ours(ids, attention_mask=mask, token_type_ids=types, labels=labels).loss
    assert abs(loss.item() - want.item()) <= TOL


@pytest.mark.parametrize("padded", [False, True])
def test_gpt2_conversion_matches_transformers(padded):
    hf = transformers.GPT2LMHeadModel(gpt2_config()).eval()
    ours = convert_from_hf(hf.state_dict(), hf.config.to_dict()).eval()
    assert ours.lm_head.proj.weight is ours.embed.tok.weight
    ids, mask, _ = batch(padded)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
    assert ref.abs().max() > 0.1
    assert max_diff_on_real_tokens(ref, got, mask) <= TOL
    labels = ids.masked_fill(mask == 0, -100)  # HF's convention: labels = input ids
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss = ours(ids, attention_mask=mask, labels=labels).loss
    assert abs(loss.item() - want.item()) <= TOL


def test_gpt2_kv_cache_decoding_matches_transformers_full_forward():
    hf = transformers.GPT2LMHeadModel(gpt2_config()).eval()
    ours = convert_from_hf(hf.state_dict(), hf.config.to_dict()).eval()
    ids = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
        cache = ours.new_cache()
        steps = [ours(ids[:, :5], cache=cache).logits] + [
            ours(ids[:, t : t + 1], cache=cache).logits for t in range(5, 12)
        ]
    assert (torch.cat(steps, 1) - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_attnkit_load_reads_hf_directories(tmp_path, fmt):
    hf = transformers.BertForMaskedLM(bert_config()).eval()
    hf.config.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        state.pop("cls.predictions.decoder.weight")  # tied: stored once, as HF does
        state.pop("cls.predictions.decoder.bias", None)
        save_file(state, tmp_path / "model.safetensors")
    else:
        torch.save(state, tmp_path / "pytorch_model.bin")
    model = attnkit.load(tmp_path)
    assert not model.training and model.config.head == "mlm"
    ids, mask, types = batch(True)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = model(ids, attention_mask=mask, token_type_ids=types).logits
    assert max_diff_on_real_tokens(ref, got, mask) <= TOL


@pytest.mark.parametrize(
    "kind", ["BertModel", "BertForMaskedLM", "BertForSequenceClassification", "GPT2LMHeadModel"]
)
def test_export_loads_in_transformers_with_the_same_outputs(tmp_path, kind):
    from attnkit.models import build_model, get_preset

    if kind.startswith("GPT2"):
        cfg = get_preset(
            "tiny", vocab_size=VOCAB, d_model=32, n_heads=4, max_seq_len=40, initializer_range=0.1
        )
    else:
        head = {"BertModel": "none", "BertForMaskedLM": "mlm"}.get(kind, "classification")
        cfg = get_preset(
            "tiny-bert",
            vocab_size=VOCAB,
            d_model=32,
            n_heads=4,
            head=head,
            num_labels=4,
            initializer_range=0.1,
        )
    ours = build_model(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a wrong map cannot pass
        for name, p in ours.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    export_hf(ours, tmp_path)
    hf_cfg = json.loads((tmp_path / "config.json").read_text())
    assert hf_cfg["architectures"] == [kind]
    hf = getattr(transformers, kind).from_pretrained(tmp_path).eval()
    ids, mask, types = batch(True)
    extra = {} if kind.startswith("GPT2") else {"token_type_ids": types}
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask, **extra)
        ref = out.last_hidden_state if kind == "BertModel" else out.logits
        got = head_output(ours(ids, attention_mask=mask, **extra))
    assert max_diff_on_real_tokens(ref, got, mask) <= TOL
    # and back: HF directory -> attnkit gives the same model
    again = attnkit.load(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(
            head_output(again(ids, attention_mask=mask, **extra)), got, atol=0, rtol=0
        )


def test_missing_key_of_a_task_model_is_named_as_in_the_file(tmp_path):
    hf = transformers.BertForMaskedLM(bert_config())
    state = dict(hf.state_dict())
    del state["bert.encoder.layer.0.output.dense.bias"]
    with pytest.raises(
        CheckpointError,
        match=r"missing key\(s\) \['bert\.encoder\.layer\.0\.output\.dense\.bias'\] "
        r"for a BertForMaskedLM",
    ):
        convert_from_hf(state, hf.config.to_dict(), tmp_path / "model.safetensors")


def test_missing_and_unknown_hf_keys_are_named_with_the_file(tmp_path):
    hf = transformers.BertModel(bert_config())
    state = dict(hf.state_dict())
    del state["encoder.layer.1.attention.self.key.bias"]
    state["encoder.layer.0.adapter.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as e:
        convert_from_hf(state, hf.config.to_dict(), tmp_path / "model.safetensors")
    msg = str(e.value)
    assert "model.safetensors" in msg
    assert "missing key(s) ['encoder.layer.1.attention.self.key.bias']" in msg
    assert "unexpected key(s) ['encoder.layer.0.adapter.weight']" in msg


def test_hf_shape_mismatch_and_unsupported_configs_are_named(tmp_path):
    hf = transformers.BertModel(bert_config())
    state = dict(hf.state_dict())
    state["encoder.layer.0.intermediate.dense.weight"] = torch.zeros(40, 32)
    with pytest.raises(
        CheckpointError,
        match=r"w\.safetensors: key 'encoder\.layer\.0\.intermediate\.dense\.weight' "
        r"\(40, 32\) gives 'blocks\.0\.mlp\.up\.weight' shape \(40, 32\);.*implies \(48, 32\)",
    ):
        convert_from_hf(state, hf.config.to_dict(), tmp_path / "w.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"model_type='xlnet' is not supported; expected one of "
        r"\['bart', 'bert', 'gpt2', 'llama', 'marian', 'roformer', 't5'\]",
    ):
        convert_from_hf({}, {"model_type": "xlnet"})
    cfg = hf.config.to_dict()
    cfg["position_embedding_type"] = "relative_key"
    with pytest.raises(
        CheckpointError, match="position_embedding_type='relative_key' is not supported"
    ):
        convert_from_hf(hf.state_dict(), cfg)


def test_export_refuses_layouts_hf_cannot_express(tmp_path):
    from attnkit.models import build_model, get_preset

    with pytest.raises(ValueError, match=r"cannot be exported as HF gpt2.*'positional': 'rope'"):
        export_hf(build_model(get_preset("tiny", positional="rope")), tmp_path)


def test_gpt2_directory_with_bpe_files_loads_with_its_tokenizer(tmp_path):
    hf = transformers.GPT2LMHeadModel(gpt2_config()).eval()
    hf.save_pretrained(tmp_path)
    (tmp_path / "vocab.json").write_text(
        json.dumps({"a": 0, "b": 1, "\u0120": 2, "ab": 3, "\u0120a": 4})
    )
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n\u0120 a\n")
    model = attnkit.load(tmp_path)
    enc = model.meta.tokenizer.encode("ab a")
    assert enc.tokens == ["ab", "\u0120a"]
    ids = torch.tensor([enc.ids])
    with torch.no_grad():
        assert (model(ids).logits - hf(input_ids=ids).logits).abs().max().item() <= TOL

    # a text longer than the positions keeps every token (a GPT's tokenizer does not cut), and
    # a prompt that long is refused with its real length instead of being cut at the wrong end
    long = " ".join(["ab a"] * model.config.max_seq_len)
    n = len(model.meta.tokenizer.encode(long).ids)
    assert n > 2 * model.config.max_seq_len  # 3 tokens a repeat after the first
    with pytest.raises(ValueError, match=rf"prompt \({n} tokens"):
        attnkit.generate(model, long, max_new_tokens=1)
    kept = attnkit.generate(model, long, max_new_tokens=2, context="slide")
    assert kept[:n] == model.meta.tokenizer.encode(long).ids and len(kept) == n + 2


def test_export_refuses_a_classifier_without_pooler(tmp_path):
    from attnkit.models import build_model, get_preset

    model = build_model(get_preset("tiny-bert", head="classification", pooler=False))
    with pytest.raises(
        ValueError, match="without a pooler cannot be exported.*expected config.pooler=True"
    ):
        export_hf(model, tmp_path)


def test_hf_sequence_classifier_directory_predicts_with_its_id2label(tmp_path):
    """An HF BertForSequenceClassification directory (safetensors, config with id2label,
    tokenizer.json) classifies through attnkit with HF's class names and HF's probabilities."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from attnkit.tasks.classification import Classifier, predict

    words = (
        "[PAD] [UNK] [CLS] [SEP] [MASK] my card was charged twice please refund me hello there "
        "how are you i want money back thanks".split()
    )
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.save(str(tmp_path / "tokenizer.json"))
    id2label = {0: "billing", 1: "refund", 2: "greeting"}
    torch.manual_seed(0)
    hf = transformers.BertForSequenceClassification(
        bert_config(
            vocab_size=len(words),
            num_labels=3,
            id2label=id2label,
            label2id={v: k for k, v in id2label.items()},
        )
    ).eval()
    with torch.no_grad():
        hf.classifier.bias.copy_(torch.tensor([0.3, -0.2, 0.1]))
    hf.save_pretrained(tmp_path, safe_serialization=True)

    texts = [
        "my card was charged twice",
        "please refund me i want money back",
        "hello there how are you",
        "thanks",
    ]
    clf = Classifier(str(tmp_path))
    assert clf.labels == ["billing", "refund", "greeting"]
    got = clf.predict_proba(texts)  # (4, 3), rows sum to 1
    for i, text in enumerate(texts):
        ids = torch.tensor([tok.encode(text).ids])
        with torch.no_grad():
            ref = torch.softmax(hf(input_ids=ids).logits.double(), -1)[0]
        assert abs(got[i] - ref.numpy()).max() <= 1e-5
    preds = predict(str(tmp_path), texts)
    assert [p.label for p in preds] == [id2label[int(r.argmax())] for r in got]
    assert set(preds[0].probabilities) == {"billing", "refund", "greeting"}


def test_classifier_labels_travel_through_hf_id2label_both_ways(tmp_path):
    from attnkit.models import build_model, get_preset

    names = ("billing", "refund", "greeting")
    cfg = get_preset("tiny-bert", vocab_size=VOCAB, head="classification", id2label=names)
    export_hf(build_model(cfg), tmp_path)
    hf_cfg = json.loads((tmp_path / "config.json").read_text())
    assert hf_cfg["id2label"] == {"0": "billing", "1": "refund", "2": "greeting"}
    assert hf_cfg["label2id"] == {"billing": 0, "refund": 1, "greeting": 2}
    hf = transformers.BertForSequenceClassification.from_pretrained(tmp_path)
    assert hf.config.id2label == {0: "billing", 1: "refund", 2: "greeting"}
    back = attnkit.load(tmp_path)
    assert back.config.id2label == names and back.config.num_labels == 3
    assert dict(back.config.label2id) == {"billing": 0, "refund": 1, "greeting": 2}
