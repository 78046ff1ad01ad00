"""The exact kernel's additive score bias and fixed scale against a float64 reference written
here, and the encoder-decoder's biased kernel delegating to it."""

import math

import pytest
import torch

from attnkit.attention.kernel import ExactKernel
from attnkit.models.encdec_layers import BiasedKernel, RelativePositionBias


def reference(q, k, v, bias=None, scale=None, causal=False, valid=None):
    q, k, v = q.double(), k.double(), v.double()
    s = (q @ k.transpose(-1, -2)) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if bias is not None:
        s = s + bias.double()
    Tq, Tk = s.shape[-2:]
    if causal:
        keep = torch.ones(Tq, Tk, dtype=torch.bool).tril(Tk - Tq)
        s = s.masked_fill(~keep, float("-inf"))
    if valid is not None:
        s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    return torch.softmax(s, dim=-1) @ v


@pytest.mark.parametrize("backend", ["auto", "math", "sdpa"])
@pytest.mark.parametrize("scale", [None, 1.0, 0.3])
def test_bias_and_scale_match_the_float64_reference(backend, scale):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 5, 8, generator=g)
    k, v = torch.randn(2, 3, 7, 8, generator=g), torch.randn(2, 3, 7, 8, generator=g)
    bias = torch.randn(1, 3, 5, 7, generator=g)
    valid = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    kernel = ExactKernel(backend, scale)
    for causal in (False, True):
        got = kernel(q, k, v, bias=bias, causal=causal, valid_key_mask=valid)
        want = reference(q, k, v, bias, scale, causal, valid)
        assert (got.double() - want).abs().max().item() < 1e-5
    assert "scale" in repr(kernel) or scale is None


def test_bias_with_alibi_and_a_bad_scale_are_refused():
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match="alibi=True or a bias tensor, not both"):
        ExactKernel()(q, q, q, alibi=True, bias=torch.zeros(1, 2, 3, 3))
    for bad in (0.0, -1.0, "1", True):
        with pytest.raises(ValueError, match="scale must be a float > 0 or None"):
            ExactKernel("auto", bad)


def test_biased_kernel_is_the_exact_kernel_given_the_relative_bias():
    rel = RelativePositionBias(n_heads=2, num_buckets=8, max_distance=10, bidirectional=False)
    with torch.no_grad():
        rel.weight.normal_()
    kernel = BiasedKernel("auto", rel, scale=1.0)
    assert kernel.backend == "auto" and kernel.scale == 1.0
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 2, 1, 4, generator=g)  # one decoding step: the last of 6 positions
    k, v = torch.randn(2, 2, 6, 4, generator=g), torch.randn(2, 2, 6, 4, generator=g)
    got = kernel(q, k, v, causal=True)
    want = reference(q, k, v, rel(1, 6), 1.0, causal=True)
    assert (got.double() - want).abs().max().item() < 1e-5
    assert list(kernel.state_dict()) == []  # the table is the stack's, saved there once
