"""A language-model head and its cross-entropy in one pass, chunk by chunk over the rows.

``F.cross_entropy(F.linear(h, W), y)`` keeps the (N, V) logits, their log-softmax and, in
backward, a gradient of the same size, each a separate pass over memory; with a tied
vocabulary of 8,000 and a few thousand target tokens that is a third of an encoder-decoder's
training step on a CPU. :func:`linear_cross_entropy` computes the loss and its gradients
with respect to the hidden states, the weight and the bias in the forward pass, a few
hundred rows at a time (each chunk's logits are turned into their own gradient in place,
while they are still in cache), and backward only scales them by the incoming gradient.
The result equals ``F.cross_entropy`` with ``label_smoothing`` to rounding.

>>> h = torch.randn(10, 64, requires_grad=True)   # (M, C) hidden states
>>> W = torch.randn(512, 64, requires_grad=True)  # (V, C) the head (or tied embedding)
>>> rows = torch.tensor([0, 3, 4])                # the rows of h that have a label
>>> loss = linear_cross_entropy(h, W, rows, torch.tensor([5, 9, 1]), label_smoothing=0.1)
>>> loss.backward()
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["linear_cross_entropy"]

_CHUNK_ELEMENTS = 1 << 22  # logits per chunk (16 MiB of fp32): rows = this // vocabulary


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        rows: Tensor,
        target: Tensor,
        scale: float,
        smoothing: float,
        chunk: int,
        needs: tuple[bool, bool, bool],
    ) -> Tensor:
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        need_h, need_w, need_b = needs
        with torch.autocast(hidden.device.type, enabled=False):
            h = hidden.to(dtype)
            w = weight.to(dtype)  # (V, C)
            wt = w.t().contiguous()  # (C, V): the logits as a plain (not transposed) product
            b = None if bias is None else bias.to(dtype).reshape(-1)
            V = w.shape[0]
            N = rows.numel()
            gh = torch.zeros_like(h) if need_h else None
            gw = torch.zeros_like(w) if need_w else None
            gb = torch.zeros(V, dtype=dtype, device=h.device) if need_b else None
            total = torch.zeros((), dtype=torch.float64, device=h.device)
            # one logits buffer for every chunk: a fresh (r, V) block per chunk costs its page
            # faults again (16 MiB: as long as its matrix product)
            rows_max = min(chunk, N)
            zbuf = torch.empty(rows_max, V, dtype=dtype, device=h.device)
            pbuf = (
                torch.empty(rows_max, h.shape[1], dtype=dtype, device=h.device) if need_h else None
            )
            on = (1.0 - smoothing) / N  # the target's share of the gradient, per row
            off = smoothing / V / N  # every class's share
            for lo in range(0, N, chunk):
                idx = rows[lo : lo + chunk]
                y = target[lo : lo + chunk, None]  # (r, 1)
                hc = h.index_select(0, idx)  # (r, C)
                if scale != 1.0:
                    hc = hc * scale
                z = zbuf[: idx.numel()]  # (r, V) the logits
                if b is None:
                    torch.mm(hc, wt, out=z)
                else:
                    torch.addmm(b, hc, wt, out=z)
                picked = z.gather(1, y)[:, 0]
                top = z.amax(1, keepdim=True)
                # loss per row: logsumexp - (1 - s) z_y - s/V sum z
                row_loss = -(1.0 - smoothing) * picked
                if smoothing:
                    row_loss = row_loss - (smoothing / V) * z.sum(1)
                z.sub_(top).exp_()
                denom = z.sum(1, keepdim=True)
                row_loss = row_loss + (top + denom.log())[:, 0]
                total += row_loss.sum(dtype=torch.float64)
                if not (need_h or need_w or need_b):
                    continue
                # the gradient of the mean loss with respect to the logits, in place:
                # (softmax - (1 - s) onehot - s / V) / N
                z.mul_(denom.reciprocal_().mul_(1.0 / N))
                if off:
                    z.sub_(off)
                z.scatter_add_(1, y, z.new_full(y.shape, -on))
                if gb is not None:
                    gb += z.sum(0)
                if gh is not None and pbuf is not None:
                    part = torch.mm(z, w, out=pbuf[: idx.numel()])  # (r, C)
                    if scale != 1.0:
                        part.mul_(scale)
                    gh.index_add_(0, idx, part)
                if gw is not None:
                    gw.addmm_(z.t(), hc)
        ctx.save_for_backward(
            *(torch.empty(0) if g is None else g for g in (gh, gw, gb)),
        )
        ctx.present = (gh is not None, gw is not None, gb is not None)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.bias_shape = None if bias is None else bias.shape
        return (total / max(N, 1)).to(dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        saved = ctx.saved_tensors
        out: list[Tensor | None] = []
        for g, present, dt in zip(saved, ctx.present, ctx.dtypes):
            out.append((g * grad).to(dt) if present else None)
        if out[2] is not None:
            out[2] = out[2].reshape(ctx.bias_shape)
        return (*out, None, None, None, None, None, None)


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    rows: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    scale: float = 1.0,
    label_smoothing: float = 0.0,
    chunk_rows: int | None = None,
) -> Tensor:
    """The mean cross-entropy of ``target`` under the logits ``(scale * hidden[rows]) @
    weight.T + bias``, without keeping the logits: equal to ``F.cross_entropy(logits, target,
    label_smoothing=label_smoothing)`` to rounding, with gradients for ``hidden``, ``weight``
    and ``bias`` (whichever require one), computed in float32 (float64 for float64 inputs).

    Args:
        hidden: (M, C) hidden states.
        weight: (V, C) the output projection (a tied token embedding works as it is).
        rows: (N,) int64 indices of the rows of ``hidden`` that have a target.
        target: (N,) int64 class of each of those rows, in [0, V).
        bias: (V,) or (1, V) added to the logits, or None.
        scale: multiplies the hidden states first (``d_model ** -0.5`` for T5's tied head).
        label_smoothing: in [0, 1), as ``F.cross_entropy``'s.
        chunk_rows: rows per chunk; default about four million logits per chunk.

    Returns:
        A 0-d tensor (float32, or float64 for float64 inputs).

    Raises:
        ValueError: shapes that do not fit together, or ``label_smoothing`` outside [0, 1).

    Examples:
        >>> rows = (labels != -100).reshape(-1).nonzero()[:, 0]
        >>> loss = linear_cross_entropy(h.reshape(-1, C), W, rows, labels.reshape(-1)[rows])
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden must be (M, C) and weight (V, C) with the same C; got "
            f"{tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    if rows.dim() != 1 or target.shape != rows.shape:
        raise ValueError(
            f"rows and target must both be (N,); got {tuple(rows.shape)} and {tuple(target.shape)}"
        )
    if rows.dtype.is_floating_point or target.dtype.is_floating_point:
        raise ValueError(
            f"rows and target must be integer tensors; got {rows.dtype}, {target.dtype}"
        )
    V = weight.shape[0]
    if bias is not None and bias.numel() != V:
        raise ValueError(f"bias must have vocabulary size {V} elements; got {tuple(bias.shape)}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1); got {label_smoothing}")
    chunk = chunk_rows if chunk_rows is not None else max(16, _CHUNK_ELEMENTS // max(V, 1))
    if chunk < 1:
        raise ValueError(f"chunk_rows must be >= 1; got {chunk_rows}")
    grad = torch.is_grad_enabled()
    needs = (
        grad and hidden.requires_grad,
        grad and weight.requires_grad,
        grad and bias is not None and bias.requires_grad,
    )
    loss: Tensor = _LinearCrossEntropy.apply(
        hidden,
        weight,
        bias,
        rows.long(),
        target.long(),
        float(scale),
        float(label_smoothing),
        int(chunk),
        needs,
    )
    return loss
