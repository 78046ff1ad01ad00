"""Attention masks, written once and turned into whatever a backend needs.

A mask answers one question: may query i attend to key j?  `MaskSpec` holds every ingredient
the functional API accepts (causal, sliding window, key padding, packed documents, a user mask)
and renders them as

* a dense boolean tensor broadcastable to (B, H, Tq, Tk) for the math and SDPA backends
  (`dense`),
* a `mask_mod` plus a block-level layout for FlexAttention (`mask_mod`, `block_layout`),
  computed from block-level bounds so that no N x N tensor is ever built for structured masks,
* the static (query-offset, key-offset) band used by the blocked windowed kernel.

Positions: queries are the last Tq of the Tk key positions (offset = Tk - Tq), which is the
KV-cache convention.  Position of query i is `offset + i`; position of key j is `j`.

Sliding window `w`: with causal=True query p sees keys p-w+1 .. p (the w most recent keys,
itself included).  With causal=False it sees p-w+1 .. p+w-1 (the same reach in both
directions).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "MaskSpec",
    "causal_mask",
    "sliding_window_mask",
    "valid_key_mask_from_lengths",
    "document_mask",
    "prefix_lm_mask",
]


@dataclass(frozen=True, eq=False)
class MaskSpec:
    """Every ingredient of an attention mask, validated by `attnkit.attention.functional`.

    Examples:
        >>> MaskSpec(4, 4, causal=True).dense().shape  # (1, 1, Tq, Tk)
    """

    q_len: int
    k_len: int
    causal: bool = False
    window: int | None = None
    valid_key_mask: Tensor | None = None  # (B, Tk) bool, True = real token (attend to it)
    document_ids: Tensor | None = None  # (B, Tk) int
    mask: Tensor | None = None  # bool, broadcastable to (B, H, Tq, Tk)

    @property
    def offset(self) -> int:
        """Position of the first query among the keys: ``k_len - q_len`` (cached keys come first).

        Examples:
            >>> MaskSpec(1, 10, causal=True).offset  # 9: one new query after 9 cached keys
        """
        return self.k_len - self.q_len

    @property
    def is_empty(self) -> bool:
        """True when nothing restricts attention (every query sees every key).

        Examples:
            >>> MaskSpec(4, 4).is_empty
        """
        return (
            not self.causal
            and self.window is None
            and self.valid_key_mask is None
            and self.document_ids is None
            and self.mask is None
        )

    @property
    def structural_only(self) -> bool:
        """Only causal/window restrictions: the same (Tq, Tk) pattern for every batch and head.

        Examples:
            >>> MaskSpec(8, 8, causal=True, window=4).structural_only
        """
        return self.valid_key_mask is None and self.document_ids is None and self.mask is None

    # ------------------------------------------------------------------ dense rendering
    def positional(self, q_idx: Tensor, k_idx: Tensor) -> Tensor | None:
        """Causal/window part of the mask on broadcastable index tensors (None if unrestricted).

        Examples:
            >>> spec.positional(torch.arange(4)[:, None], torch.arange(4)[None, :])  # (Tq, 1), (1, Tk) -> (Tq, Tk)
        """
        rel = q_idx + self.offset - k_idx  # query position minus key position
        allowed = None
        if self.causal:
            allowed = rel >= 0
        if self.window is not None:
            if self.causal:
                win = rel < self.window
            else:
                win = rel.abs() < self.window
            allowed = win if allowed is None else allowed & win
        return allowed

    def dense(self, device: torch.device | str | None = None) -> Tensor | None:
        """Boolean mask broadcastable to (B, H, Tq, Tk), True = may attend; None = no mask.

        Examples:
            >>> MaskSpec(3, 3, causal=True).dense()[0, 0]
        """
        if self.is_empty:
            return None
        device = torch.device(device) if device is not None else self._device()
        q_idx = torch.arange(self.q_len, device=device)[:, None]  # (Tq, 1)
        k_idx = torch.arange(self.k_len, device=device)[None, :]  # (1, Tk)
        allowed = self.positional(q_idx, k_idx)
        if allowed is not None:
            allowed = allowed[None, None]  # (1, 1, Tq, Tk)
        if self.valid_key_mask is not None:
            vkm = self.valid_key_mask.to(device)[:, None, None, :]  # (B, 1, 1, Tk)
            allowed = vkm if allowed is None else allowed & vkm
        if self.document_ids is not None:
            doc = self.document_ids.to(device)
            same = doc[:, self.offset :, None] == doc[:, None, :]  # (B, Tq, Tk)
            same = same[:, None]  # (B, 1, Tq, Tk)
            allowed = same if allowed is None else allowed & same
        if self.mask is not None:
            m = self.mask.to(device)
            allowed = m if allowed is None else allowed & m
        return allowed

    def _device(self) -> torch.device:
        for t in (self.valid_key_mask, self.document_ids, self.mask):
            if t is not None:
                return t.device
        return torch.device("cpu")

    # ------------------------------------------------------------------ FlexAttention
    def mask_mod(self) -> Callable | None:
        """A FlexAttention mask_mod(b, h, q_idx, kv_idx) -> bool, or None if unrestricted.

        Examples:
            >>> block_mask = create_block_mask(spec.mask_mod(), B, H, Tq, Tk)
        """
        if self.is_empty:
            return None
        causal, window, offset = self.causal, self.window, self.offset
        vkm, doc, user = self.valid_key_mask, self.document_ids, self.mask
        if user is not None:
            # index a broadcastable user mask without materialising the broadcast
            ub = user.dim() >= 4 and user.shape[-4] != 1
            uh = user.dim() >= 3 and user.shape[-3] != 1
            uq = user.shape[-2] != 1
            uk = user.shape[-1] != 1
            user4 = user.reshape((1,) * (4 - user.dim()) + tuple(user.shape))

        def mod(b, h, q_idx, kv_idx):
            rel = q_idx + offset - kv_idx
            ok = rel == rel  # all-true of the right shape
            if causal:
                ok = ok & (rel >= 0)
            if window is not None:
                ok = ok & ((rel < window) if causal else (rel.abs() < window))
            if vkm is not None:
                ok = ok & vkm[b, kv_idx]
            if doc is not None:
                ok = ok & (doc[b, q_idx + offset] == doc[b, kv_idx])
            if user is not None:
                zero = q_idx * 0
                ok = (
                    ok
                    & user4[
                        b if ub else zero,
                        h if uh else zero,
                        q_idx if uq else zero,
                        kv_idx if uk else zero,
                    ]
                )
            return ok

        return mod

    def block_layout(self, batch: int, heads: int, q_block: int, k_block: int) -> Tensor:
        """Block classification (B', H', nQ, nK) uint8: 0 = empty, 1 = partial, 2 = full.

        Computed from per-block bounds (positions, padding counts, document id ranges), so
        the cost is O((Tq/q_block) * (Tk/k_block)), never O(Tq * Tk), for structured masks.
        B' and H' are 1 when the layout does not depend on them.

        Examples:
            >>> MaskSpec(256, 256, causal=True).block_layout(1, 1, 128, 128)  # (B, H, 2, 2)
        """
        nq = -(-self.q_len // q_block)
        nk = -(-self.k_len // k_block)
        device = self._device()
        qb = torch.arange(nq, device=device)
        kb = torch.arange(nk, device=device)
        q_lo = (qb * q_block + self.offset)[:, None]  # first query position of each block
        q_hi = (torch.clamp((qb + 1) * q_block, max=self.q_len) - 1 + self.offset)[:, None]
        k_lo = (kb * k_block)[None, :]
        k_hi = torch.clamp((kb + 1) * k_block, max=self.k_len)[None, :] - 1
        # a block is full only if it is not cut by the sequence end (ragged last block)
        q_ragged = ((qb + 1) * q_block > self.q_len)[:, None]
        k_ragged = ((kb + 1) * k_block > self.k_len)[None, :]
        any_ok = torch.ones(nq, nk, dtype=torch.bool, device=device)
        all_ok = ~(q_ragged | k_ragged)
        if self.causal:
            # rel = qpos - kpos must be >= 0
            any_ok &= q_hi - k_lo >= 0
            all_ok &= q_lo - k_hi >= 0
        if self.window is not None:
            w = self.window
            if self.causal:
                any_ok &= q_lo - k_hi < w
                all_ok &= q_hi - k_lo < w
            else:
                any_ok &= (q_lo - k_hi < w) & (k_lo - q_hi < w)
                all_ok &= (q_hi - k_lo < w) & (k_hi - q_lo < w)
        any_ok = any_ok[None, None]  # (1, 1, nQ, nK)
        all_ok = all_ok[None, None]
        if self.valid_key_mask is not None:
            vkm = self.valid_key_mask
            pad = torch.nn.functional.pad(vkm, (0, nk * k_block - self.k_len), value=False)
            blocks = pad.view(vkm.shape[0], nk, k_block)
            valid = torch.ones(nk, k_block, dtype=torch.bool, device=device)
            valid.view(-1)[self.k_len :] = False
            k_any = blocks.any(-1)  # (B, nK)
            k_all = (blocks | ~valid).all(-1)
            any_ok = any_ok & k_any[:, None, None, :]
            all_ok = all_ok & k_all[:, None, None, :]
        if self.document_ids is not None:
            doc = self.document_ids.to(torch.int64)
            bsz = doc.shape[0]
            big = torch.iinfo(torch.int64).max
            kpad = torch.nn.functional.pad(doc, (0, nk * k_block - self.k_len), value=0)
            kview = kpad.view(bsz, nk, k_block)
            kvalid = torch.arange(nk * k_block, device=device).view(nk, k_block) < self.k_len
            k_min = torch.where(kvalid, kview, big).amin(-1)  # (B, nK)
            k_max = torch.where(kvalid, kview, -big).amax(-1)
            qdoc = doc[:, self.offset :]
            qpad = torch.nn.functional.pad(qdoc, (0, nq * q_block - self.q_len), value=0)
            qview = qpad.view(bsz, nq, q_block)
            qvalid = torch.arange(nq * q_block, device=device).view(nq, q_block) < self.q_len
            q_min = torch.where(qvalid, qview, big).amin(-1)  # (B, nQ)
            q_max = torch.where(qvalid, qview, -big).amax(-1)
            overlap = (q_min[:, :, None] <= k_max[:, None, :]) & (
                k_min[:, None, :] <= q_max[:, :, None]
            )
            single = (q_min[:, :, None] == q_max[:, :, None]) & (
                k_min[:, None, :] == k_max[:, None, :]
            )
            same = single & (q_min[:, :, None] == k_min[:, None, :])
            any_ok = any_ok & overlap[:, None]
            all_ok = all_ok & same[:, None]
        if self.mask is not None:
            m = self.mask
            m4 = m.reshape((1,) * (4 - m.dim()) + tuple(m.shape))
            m4 = m4.expand(m4.shape[0], m4.shape[1], self.q_len, self.k_len)
            m4 = torch.nn.functional.pad(
                m4, (0, nk * k_block - self.k_len, 0, nq * q_block - self.q_len)
            )
            blocks = m4.reshape(m4.shape[0], m4.shape[1], nq, q_block, nk, k_block)
            any_ok = any_ok & blocks.any(-1).any(-2)
            all_ok = all_ok & blocks.all(-1).all(-2)
        layout = any_ok.to(torch.uint8) + (any_ok & all_ok).to(torch.uint8)
        return layout


# ---------------------------------------------------------------------- public builders
def causal_mask(q_len: int, k_len: int | None = None, device=None) -> Tensor:
    """(Tq, Tk) bool: query i (at position Tk - Tq + i) sees keys 0..its own position.

    Examples:
        >>> causal_mask(3)
    """
    k_len = q_len if k_len is None else k_len
    dense = MaskSpec(q_len, k_len, causal=True).dense(device)
    assert dense is not None  # a causal spec is never empty
    return dense[0, 0]


def sliding_window_mask(
    q_len: int, window: int, causal: bool = True, k_len: int | None = None, device=None
) -> Tensor:
    """(Tq, Tk) bool sliding-window mask (see the module docstring for the convention).

    Examples:
        >>> sliding_window_mask(6, window=2)
    """
    k_len = q_len if k_len is None else k_len
    dense = MaskSpec(q_len, k_len, causal=causal, window=window).dense(device)
    assert dense is not None  # a windowed spec is never empty
    return dense[0, 0]


def valid_key_mask_from_lengths(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """(B, T) bool valid-key mask from sequence lengths, True = real token (attend to it).

    Examples:
        >>> valid_key_mask_from_lengths(torch.tensor([2, 3]))  # (2, 3)
    """
    lengths = torch.as_tensor(lengths)
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def document_mask(document_ids: Tensor, causal: bool = False) -> Tensor:
    """(B, 1, T, T) bool mask keeping attention inside each packed document.

    Examples:
        >>> document_mask(torch.tensor([[0, 0, 1, 1]]))  # ids (B, T) -> (1, 1, 4, 4)
    """
    t = document_ids.shape[-1]
    dense = MaskSpec(t, t, causal=causal, document_ids=document_ids).dense()
    assert dense is not None  # a document spec is never empty
    return dense


def prefix_lm_mask(prefix_lengths: Tensor, seq_len: int) -> Tensor:
    """(B, 1, T, T) bool prefix-LM mask: the prefix is bidirectional, the rest causal.

    Examples:
        >>> prefix_lm_mask(torch.tensor([2]), seq_len=4)  # lengths (B,) -> (1, 1, 4, 4)
    """
    prefix_lengths = torch.as_tensor(prefix_lengths)
    i = torch.arange(seq_len, device=prefix_lengths.device)
    causal = i[:, None] >= i[None, :]  # (T, T)
    in_prefix = i[None, None, :] < prefix_lengths[:, None, None]  # (B, 1, T) key inside prefix
    return (causal[None] | in_prefix)[:, None]
