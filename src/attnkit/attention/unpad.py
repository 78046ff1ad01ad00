"""Running the token-wise parts of a model on the real tokens of a padded batch only.

A padded batch (B, T) of texts of different lengths wastes every linear layer, norm and MLP
on its padding. :class:`TokenIndex` records where the N real tokens sit, so a model can keep
its hidden states packed as (N, C) between attention calls and pad them to (B, T, ...) only
inside attention, which needs the rows apart. On short texts of mixed lengths (a sentence
encoder serving requests) that removes the padding cost and makes each matrix product one
large (N, C) x (C, C') product instead of B small ones. Results equal the padded forward's
on the real tokens (the same operations on the same numbers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["TokenIndex"]


@dataclass(frozen=True)
class TokenIndex:
    """The real tokens of a padded (``batch``, ``length``) batch: ``index`` (N,) their flat
    positions ``b * length + t`` in order, and ``valid_key_mask`` (B, T) bool, True = real.

    Build one with :meth:`from_mask`.

    Examples:
        >>> idx = TokenIndex.from_mask(torch.tensor([[1, 1, 0], [1, 0, 0]]))
        >>> idx.index  # tensor([0, 1, 3])
    """

    index: torch.Tensor
    batch: int
    length: int
    valid_key_mask: torch.Tensor
    # zero-padded buffers reused by unpack outside autograd, by (shape, dtype, device): the
    # padding rows are never written, so they stay zero and need no fill per layer
    _buffers: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_mask(cls, valid_key_mask: torch.Tensor) -> TokenIndex:
        """From a (B, T) mask, nonzero = real token (one host sync to count them).

        Args:
            valid_key_mask: (B, T) mask of any dtype; nonzero marks a real token.

        Raises:
            ValueError: if the mask is not 2-D.

        Examples:
            >>> TokenIndex.from_mask(torch.tensor([[1, 1, 0], [1, 0, 0]])).count  # 3
        """
        if valid_key_mask.dim() != 2:
            raise ValueError(
                f"valid_key_mask must be (B, T), got shape {tuple(valid_key_mask.shape)}"
            )
        mask = valid_key_mask.bool()
        B, T = mask.shape
        index = mask.reshape(-1).nonzero().squeeze(1)  # (N,)
        return cls(index, B, T, mask)

    @property
    def count(self) -> int:
        """N, the number of real tokens.

        Examples:
            >>> TokenIndex.from_mask(torch.tensor([[1, 1, 0], [1, 0, 0]])).count  # 3
        """
        return self.index.numel()

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (N, ...): the rows of the real tokens, in order.

        Args:
            x: a (B, T, ...) tensor, e.g. hidden states (B, T, C).

        Raises:
            ValueError: if x's first two dims are not (batch, length).

        Examples:
            >>> idx.pack(torch.randn(2, 3, 8)).shape  # (3, 8) for the mask above
        """
        if tuple(x.shape[:2]) != (self.batch, self.length):
            raise ValueError(
                f"expected a (B, T, ...) = ({self.batch}, {self.length}, ...) tensor, got "
                f"shape {tuple(x.shape)}"
            )
        return x.reshape(self.batch * self.length, *x.shape[2:]).index_select(0, self.index)

    def unpack(self, x: torch.Tensor, reuse: bool = False) -> torch.Tensor:
        """(N, ...) -> (B, T, ...), zeros at the padding; the inverse of :meth:`pack`.

        Args:
            x: (N, ...) packed rows, N = :attr:`count`.
            reuse: outside autograd, write into a buffer kept for this shape and hand it back;
                the next ``unpack(reuse=True)`` of the same shape overwrites it, so use the
                result before then (one attention call: the layers of a forward run one after
                another).

        Raises:
            ValueError: if x does not have N rows.

        Examples:
            >>> idx.unpack(idx.pack(h)).shape  # h (B, T, C) -> (B, T, C), padding zeroed
        """
        if x.shape[0] != self.count:
            raise ValueError(
                f"expected {self.count} packed rows (N, ...), got shape {tuple(x.shape)}"
            )
        shape = (self.batch * self.length, *x.shape[1:])
        if reuse and not (torch.is_grad_enabled() and x.requires_grad):
            key = (shape, x.dtype, x.device)
            out = self._buffers.get(key)
            if out is None:
                out = self._buffers[key] = x.new_zeros(shape)
        else:
            out = x.new_zeros(shape)
        out.index_copy_(0, self.index, x)
        return out.view(self.batch, self.length, *x.shape[1:])
