"""Batches of tokenised texts: length-sorted, right-padded, returned in the caller's order.

The one batcher of attnkit (sentence embeddings, classification, attention surgery use it):

    >>> seqs = [[2, 7, 3], [2, 3], [2, 9, 9, 9, 3]]          # token ids of three texts
    >>> for batch in padded_batches(seqs, batch_size=2, pad_id=0):
    ...     batch.index, batch.ids.shape, batch.attention_mask
    ([2, 0], torch.Size([2, 5]), tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]))
    ([1], torch.Size([1, 2]), None)
    >>> out = map_batches(seqs, 2, lambda b: b.ids.sum(1, keepdim=True), pad_id=0)  # (3, 1)

* :func:`length_batches`: batches of indices whose items have about the same length (longest
  first; with ``shuffle``, pools of similar lengths in random order, for training).
* :func:`token_batches`: batches of indices holding at most ``max_tokens`` padded tokens, each
  of items of about the same length (for training on pairs of different lengths).
* :func:`pad_batch`: right padding to the longest sequence of one batch and the attention mask
  (``1`` = real token, ``0`` = padding, the polarity of Hugging Face's ``attention_mask``). A
  batch with no padding gets the mask ``None``, so attention takes its unmasked path.
* :func:`padded_batches` / :func:`map_batches`: both at once, and per-batch results written
  back in the input order (the order is restored, whatever order the batches ran in).
* :func:`pack_sequences`: several short sequences per row, first-fit by length, with
  ``document_ids`` (0 on padding) so attention stays inside each sequence and positions restart.
* :func:`chunked`: an iterable (a stream of lines) as lists of at most ``size`` consecutive
  items, read lazily, so a command handles input of any length in bounded memory.

The padding and the mask are made from the Python lengths, so no host sync is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import TypeVar

import torch

from attnkit._util import checks

__all__ = [
    "Batch",
    "PackedBatch",
    "chunked",
    "length_batches",
    "map_batches",
    "pack_sequences",
    "pad_batch",
    "padded_batches",
    "token_batches",
]

Item = TypeVar("Item")


def chunked(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    """Lists of ``size`` consecutive items of ``items`` (the last may be shorter), in order.

    Lazy: a list is yielded as soon as its ``size`` items have been read, and nothing beyond
    them is read first, so a stream (``sys.stdin``) is handled a chunk at a time, in memory
    bounded by ``size``, with results written while later input has not arrived yet.

    Args:
        items: any iterable, read once.
        size: the most items per list, at least 1.

    Raises:
        ValueError: ``size`` is not a positive int.

    Examples:
        >>> list(chunked(range(5), 2))
        [[0, 1], [2, 3], [4]]
    """
    checks.positive_int("size", size)
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


@dataclass(frozen=True)
class Batch:
    """One padded batch: rows ``index`` of the input, ``ids`` (B, T) and ``attention_mask``
    (B, T), 1 = real token, or None when no row is padded.

    Examples:
        >>> b = Batch([0], torch.tensor([[2, 7, 3]]), None)
        >>> b.ids.shape
        torch.Size([1, 3])
    """

    index: list[int]
    ids: torch.Tensor
    attention_mask: torch.Tensor | None

    def to(self, device: torch.device | str) -> Batch:
        """A copy with ``ids`` (B, T) and ``attention_mask`` (B, T) moved to ``device`` (the
        same ``index``).

        Examples:
            >>> batch.to("cuda").ids.device
            device(type='cuda', index=0)
        """
        mask = None if self.attention_mask is None else self.attention_mask.to(device)
        return Batch(self.index, self.ids.to(device), mask)


def length_batches(
    lengths: Sequence[int],
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    pool: int = 50,
) -> list[list[int]]:
    """Batches of indices whose items have about the same length.

    Without ``shuffle``: all items sorted by length (longest first, ties in input order), cut
    into batches. With it: a random permutation cut into pools of ``pool * batch_size`` items,
    each pool sorted by length and cut into batches, and the batches put in random order (all
    drawn from ``generator``, so equal generators give equal batches in every process).

    Args:
        lengths: the length of each item (token count).
        batch_size: the most indices per batch.
        shuffle: random pools and batch order (for training) instead of one sorted order.
        generator: the source of the random draws with ``shuffle``.
        pool: batches per pool with ``shuffle``.

    Returns:
        Lists of indices into ``lengths``; every index once.

    Raises:
        ValueError: ``batch_size`` or ``pool`` is not a positive int.

    Examples:
        >>> length_batches([3, 2, 5], batch_size=2)
        [[2, 0], [1]]
    """
    checks.positive_int("batch_size", batch_size)
    checks.positive_int("pool", pool)
    n = len(lengths)
    if not shuffle:
        order = sorted(range(n), key=lambda i: -lengths[i])
        return [order[s : s + batch_size] for s in range(0, n, batch_size)]
    perm = torch.randperm(n, generator=generator).tolist()
    size = pool * batch_size
    batches: list[list[int]] = []
    for s in range(0, n, size):
        chunk = sorted(perm[s : s + size], key=lambda i: -lengths[i])
        batches += [chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def token_batches(
    lengths: Sequence[tuple[int, ...]],
    max_tokens: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Batches of indices of items (each with one length per side, e.g. (source, target)) of
    about the same lengths, each batch at most ``max_tokens`` padded tokens: rows times its
    longest length on any side (an item longer than ``max_tokens`` is a batch of its own).

    All items are sorted by their lengths (longest first; with ``shuffle``, items of equal
    lengths in a random order drawn from ``generator``) and cut greedily, so neighbours in a
    batch have equal or next-to-equal lengths and little padding; with ``shuffle`` the batches
    are then put in random order (equal generators give equal batches in every process).

    Args:
        lengths: per item a tuple of lengths, one per side (the same number of sides for all).
        max_tokens: the most padded tokens per batch.
        shuffle: random order of ties and of the batches (for training).
        generator: the source of the random draws with ``shuffle``.

    Returns:
        Lists of indices into ``lengths``; every index once.

    Raises:
        ValueError: ``max_tokens`` is not a positive int.

    Examples:
        >>> token_batches([(3, 4), (2, 2), (5, 1)], max_tokens=8)
        [[2], [0, 1]]
    """
    checks.positive_int("max_tokens", max_tokens)
    n = len(lengths)
    order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
    order.sort(key=lambda i: tuple(-x for x in lengths[i]))  # stable: ties keep their draw
    batches: list[list[int]] = []
    current: list[int] = []
    widths: tuple[int, ...] = ()
    for i in order:
        grown = tuple(max(a, b) for a, b in zip(widths, lengths[i])) if current else lengths[i]
        if current and (len(current) + 1) * max(grown) > max_tokens:
            batches.append(current)
            current, grown = [], lengths[i]
        current.append(i)
        widths = grown
    if current:
        batches.append(current)
    if shuffle:
        perm = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[i] for i in perm]
    return batches


