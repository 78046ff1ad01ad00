"""Block-local attention: the sequence is cut into non-overlapping blocks and each query attends
only to the keys of its own block (causally within the block when ``causal``).

Exact softmax attention within every block, computed by
SDPA (``attnkit.attention.backends.sdpa.fused``) on the (blocks, block, D) view, so time
and memory grow linearly with T.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from attnkit._util.checks import int_at_least
from attnkit.attention.backends.sdpa import fused
from attnkit.attention.variants._common import VariantAttention


class LocalAttention(VariantAttention):
    """Non-overlapping block-local attention; ``block_size`` tokens per block.

    Args:
        block_size: tokens per block (>= 1); the last block may be shorter.

    Raises:
        ValueError: if ``block_size`` is below 1.

    Examples:
        >>> LocalAttention(block_size=64)(q, k, v)  # q, k, v (B, H, T, D) -> (B, H, T, D)
    """

    name = "local"
    exact = True
    description = "non-overlapping block-local softmax attention (exact within each block)"

    def __init__(self, block_size: int = 128):
        super().__init__()
        self.block_size = int_at_least("block_size", block_size, 1)

    def dense_mask(self, T: int, causal: bool = False, device=None) -> Tensor:
        """(T, T) bool: True where query i may attend key j under this pattern.

        Args:
            T: sequence length (>= 1).
            causal: also forbid keys after the query.
            device: where to build the mask (None: the default device).

        Examples:
            >>> LocalAttention(block_size=2).dense_mask(4).int()  # two 2x2 blocks of ones
        """
        T = int_at_least("T", T, 1)
        block = torch.arange(T, device=device) // self.block_size  # (T,)
        mask = block[:, None] == block[None, :]  # (T, T)
        if causal:
            mask &= torch.ones(T, T, dtype=torch.bool, device=device).tril()
        return mask

    def _attend(self, q, k, v, causal, key_valid):
        B, H, T, D = q.shape
        Dv = v.shape[-1]
        bs = min(self.block_size, T)
        nb = math.ceil(T / bs)
        pad = nb * bs - T
        if pad:
            q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))  # (B, H, Tp, *)
        qb = q.reshape(B, H * nb, bs, D)  # (B, H*nb, bs, D)
        kb = k.reshape(B, H * nb, bs, D)  # (B, H*nb, bs, D)
        vb = v.reshape(B, H * nb, bs, Dv)  # (B, H*nb, bs, Dv)
        if key_valid is None and not pad:
            out = fused(qb, kb, vb, is_causal=causal)
            return out.view(B, H, nb * bs, Dv)[:, :, :T]
        valid = torch.ones(B, nb * bs, dtype=torch.bool, device=q.device)  # (B, Tp)
        valid[:, :T] = True if key_valid is None else key_valid
        valid[:, T:] = False
        # A query row that has no key at all gets one dummy key (its block's first), so every
        # backend sees a finite softmax (no NaN in forward or backward); its output is set to
        # zero afterwards. Done on tensors made here, before the heads are expanded, and without
        # asking whether any row is empty (that would be a host sync).
        if causal:
            tril = torch.ones(bs, bs, dtype=torch.bool, device=q.device).tril()
            per_block = valid.view(B, 1, nb, 1, bs) & tril  # (B, 1, nb, bs, bs)
            empty = ~per_block.any(-1, keepdim=True)  # (B, 1, nb, bs, 1)
            per_block[..., :1] |= empty
        else:  # every row of a block sees the same keys: a block is empty or not
            blocks = valid.view(B, nb, bs)  # (B, nb, bs)
            empty = ~blocks.any(-1)  # (B, nb)
            blocks[..., 0] |= empty
            per_block = valid.view(B, 1, nb, 1, bs)
            empty = empty.view(B, 1, nb, 1, 1)
        mask = per_block.expand(B, H, nb, bs, bs).reshape(B, H * nb, bs, bs)
        out = fused(qb, kb, vb, attn_mask=mask)  # (B, H*nb, bs, Dv)
        out = out.view(B, H, nb, bs, Dv).masked_fill(empty, 0.0)  # (B, H, nb, bs, Dv)
        return out.view(B, H, nb * bs, Dv)[:, :, :T]
