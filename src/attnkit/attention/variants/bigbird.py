"""BigBird block-sparse attention (Zaheer et al. 2020).

The sequence is cut into blocks of ``block_size`` tokens. Block i of queries attends to key
block j when any of these holds:

* global: i < num_global_blocks or j < num_global_blocks (the first blocks see everything and
  are seen by everything);
* window: |i - j| <= window_radius;
* random: j is one of ``num_random_blocks`` blocks drawn for row i from the blocks no other rule
  gives it (with ``causal``, only from blocks before i), by a generator seeded with ``seed``.

With ``causal`` a token also never attends to a later token. Within this pattern the attention
is exact: it equals softmax attention with :meth:`BigBirdAttention.dense_mask` as the mask.

Each non-global query block gathers its key blocks and attends to them (memory
O(T * blocks per row * block_size), recomputed block by block in the backward pass); the
global query blocks attend to all keys. With ``flex_min_len`` set, inputs at least that long
that need no gradient run through ``torch.nn.attention.flex_attention`` instead, with a
BlockMask built directly from the block layout; the compiled kernel is made once per process
(the first call of a new shape compiles, which takes tens of seconds on a CPU).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attnkit._util.checks import int_at_least, non_negative_int, optional_positive_int
from attnkit.attention.backends.flex import compiled_flex
from attnkit.attention.backends.sdpa import fused
from attnkit.attention.variants._common import VariantAttention, default_scale
from attnkit.attention.variants._gathered import GatherSpec, gathered_attention_parts


class BigBirdAttention(VariantAttention):
    """Block-sparse attention: global + sliding-window + random blocks (see the module
    docstring for the pattern).

    Args:
        block_size: tokens per block (>= 1).
        num_global_blocks: the first blocks, which attend to and are attended by every block.
        window_radius: query block i attends key blocks i - radius .. i + radius.
        num_random_blocks: extra key blocks drawn for each non-global query block.
        seed: seeds the draw of the random blocks.
        flex_min_len: inputs at least this long that need no gradient run through
            FlexAttention; None: never.

    Raises:
        ValueError: for a block_size below 1, a negative count or seed, or a flex_min_len
            below 1.

    Examples:
        >>> BigBirdAttention(block_size=64)(q, k, v)  # q, k, v (B, H, T, D) -> (B, H, T, D)
    """

    name = "bigbird"
    exact = True
    description = "BigBird block-sparse attention: global, sliding-window and random blocks (exact on its pattern)"

    def __init__(
        self,
        block_size: int = 64,
        num_global_blocks: int = 1,
        window_radius: int = 1,
        num_random_blocks: int = 2,
        seed: int = 0,
        flex_min_len: int | None = None,
    ):
        super().__init__()
        self.flex_min_len = optional_positive_int("flex_min_len", flex_min_len)
        self.block_size = int_at_least("block_size", block_size, 1)
        self.num_global_blocks = non_negative_int("num_global_blocks", num_global_blocks)
        self.window_radius = non_negative_int("window_radius", window_radius)
        self.num_random_blocks = non_negative_int("num_random_blocks", num_random_blocks)
        self.seed = non_negative_int("seed", seed)
        self._layouts: dict[tuple[int, bool], Tensor] = {}
        self._key_blocks: dict[tuple[int, bool], Tensor] = {}

    # ---- the pattern -------------------------------------------------------------------------

    def num_blocks(self, T: int) -> int:
        """The number of blocks of a length-T sequence, ceil(T / block_size).

        Args:
            T: sequence length (>= 1).

        Examples:
            >>> BigBirdAttention(block_size=4).num_blocks(10)  # 3
        """
        return math.ceil(int_at_least("T", T, 1) / self.block_size)

    def pattern(self, T: int, causal: bool = False) -> Tensor:
        """Block layout for a length-T sequence: (nb, nb) bool, True where query block i
        attends key block j; nb = ceil(T / block_size). Cached per (nb, causal).

        Args:
            T: sequence length (>= 1).
            causal: drop the key blocks after each query block (and draw the random blocks
                from the earlier ones only).

        Examples:
            >>> BigBirdAttention(block_size=4).pattern(16).shape  # (4, 4)
        """
        nb = self.num_blocks(T)
        key = (nb, bool(causal))
        if key not in self._layouts:
            self._layouts[key] = self._make_layout(nb, bool(causal))
        return self._layouts[key]

    def _make_layout(self, nb: int, causal: bool) -> Tensor:
        g, w, r = min(self.num_global_blocks, nb), self.window_radius, self.num_random_blocks
        i = torch.arange(nb)
        layout = (i[:, None] - i[None, :]).abs() <= w  # (nb, nb) window
        layout[:g, :] = True
        layout[:, :g] = True
        if causal:
            layout &= i[:, None] >= i[None, :]
        if r:
            gen = torch.Generator().manual_seed(self.seed)
            for row in range(g, nb):
                candidates = (~layout[row]).nonzero().flatten()
                candidates = candidates[candidates >= g]
                if causal:
                    candidates = candidates[candidates < row]
                if len(candidates):
                    pick = torch.randperm(len(candidates), generator=gen)[:r]
                    layout[row, candidates[pick]] = True
        return layout

    def dense_mask(self, T: int, causal: bool = False, device=None) -> Tensor:
        """(T, T) bool token mask of this pattern: True where query i may attend key j.

        Attention with this mask is what the module computes.

        Args:
            T: sequence length (>= 1).
            causal: also forbid keys after the query.
            device: where to build the mask (None: the default device).

        Examples:
            >>> BigBirdAttention(block_size=4).dense_mask(16).shape  # (16, 16)
        """
        layout = self.pattern(T, causal).to(device)
        block = torch.arange(T, device=layout.device) // self.block_size  # (T,)
        mask = layout[block][:, block]  # (T, T)
        if causal:
            mask &= torch.ones(T, T, dtype=torch.bool, device=layout.device).tril()
        return mask

    def key_blocks(self, T: int, causal: bool = False) -> Tensor:
        """(nb - g, K) int64: the key blocks of each non-global query block in increasing
        order, -1 padded; g = the global blocks, K = the most key blocks of any such row.

        Args:
            T: sequence length (>= 1).
            causal: the causal pattern's key blocks.

        Examples:
            >>> BigBirdAttention(block_size=4, num_random_blocks=0).key_blocks(16)[0]
            tensor([ 0,  1,  2, -1])
        """
        nb = self.num_blocks(T)
        key = (nb, bool(causal))
        if key not in self._key_blocks:
            layout = self.pattern(T, causal)
            rows = layout[min(self.num_global_blocks, nb) :]  # (nb - g, nb)
            width = int(rows.sum(-1).max()) if len(rows) else 0
            # stable sort puts the allowed blocks first, in increasing order
            order = torch.sort((~rows).to(torch.int8), dim=-1, stable=True).indices[:, :width]
            taken = torch.gather(rows, 1, order)
            self._key_blocks[key] = torch.where(taken, order, torch.full_like(order, -1))
        return self._key_blocks[key]

    # ---- forward -----------------------------------------------------------------------------

    def uses_flex(self, q: Tensor, k: Tensor, v: Tensor) -> bool:
        """Whether a call with these inputs takes the FlexAttention path: ``flex_min_len`` is
        set, T >= it and no input needs a gradient.

        Args:
            q: queries, (B, H, T, D).
            k: keys, (B, H, T, D).
            v: values, (B, H, T, Dv).

        Examples:
            >>> BigBirdAttention().uses_flex(q, k, v)  # False: flex_min_len is None
        """
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        return self.flex_min_len is not None and q.shape[2] >= self.flex_min_len and not needs_grad

    def block_mask(self, T: int, causal: bool, key_valid: Tensor | None, device=None):
        """FlexAttention BlockMask of this pattern, built from the block indices.

        Args:
            T: sequence length (>= 1).
            causal: the causal pattern, and no key after its query.
            key_valid: bool (B, T), True = real token; or None.
            device: where to build the block indices (None: the default device).

        Examples:
            >>> mask = BigBirdAttention(block_size=64).block_mask(1024, True, None)
        """
        from torch.nn.attention.flex_attention import BlockMask

        layout = self.pattern(T, causal).to(device)  # (nb, nb)
        counts = layout.sum(-1, dtype=torch.int32)[None, None]  # (1, 1, nb)
        order = torch.sort((~layout).to(torch.int8), dim=-1, stable=True).indices.to(torch.int32)[
            None, None
        ]
        # (every block goes in as a partial block with a mask function: listing blocks as
        # "full" hits an Inductor C++ code generation error on CPU in torch 2.13)

        def mask_mod(b, h, q_idx, kv_idx):
            ok = kv_idx <= q_idx if causal else kv_idx >= 0
            if key_valid is not None:
                ok = ok & key_valid[b, kv_idx]
            return ok

        return BlockMask.from_kv_blocks(
            counts, order, BLOCK_SIZE=self.block_size, mask_mod=mask_mod, seq_lengths=(T, T)
        )

    def _attend_flex(self, q, k, v, causal, key_valid):
        mask = self.block_mask(q.shape[2], causal, key_valid, q.device)
        return compiled_flex()(q, k, v, block_mask=mask, scale=default_scale(q.shape[-1]))

    def _attend(self, q, k, v, causal, key_valid):
        if self.uses_flex(q, k, v):
            return self._attend_flex(q, k, v, causal, key_valid)
        B, H, T, D = q.shape
        Dv = v.shape[-1]
        N, bs, dev = B * H, self.block_size, q.device
        nb = self.num_blocks(T)
        g = min(self.num_global_blocks, nb)
        spec = GatherSpec(scale=default_scale(D), causal=causal)
        qf = q.reshape(N, T, D)  # (N, T, D)
        kf = k.reshape(N, T, D)  # (N, T, D)
        vf = v.reshape(N, T, Dv)  # (N, T, Dv)
        kv = (
            None if key_valid is None else key_valid[:, None, :].expand(B, H, T).reshape(N, T)
        )  # (N, T)
        offs = torch.arange(bs, device=dev)  # (bs,)

        def clip(pos: Tensor) -> Tensor:
            return torch.where(pos < T, pos, torch.full_like(pos, -1))

        layouts = []  # (qpos, kpos) of each gathered part
        dense_global = None
        if g and not causal and key_valid is None:
            # the global queries see every key: plain dense attention of g*bs queries, which
            # SDPA's flash kernel runs over blocks of keys in O(T) memory (a gathered group
            # would hold g*bs x T scores at once)
            ng = min(T, g * bs)
            dense_global = fused(q[:, :, :ng], k, v, scale=spec.scale)  # (B, H, ng, Dv)
            dense_global = dense_global.reshape(N, ng, Dv)
        elif g:  # global query blocks attend to every key (every earlier key when causal)
            # causal: the global queries (the first g*bs tokens) see no key after them
            nk = min(T, g * bs) if causal else T
            qpos = clip(torch.arange(g * bs, device=dev)).view(1, 1, g * bs)  # (1, 1, g*bs)
            kpos = torch.arange(nk, device=dev).view(1, 1, nk)  # (1, 1, nk)
            layouts.append((qpos, kpos))
        if nb > g:
            kb = self.key_blocks(T, causal).to(dev)  # (G, K)
            qpos = clip(torch.arange(g, nb, device=dev)[:, None] * bs + offs)  # (G, bs)
            kpos = kb[:, :, None] * bs + offs  # (G, K, bs)
            kpos = torch.where(kb[:, :, None] >= 0, clip(kpos), torch.full_like(kpos, -1))
            layouts.append((qpos[None], kpos.flatten(1)[None]))
        # one autograd node for the gathered parts: their gradients share one set of accumulators
        results = gathered_attention_parts(qf, kf, vf, layouts, kv, spec) if layouts else []
        parts = [o.reshape(N, -1, Dv) for o, _ in results]  # (N, G * Cq, Dv) each
        if dense_global is not None:
            parts.insert(0, dense_global)
        out = torch.cat(parts, dim=1)[:, :T]  # (N, T, Dv)
        return out.reshape(B, H, T, Dv)