def pad_batch(
    seqs: Sequence[Sequence[int]], pad_id: int = 0, *, always_mask: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Right-padded ids (B, T) to the longest sequence and the attention mask (B, T), 1 on real
    tokens; the mask is None when nothing is padded (unless ``always_mask``).

    Args:
        seqs: B token-id sequences, at least one of them non-empty.
        pad_id: the id written after the end of a shorter sequence.
        always_mask: return a mask even when no sequence is padded.

    Returns:
        ``(ids, attention_mask)``: int64 (B, T) tensors, T the longest length.

    Raises:
        ValueError: ``seqs`` is empty or holds only empty sequences.

    Examples:
        >>> ids, mask = pad_batch([[2, 7, 3], [2, 3]], pad_id=0)
        >>> ids.tolist(), mask.tolist()
        ([[2, 7, 3], [2, 3, 0]], [[1, 1, 1], [1, 1, 0]])
    """
    if not seqs:
        raise ValueError("pad_batch got no sequences; expected at least one")
    lengths = [len(s) for s in seqs]
    T = max(lengths)
    if T == 0:
        raise ValueError("pad_batch got only empty sequences; expected at least one token")
    # one tensor from padded lists: a copy per sequence costs ~5% of a MiniLM batch
    ids = torch.tensor([list(s) + [pad_id] * (T - n) for s, n in zip(seqs, lengths)])  # (B, T)
    ids = ids.to(torch.long)
    if not always_mask and all(n == T for n in lengths):
        return ids, None
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths], dtype=torch.long)  # (B, T)
    return ids, mask


def padded_batches(
    seqs: Sequence[Sequence[int]],
    batch_size: int,
    pad_id: int = 0,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    pool: int = 50,
) -> Iterator[Batch]:
    """:func:`length_batches` of ``seqs``, each padded by :func:`pad_batch`.

    Args:
        seqs: the token ids of each text.
        batch_size: the most sequences per batch.
        pad_id: the padding id.
        shuffle: as :func:`length_batches` (random pools and order, for training).
        generator: the source of the random draws with ``shuffle``.
        pool: batches per pool with ``shuffle``.

    Returns:
        Each batch as a :class:`Batch`, in the order of :func:`length_batches`, with ``index``
            the rows of ``seqs``, ``ids`` (B, T) and ``attention_mask`` (B, T) or None.

    Examples:
        >>> [b.index for b in padded_batches([[2, 7, 3], [2, 3], [2, 9, 9, 9, 3]], batch_size=2)]
        [[2, 0], [1]]
    """
    for idx in length_batches([len(s) for s in seqs], batch_size, shuffle, generator, pool):
        ids, mask = pad_batch([seqs[i] for i in idx], pad_id)
        yield Batch(idx, ids, mask)


def map_batches(
    seqs: Sequence[Sequence[int]],
    batch_size: int,
    fn: Callable[[Batch], torch.Tensor],
    pad_id: int = 0,
    *,
    device: torch.device | str | None = None,
    progress: str | None = None,
) -> torch.Tensor:
    """``fn`` on length-sorted padded batches (moved to ``device``); its (B, ...) results
    stacked in the input order, (N, ...).

    Args:
        seqs: N token-id sequences.
        batch_size: the most sequences per batch.
        fn: maps a :class:`Batch` to a (B, ...) tensor, one row per sequence of the batch.
        pad_id: the padding id.
        device: where each batch is moved before ``fn`` (default: left on the CPU).
        progress: a tqdm bar with this description (None: no bar).

    Returns:
        (N, ...) tensor, row i the result for ``seqs[i]``, on the device of ``fn``'s results.

    Raises:
        ValueError: ``seqs`` is empty.

    Examples:
        >>> map_batches([[2, 7, 3], [2, 3]], 2, lambda b: b.ids.sum(1, keepdim=True)).shape
        torch.Size([2, 1])
    """
    n = len(seqs)
    if n == 0:
        raise ValueError("map_batches got no sequences; expected at least one")
    idx_batches = length_batches([len(s) for s in seqs], batch_size)
    steps: Sequence[list[int]] | Iterator[list[int]] = idx_batches
    if progress is not None:
        from tqdm.auto import tqdm

        steps = tqdm(idx_batches, desc=progress, unit="batch")
    out: torch.Tensor | None = None
    for idx in steps:
        ids, mask = pad_batch([seqs[i] for i in idx], pad_id)
        batch = Batch(idx, ids, mask)
        if device is not None:
            batch = batch.to(device)
        result = fn(batch)  # (B, ...)
        if out is None:
            out = result.new_empty((n, *result.shape[1:]))  # (N, ...)
        out[torch.tensor(idx, device=result.device)] = result
    assert out is not None
    return out


@dataclass(frozen=True)
class PackedBatch:
    """Sequences packed into rows: ``ids`` (R, T); ``document_ids`` (R, T), 1.. for the
    sequences of a row and 0 on padding; ``attention_mask`` (R, T), 1 = real token;
    ``rows[i]`` the (row, start, length) of input sequence i.

    Examples:
        >>> pack_sequences([[2, 7, 3], [2, 3], [5, 5, 5, 5]], max_tokens=6).rows
        [(1, 0, 3), (0, 4, 2), (0, 0, 4)]
    """

    ids: torch.Tensor
    document_ids: torch.Tensor
    attention_mask: torch.Tensor
    rows: list[tuple[int, int, int]]


def pack_sequences(seqs: Sequence[Sequence[int]], max_tokens: int, pad_id: int = 0) -> PackedBatch:
    """Pack ``seqs`` into as few rows of at most ``max_tokens`` tokens as first-fit by
    decreasing length finds. Pass ``document_ids`` to the model so each sequence attends only
    to itself and its positions start at 0 (see ``Bert.hidden_states``).

    Args:
        seqs: the token ids of each sequence, each at most ``max_tokens`` long.
        max_tokens: the length of a row.
        pad_id: the id after the last sequence of a row.

    Returns:
        The R packed rows as a :class:`PackedBatch`: ``ids``, ``document_ids`` and
            ``attention_mask`` (R, T), T the longest row's token count, and each sequence's
            (row, start, length).

    Raises:
        ValueError: ``seqs`` is empty, a sequence is longer than ``max_tokens``, or
            ``max_tokens`` is not a positive int.

    Examples:
        >>> p = pack_sequences([[2, 7, 3], [2, 3], [5, 5, 5, 5]], max_tokens=6)
        >>> p.ids.tolist()
        [[5, 5, 5, 5, 2, 3], [2, 7, 3, 0, 0, 0]]
    """
    checks.positive_int("max_tokens", max_tokens)
    if not seqs:
        raise ValueError("pack_sequences got no sequences; expected at least one")
    too_long = [i for i, s in enumerate(seqs) if len(s) > max_tokens]
    if too_long:
        i = too_long[0]
        raise ValueError(
            f"sequence {i} has {len(seqs[i])} tokens; expected at most max_tokens={max_tokens}"
        )
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    used: list[int] = []  # tokens taken per row
    members: list[list[int]] = []
    where: dict[int, tuple[int, int]] = {}
    for i in order:
        n = len(seqs[i])
        row = next((r for r, u in enumerate(used) if u + n <= max_tokens), None)
        if row is None:
            row = len(used)
            used.append(0)
            members.append([])
        where[i] = (row, used[row])
        used[row] += n
        members[row].append(i)
    T = max(used)
    ids = torch.full((len(used), T), pad_id, dtype=torch.long)  # (R, T)
    docs = torch.zeros(len(used), T, dtype=torch.long)  # (R, T)
    for r, items in enumerate(members):
        for d, i in enumerate(items, 1):
            _, start = where[i]
            n = len(seqs[i])
            ids[r, start : start + n] = torch.as_tensor(list(seqs[i]), dtype=torch.long)
            docs[r, start : start + n] = d
    rows = [(where[i][0], where[i][1], len(seqs[i])) for i in range(len(seqs))]
    return PackedBatch(ids, docs, (docs > 0).long(), rows)
