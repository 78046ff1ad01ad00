"""The decoding cache of an encoder-decoder, made by
:meth:`attnkit.models.encdec.EncoderDecoder.new_cache`: the decoder's self-attention KV caches,
the cross-attention keys and values of the memory, and the row operations beam search needs
(repeat each source's rows without copying its memory, reorder beams, drop finished sources).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from attnkit.attention.kv_cache import KVCache

__all__ = ["DecoderCache"]


@dataclass
class DecoderCache:
    """What decoding keeps between steps: one self-attention :class:`KVCache` per decoder
    block, the cross-attention keys and values of the memory per block ((Bs, H, S, D) each,
    computed once per source) and the source's valid-token mask (Bs, S) (None: no padding).

    ``group``: decoder rows per source row. Beam search runs K rows per source
    (:meth:`repeat`); the rows ``b * K .. b * K + K - 1`` all read source row ``b``, whose keys
    and values are held once, not K times (cross-attention takes the K rows as K queries of
    one source).

    Examples:
        >>> cache = model.new_cache(model.encode(src), max_len=64)  # src (2, S)
        >>> cache.length, cache.batch_size
        (0, 2)
    """

    self_attn: list[KVCache]
    cross: list[tuple[Tensor, Tensor]]
    source_valid_mask: Tensor | None
    group: int = 1
    # a second storage per self-attention cache: a reorder writes the chosen rows there and
    # the two swap, so no copy goes back (beam search reorders at every step)
    _spare: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict, repr=False)

    @property
    def length(self) -> int:
        """Decoder tokens cached so far.

        Examples:
            >>> cache.length  # 1 after one decode_step of one token
        """
        return self.self_attn[0].length

    @property
    def batch_size(self) -> int:
        """Decoder rows (sources times ``group``).

        Examples:
            >>> cache.repeat(4); cache.batch_size  # 2 sources, 4 beams each
            8
        """
        return self.cross[0][0].shape[0] * self.group

    def repeat(self, n: int) -> None:
        """Make n consecutive decoder rows of each row (``index = arange(B).repeat_interleave(n)``
        for the self-attention caches); the memory is not copied: ``group`` grows n times.

        Examples:
            >>> cache.repeat(4)  # (B, ...) rows -> (B * 4, ...), cache.group == 4
        """
        if n == 1:
            return
        index = torch.arange(self.batch_size, device=self.cross[0][0].device)
        self._reorder_self(index.repeat_interleave(n))
        self.group *= n

    def reorder(self, index: Tensor, memory: bool = True) -> None:
        """Keep the rows ``index`` (B',) of every cache, in that order: beam search keeps its
        surviving beams so, and ``index = arange(B).repeat_interleave(n)`` makes n rows of each.
        With as many rows as before the chosen rows of each self-attention cache are written
        into its second storage and the two swap (no allocation, no copy back), else the
        caches are replaced by new ones holding the chosen rows. ``memory=False`` leaves the
        cross-attention keys and values and the source mask as they are (beam search reorders
        beams within each source, whose rows of them are equal). With ``memory`` and a
        ``group`` above 1 the memory is first copied to one row per decoder row.

        Raises:
            ValueError: ``memory=False`` with a number of rows other than ``batch_size``.

        Examples:
            >>> cache.reorder(torch.tensor([1, 1, 0, 3]), memory=False)  # group 4, 4 rows
        """
        same = index.shape[0] == self.batch_size
        if not memory and not same:
            raise ValueError(
                f"memory=False keeps the batch size {self.batch_size}; got {index.shape[0]} rows"
            )
        self._reorder_self(index)
        if not memory:
            return
        rows = index
        if self.group > 1:  # decoder row r reads source row r // group
            rows = torch.div(index, self.group, rounding_mode="floor")
            self.group = 1
        self._select_memory(rows)

    def select(self, sources: Tensor, index: Tensor) -> None:
        """Keep the source rows ``sources`` (Bs',) of the memory and the decoder rows ``index``
        (Bs' * group,), rows ``j * group .. j * group + group - 1`` of them reading source
        ``sources[j]``: beam search drops the sources it has finished so.

        Raises:
            ValueError: ``index`` holds other than ``len(sources) * group`` rows.

        Examples:
            >>> cache.select(torch.tensor([1]), torch.tensor([4, 5, 6, 7]))  # group 4: source 1
        """
        if index.shape[0] != sources.shape[0] * self.group:
            raise ValueError(
                f"select keeps {sources.shape[0]} sources of {self.group} rows each; "
                f"got {index.shape[0]} decoder rows"
            )
        self._reorder_self(index)
        self._select_memory(sources)

    def _select_memory(self, rows: Tensor) -> None:
        self.cross = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.cross]
        if self.source_valid_mask is not None:
            self.source_valid_mask = self.source_valid_mask.index_select(0, rows)

    def _reorder_self(self, index: Tensor) -> None:
        same = index.shape[0] == self.batch_size
        fresh = []
        spare = self._spare
        for i, c in enumerate(self.self_attn):
            n = c.length
            if same and c.k is not None and c.v is not None:
                sk, sv = spare.get(i, (None, None))
                if sk is None or sv is None or sk.shape != c.k.shape or sv.shape != c.v.shape:
                    sk, sv = torch.empty_like(c.k), torch.empty_like(c.v)
                torch.index_select(c.k[:, :, :n], 0, index, out=sk[:, :, :n])
                torch.index_select(c.v[:, :, :n], 0, index, out=sv[:, :, :n])
                spare[i] = (c.k, c.v)
                c.k, c.v = sk, sv  # the chosen rows, in the other storage
                fresh.append(c)
                continue
            spare.pop(i, None)
            new = KVCache(c.max_len, c.dtype)
            if n and c.k is not None and c.v is not None:
                new.update(
                    c.k[:, :, :n].index_select(0, index), c.v[:, :, :n].index_select(0, index)
                )
            fresh.append(new)
        self.self_attn = fresh
