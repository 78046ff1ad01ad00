"""attnkit against HF transformers' RoFormer on tiny random models built here (no download).

RoFormer is the HF form of a BERT with rotary positions. HF RoFormerForMaskedLM (and
RoFormerModel) -> attnkit must reproduce HF's logits (<= 1e-5, float32) with a padded batch;
an attnkit RoPE BERT exported to HF must load in ``RoFormerForMaskedLM`` with the same logits,
and read back; the q/k row permutation between the two RoPE layouts is checked on its own.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hf_helpers import max_diff, padded_batch, perturb_norms_and_biases  # noqa: E402

import attnkit  # noqa: E402 (after the skip)
from attnkit.checkpoints import CheckpointError  # noqa: E402
from attnkit.checkpoints.hf import export_hf  # noqa: E402
from attnkit.checkpoints.hf.convert import rotary_rows  # noqa: E402
from attnkit.models import ModelConfig, build_model  # noqa: E402
from attnkit.positional import apply_rotary  # noqa: E402

TOL = 1e-5
VOCAB = 89


def roformer(cls=None, **kw):
    base = dict(
        vocab_size=VOCAB,
        embedding_size=32,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        type_vocab_size=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.2,
    )
    base.update(kw)
    torch.manual_seed(0)
    hf = (cls or transformers.RoFormerForMaskedLM)(transformers.RoFormerConfig(**base)).eval()
    perturb_norms_and_biases(hf, 0.2, ("LayerNorm",))  # so a wrong map cannot pass
    return hf


def test_hf_roformer_mlm_to_attnkit_matches_transformers(tmp_path):
    hf = roformer()
    hf.save_pretrained(tmp_path)
    ours = attnkit.load(tmp_path).eval()
    cfg = ours.config
    assert (cfg.arch, cfg.positional, cfg.head, cfg.norm_placement) == (
        "bert",
        "rope",
        "mlm",
        "post",
    )
    ids, mask = padded_batch(VOCAB)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
    assert ref.abs().max() > 0.5  # not a degenerate comparison
    assert max_diff(ref, got, mask) <= TOL


def test_hf_roformer_backbone_to_attnkit_matches_hidden_states(tmp_path):
    hf = roformer(cls=transformers.RoFormerModel)
    hf.save_pretrained(tmp_path)
    ours = attnkit.load(tmp_path).eval()
    assert ours.config.head == "none"
    ids, mask = padded_batch(VOCAB, 17)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(ids, attention_mask=mask).hidden_states
    assert max_diff(ref, got, mask) <= TOL


def rope_bert(**kw):
    base = dict(
        arch="bert",
        head="mlm",
        vocab_size=VOCAB,
        n_layer=2,
        n_heads=4,
        d_model=32,
        d_ff=48,
        max_seq_len=64,
        positional="rope",
        norm_placement="post",
        norm_eps=1e-12,
        mlp="gelu",
        embed_norm=True,
        final_norm=False,
        type_vocab_size=2,
        initializer_range=0.2,
    )
    base.update(kw)
    torch.manual_seed(3)
    model = build_model(ModelConfig(**base)).eval()
    perturb_norms_and_biases(model, 0.2)
    return model


def test_attnkit_rope_bert_exports_to_roformer_with_the_same_logits(tmp_path):
    ours = rope_bert()
    export_hf(ours, tmp_path / "hf")
    hf = transformers.RoFormerForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    ids, mask = padded_batch(VOCAB)
    with torch.no_grad():
        ref = ours(ids, attention_mask=mask).logits
        got = hf(input_ids=ids, attention_mask=mask).logits
    assert ref.abs().max() > 0.5
    assert max_diff(ref, got, mask) <= TOL
    # HF's own sin/cos table equals the one written
    table = hf.roformer.encoder.embed_positions
    assert torch.allclose(table.weight, table.create_weight(), atol=1e-6)
    back = attnkit.load(tmp_path / "hf").eval()
    with torch.no_grad():
        again = back(ids, attention_mask=mask).logits
    assert max_diff(ref, again, mask) <= TOL


def test_a_rope_bert_that_roformer_cannot_hold_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="rope_base"):
        export_hf(rope_bert(rope_base=500.0), tmp_path / "a")
    assert not (tmp_path / "a").exists()
    hf = roformer(rotary_value=True)
    hf.save_pretrained(tmp_path / "b")
    with pytest.raises(CheckpointError, match="rotary_value"):
        attnkit.load(tmp_path / "b")
    # a RoPE classifier: neither BERT (positions) nor RoFormer (its classifier is not BERT's)
    with pytest.raises(ValueError) as exc:
        export_hf(rope_bert(head="classification", pooler=True), tmp_path / "c")
    msg = str(exc.value)
    assert "config field positional='rope': BERT needs 'learned' (RoFormer holds it)" in msg
    assert "config field head='classification': RoFormer needs one of ['none', 'mlm']" in msg
    assert msg.endswith("the shipped config bert-shakespeare exports (as HF roformer)")
    assert not (tmp_path / "c").exists()


def test_rotary_rows_turn_half_pairs_into_interleaved_ones():
    """A query and key rotated in attnkit's half layout, then permuted, equal the permuted
    query and key rotated in the interleaved layout; the dot products are the same."""
    cfg = ModelConfig(arch="bert", head="mlm", vocab_size=10, n_layer=1, n_heads=2, d_model=16)
    d = cfg.head_dim
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3 * cfg.d_model, cfg.d_model, generator=g, dtype=torch.float64)
    name = "blocks.0.attn.qkv_proj.weight"
    w_hf = rotary_rows(w, cfg, name, to_hf=True)
    assert torch.equal(rotary_rows(w_hf, cfg, name, to_hf=False), w)  # a true inverse
    assert torch.equal(w_hf[2 * cfg.d_model :], w[2 * cfg.d_model :])  # values untouched
    assert torch.equal(w_hf[:d][1], w[:d][d // 2])  # row D/2 of a head -> row 1
    x = torch.randn(5, cfg.d_model, generator=g, dtype=torch.float64)
    pos = torch.arange(5, dtype=torch.float64)[:, None]
    ang = pos * 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (5, D/2)

    def heads(w, layout):
        q = (x @ w[: cfg.d_model].T).view(5, 2, d).transpose(0, 1)  # (H, T, D)
        k = (x @ w[cfg.d_model : 2 * cfg.d_model].T).view(5, 2, d).transpose(0, 1)
        q, k = (
            apply_rotary(q, ang.cos(), ang.sin(), layout),
            apply_rotary(k, ang.cos(), ang.sin(), layout),
        )
        return q @ k.transpose(-1, -2)  # (H, T, T)

    assert torch.allclose(heads(w, "half"), heads(w_hf, "interleaved"), atol=1e-12)
    assert not torch.allclose(heads(w, "half"), heads(w_hf, "half"), atol=1e-3)
    other = torch.randn(4, 4, generator=g)
    assert rotary_rows(other, cfg, "blocks.0.mlp.up.weight", to_hf=True) is other
