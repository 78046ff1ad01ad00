"""The unpadded forward (``Bert.hidden_states(unpad=True)``, ``TokenIndex``): on the real tokens
it equals each sequence run alone with no padding at all (float64), zeros stand at the padding,
gradients flow, and misuse is a clear error."""

from __future__ import annotations

import pytest
import torch

from attnkit.attention.module import MultiHeadAttention
from attnkit.attention.unpad import TokenIndex
from attnkit.models import build_model, get_preset
from attnkit.models.bert import Bert

LENGTHS = [5, 1, 9, 3, 9, 7]


def tiny_bert(**kw) -> Bert:
    cfg = dict(n_layer=2, d_model=32, n_heads=4, vocab_size=97)
    cfg.update(kw)
    return build_model(get_preset("tiny-bert", **cfg)).double().eval()


def padded_batch(lengths: list[int], vocab: int = 97, pad: int = 0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.full((len(lengths), T), pad, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.randint(1, vocab, (n,), generator=g)
        mask[b, :n] = 1
    return ids, mask


@pytest.mark.parametrize(
    "kw",
    [
        {},  # post-norm BERT, learned positions, GELU
        {"positional": "rope", "n_kv_heads": 2, "norm_placement": "pre", "mlp": "swiglu"},
        {"positional": "alibi", "norm": "rmsnorm"},
    ],
    ids=["bert", "rope-gqa-swiglu", "alibi-rmsnorm"],
)
def test_unpadded_forward_equals_each_sequence_alone(kw):
    model = tiny_bert(**kw)
    ids, mask = padded_batch(LENGTHS)
    with torch.no_grad():
        got = model.hidden_states(ids, attention_mask=mask, unpad=True)  # (B, T, C)
        for b, n in enumerate(LENGTHS):
            alone = model.hidden_states(ids[b : b + 1, :n])[0]  # (n, C), no padding, no mask
            torch.testing.assert_close(got[b, :n], alone, rtol=0, atol=1e-12)
            assert torch.count_nonzero(got[b, n:]) == 0
        padded = model.hidden_states(ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], padded[real], rtol=0, atol=1e-12)


def test_unpad_without_padding_or_mask_is_the_plain_forward():
    model = tiny_bert()
    ids, mask = padded_batch([4, 4])
    with torch.no_grad():
        plain = model.hidden_states(ids)
        torch.testing.assert_close(model.hidden_states(ids, unpad=True), plain, rtol=0, atol=0)
        torch.testing.assert_close(
            model.hidden_states(ids, attention_mask=mask, unpad=True), plain, rtol=0, atol=1e-12
        )


def test_unpadded_gradients_equal_the_padded_ones_on_real_tokens():
    ids, mask = padded_batch(LENGTHS)
    real = mask.bool()
    grads = []
    weights = torch.randn(int(real.sum()), 32, generator=torch.Generator().manual_seed(1))
    for unpad in (False, True):
        torch.manual_seed(0)
        model = tiny_bert()
        h = model.hidden_states(ids, attention_mask=mask, unpad=unpad)
        (h[real] * weights.double()).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-7, atol=1e-9)


def test_token_index_packs_and_unpacks_by_hand():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    tokens = TokenIndex.from_mask(mask)
    assert tokens.index.tolist() == [0, 1, 3, 6, 7, 8]
    assert tokens.count == 6 and (tokens.batch, tokens.length) == (3, 3)
    x = torch.arange(18.0).view(3, 3, 2)
    packed = tokens.pack(x)
    assert packed[:, 0].tolist() == [0.0, 2.0, 6.0, 12.0, 14.0, 16.0]
    back = tokens.unpack(packed)
    assert back.shape == (3, 3, 2)
    torch.testing.assert_close(back, x * mask[..., None])


def test_token_index_and_attention_refuse_misuse():
    tokens = TokenIndex.from_mask(torch.tensor([[1, 1, 0], [1, 0, 0]]))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        TokenIndex.from_mask(torch.ones(3))
    with pytest.raises(ValueError, match=r"\(2, 3, \.\.\.\) tensor, got shape \(3, 2, 4\)"):
        tokens.pack(torch.zeros(3, 2, 4))
    with pytest.raises(ValueError, match=r"expected 3 packed rows"):
        tokens.unpack(torch.zeros(4, 8))
    attn = MultiHeadAttention(8, 2).eval()
    with pytest.raises(
        ValueError, match=r"packed real tokens \(N=3, d_model=8\), got shape \(2, 3, 8\)"
    ):
        attn(torch.zeros(2, 3, 8), tokens=tokens)
    from attnkit.attention.kv_cache import KVCache

    with pytest.raises(ValueError, match="cannot be used with a KV cache"):
        attn(torch.zeros(3, 8), tokens=tokens, cache=KVCache())


def test_reused_unpack_buffers_keep_zero_padding_across_layers():
    tokens = TokenIndex.from_mask(torch.tensor([[1, 0], [1, 1]]))
    first = tokens.unpack(torch.ones(3, 4), reuse=True)
    assert first[0, 1].abs().sum() == 0
    second = tokens.unpack(torch.full((3, 4), 2.0), reuse=True)
    assert second.data_ptr() == first.data_ptr()  # the same buffer, overwritten
    torch.testing.assert_close(
        second, torch.tensor([[2.0, 0.0], [2.0, 2.0]])[..., None].expand(2, 2, 4)
    )
    x = torch.ones(3, 4, requires_grad=True)
    fresh = tokens.unpack(x, reuse=True)  # under autograd: a new tensor every time
    assert fresh.data_ptr() != first.data_ptr() and fresh.requires_grad


def test_inference_gelu_matches_the_erf_formula_and_keeps_layout():
    """attnkit.models.layers.gelu (the native-kernel route used outside autograd) against
    x * Phi(x) computed in float64, for 2-D and 3-D inputs; with autograd it is F.gelu."""
    from attnkit.models.layers import gelu

    for shape in [(37, 64), (3, 11, 48)]:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(len(shape)))
        ref = (x.double() * 0.5 * (1 + torch.erf(x.double() / 2**0.5))).float()
        with torch.no_grad():
            got = gelu(x)
        assert got.shape == x.shape and got.is_contiguous()
        torch.testing.assert_close(got, ref, rtol=0, atol=2e-6)
    x = torch.randn(5, 8, requires_grad=True)
    torch.testing.assert_close(gelu(x), torch.nn.functional.gelu(x), rtol=0, atol=0)
