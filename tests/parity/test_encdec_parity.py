"""attnkit's encoder-decoder against Hugging Face transformers: tiny random MarianMTModel,
BartForConditionalGeneration and T5ForConditionalGeneration built here (no download).

A HF directory loaded by ``attnkit.load`` must give HF's logits and loss (max abs diff <= 1e-5
in float32) on a batch with padded sources and ignored labels; decoding step by step with the
caches (self-attention KV cache, cross-attention K/V computed once) must give the same logits;
the export must load in transformers (``from_pretrained``) and give them again.
"""

import re

import pytest
import torch

transformers = pytest.importorskip("transformers")

import attnkit  # noqa: E402 (after the skip)
from attnkit.checkpoints import CheckpointError  # noqa: E402
from attnkit.checkpoints.hf import convert_from_hf, export_hf  # noqa: E402
from attnkit.cli import main  # noqa: E402
from attnkit.models.encdec import EncoderDecoder  # noqa: E402
from attnkit.models.encdec_layers import relative_position_bucket  # noqa: E402

TOL = 1e-5
VOCAB = 61


def marian():
    return transformers.MarianMTModel(
        transformers.MarianConfig(
            vocab_size=VOCAB,
            d_model=32,
            encoder_layers=2,
            decoder_layers=3,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=48,
            decoder_ffn_dim=48,
            max_position_embeddings=40,
            activation_function="swish",
            scale_embedding=True,
            pad_token_id=VOCAB - 1,
            eos_token_id=0,
            decoder_start_token_id=VOCAB - 1,
        )
    )


def bart():
    return transformers.BartForConditionalGeneration(
        transformers.BartConfig(
            vocab_size=VOCAB,
            d_model=32,
            encoder_layers=3,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=48,
            decoder_ffn_dim=48,
            max_position_embeddings=40,
        )
    )


def t5():
    return transformers.T5ForConditionalGeneration(
        transformers.T5Config(
            vocab_size=VOCAB,
            d_model=32,
            d_kv=6,  # heads * d_kv != d_model: T5 sets the head width apart
            d_ff=48,
            num_layers=2,
            num_decoder_layers=3,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=12,  # the log buckets are used at these lengths
            decoder_start_token_id=0,
        )
    )


FAMILIES = {"marian": marian, "bart": bart, "t5": t5}


def random_hf(family: str):
    """The HF model with weights far from its small initialisation (so differences show)."""
    hf = FAMILIES[family]().eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "embed_positions" in name and family == "marian":
                continue  # Marian's sinusoidal table is computed, not learned
            p.normal_(1.0 if "layer_norm" in name else 0.0, 0.3)
        for name, b in hf.named_buffers():
            if name == "final_logits_bias":
                b.normal_(0.0, 0.5)
    return hf


def batch(hf):
    """Sources of lengths 11, 7 and 3 (padded) and labels with ignored tails."""
    pad = hf.config.pad_token_id
    src = torch.randint(2, VOCAB - 1, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    src[mask == 0] = pad
    labels = torch.randint(2, VOCAB - 1, (3, 9))
    labels[1, 6:] = -100
    labels[2, 2:] = -100
    return src, mask, labels


def hf_decoder_inputs(hf, labels):
    return hf.prepare_decoder_input_ids_from_labels(labels=labels)


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    return request.param


def test_load_matches_hf_logits_loss_and_encoder_states(family, tmp_path):
    hf = random_hf(family)
    hf.save_pretrained(tmp_path / "hf")
    ours = attnkit.load(tmp_path / "hf")
    assert isinstance(ours, EncoderDecoder)
    src, mask, labels = batch(hf)
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=mask, labels=labels)
        out = ours(input_ids=src, attention_mask=mask, labels=labels)
    assert out.logits.shape == ref.logits.shape == (3, 9, VOCAB)
    assert (out.logits - ref.logits).abs().max().item() <= TOL
    assert abs(out.loss.item() - ref.loss.item()) <= TOL
    valid = mask.bool()  # padded positions' encoder outputs are not meaningful
    diff = (out.encoder_hidden_states - ref.encoder_last_hidden_state)[valid]
    assert diff.abs().max().item() <= TOL
    # the logits are not trivially small: the comparison means something
    assert ref.logits.abs().max().item() > 0.5


def test_decoding_with_caches_matches_hf_full_forward(family):
    hf = random_hf(family)
    ours = convert_from_hf(hf.state_dict(), hf.config.to_dict()).eval()
    src, mask, labels = batch(hf)
    dec = hf_decoder_inputs(hf, labels)  # (3, 9)
    assert torch.equal(dec, ours.shift_right(labels))
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=mask, decoder_input_ids=dec).logits
        memory = ours.encode(src, mask)
        cache = ours.new_cache(memory, mask)
        first = ours.decode_step(dec[:, :2], cache)  # two tokens, then one at a time
        steps = [first] + [ours.decode_step(dec[:, t : t + 1], cache) for t in range(2, 9)]
    assert cache.length == 9
    got = torch.cat(steps, dim=1)  # (3, 9, V)
    assert (got - ref).abs().max().item() <= TOL


