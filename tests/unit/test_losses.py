"""linear_cross_entropy (the LM head and its cross-entropy fused, chunk by chunk) against a
float64 reference written here: logits, log-softmax and the label-smoothed loss spelled out,
gradients by autograd through that reference."""

import pytest
import torch

from attnkit.models.losses import linear_cross_entropy


def reference(h, W, b, rows, y, scale, smoothing):
    """mean_i [ (1 - s) * -log p_i[y_i] + s * mean_v(-log p_i[v]) ], p = softmax(z),
    z = scale * h[rows] @ W.T + b, in float64."""
    z = (h.double()[rows] * scale) @ W.double().t()
    if b is not None:
        z = z + b.double().reshape(1, -1)
    logp = z - z.exp().sum(1, keepdim=True).log()  # no max-shift: small values here
    nll = -logp[torch.arange(len(rows)), y]
    return ((1 - smoothing) * nll + smoothing * -logp.mean(1)).mean()


def _case(dtype, M=23, C=12, V=41, N=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(M, C, generator=g, dtype=dtype).requires_grad_()
    W = (torch.randn(V, C, generator=g, dtype=dtype) * 0.5).requires_grad_()
    b = (torch.randn(1, V, generator=g, dtype=dtype) * 0.1).requires_grad_()
    rows = torch.randperm(M, generator=g)[:N]
    y = torch.randint(0, V, (N,), generator=g)
    return h, W, b, rows, y


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("scale", [1.0, 12**-0.5])
@pytest.mark.parametrize("chunk", [1, 5, None])
def test_loss_and_gradients_equal_the_float64_reference(smoothing, scale, chunk):
    h, W, b, rows, y = _case(torch.float64)
    got = linear_cross_entropy(
        h, W, rows, y, bias=b, scale=scale, label_smoothing=smoothing, chunk_rows=chunk
    )
    (got * 3.0).backward()  # backward scales by the incoming gradient
    have = [t.grad.clone() for t in (h, W, b)]
    for t in (h, W, b):
        t.grad = None
    want = reference(h, W, b, rows, y, scale, smoothing)
    (want * 3.0).backward()
    assert abs(got.item() - want.item()) < 1e-12
    for mine, ref, name in zip(have, (h.grad, W.grad, b.grad), "hWb"):
        assert mine.shape == ref.shape, name
        assert (mine - ref).abs().max().item() < 1e-12, name
    # rows without a target get no gradient
    others = torch.ones(h.shape[0], dtype=torch.bool)
    others[rows] = False
    assert have[0][others].abs().max().item() == 0.0


def test_float32_inputs_match_the_float64_reference_and_keep_their_dtype():
    h, W, b, rows, y = _case(torch.float32, M=300, C=32, V=997, N=250, seed=3)
    got = linear_cross_entropy(h, W, rows, y, bias=b, label_smoothing=0.1, chunk_rows=64)
    got.backward()
    assert got.dtype == torch.float32 and h.grad.dtype == torch.float32
    gh, gW, gb = h.grad.clone(), W.grad.clone(), b.grad.clone()
    for t in (h, W, b):
        t.grad = None
    want = reference(h, W, b, rows, y, 1.0, 0.1)
    want.backward()
    assert abs(got.item() - want.item()) < 1e-5
    for mine, ref in ((gh, h.grad), (gW, W.grad), (gb, b.grad)):
        assert (mine.double() - ref).abs().max().item() < 1e-6


def test_repeated_rows_add_up_and_frozen_inputs_get_no_gradient():
    h, W, b, _, _ = _case(torch.float64)
    b.requires_grad_(False)
    rows = torch.tensor([2, 2, 5])
    y = torch.tensor([1, 7, 7])
    got = linear_cross_entropy(h, W, rows, y, bias=b, chunk_rows=2)
    got.backward()
    assert b.grad is None
    gh = h.grad.clone()
    h.grad = None
    reference(h, W, b, rows, y, 1.0, 0.0).backward()
    assert (gh - h.grad).abs().max().item() < 1e-12
    with torch.no_grad():  # no gradient work, the same value
        assert abs(linear_cross_entropy(h, W, rows, y, bias=b).item() - got.item()) < 1e-12


def test_the_tied_embedding_gets_both_gradients():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(11, 6).double()
    ids = torch.tensor([[1, 4, 4, 9]])
    h = emb(ids)[0]  # (4, 6)
    rows = torch.tensor([0, 1, 3])
    y = torch.tensor([4, 0, 2])
    linear_cross_entropy(h, emb.weight, rows, y, label_smoothing=0.2).backward()
    mine = emb.weight.grad.clone()
    emb.weight.grad = None
    reference(emb(ids)[0], emb.weight, None, rows, y, 1.0, 0.2).backward()
    assert (mine - emb.weight.grad).abs().max().item() < 1e-12


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hidden=torch.zeros(3, 4), weight=torch.zeros(5, 6)), "same C"),
        (dict(rows=torch.tensor([0, 1]), target=torch.tensor([0])), r"\(N,\)"),
        (dict(rows=torch.tensor([0.0]), target=torch.tensor([1])), "integer"),
        (dict(bias=torch.zeros(4)), "vocabulary size 5"),
        (dict(label_smoothing=1.0), r"\[0, 1\); got 1.0"),
        (dict(chunk_rows=0), "chunk_rows must be >= 1; got 0"),
    ],
)
def test_bad_input_names_the_value(kwargs, match):
    args = dict(
        hidden=torch.zeros(3, 4),
        weight=torch.zeros(5, 4),
        rows=torch.tensor([0]),
        target=torch.tensor([1]),
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        linear_cross_entropy(
            args.pop("hidden"), args.pop("weight"), args.pop("rows"), args.pop("target"), **args
        )
