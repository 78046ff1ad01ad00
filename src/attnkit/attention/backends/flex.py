"""The FlexAttention backend: a BlockMask built from block-level bounds (no N x N tensor for
structured masks) and an optional ALiBi or tensor score_mod. The compiled kernel is created once
per process and reused (Inductor's on-disk cache makes later processes fast too).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from torch import Tensor

from attnkit.attention.masks import MaskSpec

_FLEX_LOCK = threading.Lock()
_FLEX_COMPILED: dict[str, Callable[..., Tensor]] = {}


def compiled_flex():
    """The compiled FlexAttention kernel, created once per process and reused.

    Compiled with static shapes: each new (shape, mask kind) costs one Inductor compile, and
    Inductor's on-disk cache (TORCHINDUCTOR_CACHE_DIR) serves it to later processes.  Dynamic
    shapes would save the recompiles, but Inductor's CPU code generation for FlexAttention
    fails to compile (C++ errors) for padding and ALiBi score/mask functions with symbolic
    sizes in torch 2.13, so they are not used on CPU.

    Examples:
        >>> out = compiled_flex()(q, k, v, block_mask=block_mask)
    """
    with _FLEX_LOCK:
        fn = _FLEX_COMPILED.get("fn")
        if fn is None:
            from torch.nn.attention.flex_attention import flex_attention

            fn = torch.compile(flex_attention, dynamic=False)
            _FLEX_COMPILED["fn"] = fn
        return fn


FLEX_BLOCK = 128


def build_block_mask(spec: MaskSpec, batch: int, heads: int, device, block: int = FLEX_BLOCK):
    """A FlexAttention BlockMask from the block-level layout (no N x N evaluation).

    Examples:
        >>> build_block_mask(MaskSpec(4096, 4096, causal=True, window=512), 1, 1, "cpu")
    """
    from torch.nn.attention.flex_attention import BlockMask

    layout = spec.block_layout(batch, heads, block, block).to(device)  # (B', H', nQ, nK)
    partial = layout == 1
    full = layout == 2
    nk = layout.shape[-1]

    def to_indices(sel: Tensor):
        counts = sel.sum(-1, dtype=torch.int32)
        order = torch.argsort((~sel).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return counts, order

    kv_num, kv_idx = to_indices(partial)
    full_num, full_idx = to_indices(full)
    mod = spec.mask_mod()
    if mod is None:
        from torch.nn.attention.flex_attention import noop_mask

        mod = noop_mask
    del nk
    return BlockMask.from_kv_blocks(
        kv_num,
        kv_idx,
        full_num,
        full_idx,
        BLOCK_SIZE=block,
        mask_mod=mod,
        seq_lengths=(spec.q_len, spec.k_len),
    )


def flex_attention_call(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    spec: MaskSpec,
    *,
    alibi_slopes: Tensor | None,
    bias: Tensor | None,
    scale: float,
) -> Tensor:
    """FlexAttention with a structured BlockMask and an optional ALiBi/tensor score_mod.

    Examples:
        >>> out = flex_attention_call(q, k, v, MaskSpec(T, T, causal=True), alibi_slopes=None, bias=None, scale=D**-0.5)  # q (B, Hq, T, D), k, v (B, Hkv, T, D)
    """
    block_mask = build_block_mask(spec, q.shape[0], q.shape[1], q.device)
    score_mod = None
    offset = spec.offset
    if alibi_slopes is not None:
        slopes = alibi_slopes.to(device=q.device, dtype=torch.float32)

        def score_mod(score, b, h, q_idx, kv_idx):
            return score - slopes[h] * (q_idx + offset - kv_idx).abs()

    elif bias is not None:
        b4 = bias.reshape((1,) * (4 - bias.dim()) + tuple(bias.shape))
        sb, sh, sq, sk = (d != 1 for d in b4.shape)

        def score_mod(score, b, h, q_idx, kv_idx):
            z = q_idx * 0
            return (
                score + b4[b if sb else z, h if sh else z, q_idx if sq else z, kv_idx if sk else z]
            )

    gqa = q.shape[1] != k.shape[1]
    out = compiled_flex()(
        q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=gqa
    )
    return out