def test_export_loads_in_transformers_with_the_same_outputs(family, tmp_path):
    hf = random_hf(family)
    ours = convert_from_hf(hf.state_dict(), hf.config.to_dict()).eval()
    export_hf(ours, tmp_path / "out")
    back = type(hf).from_pretrained(tmp_path / "out").eval()
    src, mask, labels = batch(hf)
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=mask, labels=labels)
        again = back(input_ids=src, attention_mask=mask, labels=labels)
    assert (again.logits - ref.logits).abs().max().item() <= TOL
    assert abs(again.loss.item() - ref.loss.item()) <= TOL


def test_convert_command_round_trip(tmp_path, capsys):
    hf = random_hf("t5")
    hf.save_pretrained(tmp_path / "hf")
    assert main(["convert", "--from-hf", str(tmp_path / "hf"), str(tmp_path / "ak")]) == 0
    assert main(["convert", "--to-hf", str(tmp_path / "ak"), str(tmp_path / "hf2")]) == 0
    assert "encdec" in capsys.readouterr().out
    native = attnkit.load(tmp_path / "ak")
    back = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf2").eval()
    src, mask, labels = batch(hf)
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=mask, labels=labels).logits
        assert (
            back(input_ids=src, attention_mask=mask, labels=labels).logits - ref
        ).abs().max() <= TOL
        assert (
            native(input_ids=src, attention_mask=mask, labels=labels).logits - ref
        ).abs().max() <= TOL


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize(("buckets", "distance"), [(32, 128), (8, 12), (6, 20)])
def test_relative_buckets_match_hf(bidirectional, buckets, distance):
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-300, 301)[None, :] - torch.zeros(1, 1, dtype=torch.long)  # (1, 601)
    want = T5Attention._relative_position_bucket(
        rel, bidirectional=bidirectional, num_buckets=buckets, max_distance=distance
    )
    got = relative_position_bucket(rel, bidirectional, buckets, distance)
    assert torch.equal(got, want)


def test_unsupported_hf_layouts_are_named():
    hf = random_hf("t5")
    cfg = hf.config.to_dict()
    cfg["feed_forward_proj"] = "gated-gelu"
    with pytest.raises(CheckpointError, match="feed_forward_proj='gated-gelu' is not supported"):
        convert_from_hf(hf.state_dict(), cfg)
    state = dict(hf.state_dict())
    del state["decoder.block.1.layer.1.EncDecAttention.k.weight"]
    state["decoder.block.1.layer.1.EncDecAttention.extra"] = torch.zeros(1)
    with pytest.raises(
        CheckpointError,
        match=r"missing key\(s\) \['decoder\.block\.1\.layer\.1\.EncDecAttention\.k\.weight'\]; "
        r"unexpected key\(s\) \['decoder\.block\.1\.layer\.1\.EncDecAttention\.extra'\]",
    ):
        convert_from_hf(state, hf.config.to_dict())
    bad = random_hf("bart")
    cfg = bad.config.to_dict()
    cfg["decoder_ffn_dim"] = 64
    with pytest.raises(CheckpointError, match="encoder_ffn_dim=48 and decoder_ffn_dim=64"):
        convert_from_hf(bad.state_dict(), cfg)


def test_t5_without_output_scaling_converts(tmp_path):
    """``tie_word_embeddings=False`` (T5 v1.1's configs): no d_model^-0.5 before the head."""
    hf = transformers.T5ForConditionalGeneration(
        transformers.T5Config(
            vocab_size=VOCAB,
            d_model=32,
            d_kv=8,
            d_ff=48,
            num_layers=2,
            num_heads=4,
            decoder_start_token_id=0,
            tie_word_embeddings=False,
        )
    ).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.3)
    ours = convert_from_hf(hf.state_dict(), hf.config.to_dict()).eval()
    assert not ours.config.scale_decoder_output
    src, mask, labels = batch(hf)
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=mask, labels=labels).logits
        got = ours(input_ids=src, attention_mask=mask, labels=labels).logits
    assert ref.abs().max().item() > 1.0
    assert (got - ref).abs().max().item() <= TOL
    with pytest.raises(ValueError, match="scale_decoder_output"):
        export_hf(ours, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "family, copy",
    [
        ("marian", "model.decoder.embed_tokens.weight"),
        ("marian", "model.encoder.embed_tokens.weight"),
        ("bart", "lm_head.weight"),
        ("t5", "decoder.embed_tokens.weight"),
        ("t5", "encoder.embed_tokens.weight"),
    ],
)
def test_a_copy_of_the_token_table_that_differs_is_refused(family, copy):
    """attnkit keeps one token table where HF may store several copies (untied checkpoints
    save each): a copy that differs would convert to a model with other outputs."""
    hf = random_hf(family)
    tensors = {k: v.clone() for k, v in hf.state_dict().items()}
    assert copy in tensors
    convert_from_hf(tensors, hf.config.to_dict())  # equal copies convert
    tensors[copy][3, 1] += 0.25
    with pytest.raises(CheckpointError, match=rf"'{re.escape(copy)}' differs from the table"):
        convert_from_hf(tensors, hf.config.to_dict())
