"""T5's span corruption: a denoising objective for pre-training an encoder-decoder on plain text.

Of a window of ``n`` tokens, about ``noise_density * n`` are chosen in about
``noise_tokens / mean_span_length`` contiguous spans (T5's ``random_spans_noise_mask``: the
noise tokens and the kept tokens are each cut into that many non-empty runs at random, and the
runs alternate, kept first). The input is the window with each noise span replaced by one
sentinel token (the first span by ``sentinels[0]``, the next by ``sentinels[1]``, ...); the
target is each sentinel followed by the tokens it hides, then ``eos``:

    tokens   The  cute dog  walks in   the  park
    mask      0    1    1    0     0    1    0
    input    The  <X>       walks in   <Y>  park  </s>
    target   <X>  cute dog  <Y>   the  </s>

Draws come from an explicit ``torch.Generator``, so a run's corruption is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attnkit._util import checks

__all__ = ["corrupt_spans", "random_spans_mask", "span_corruption"]


def _segments(total: int, count: int, generator: torch.Generator) -> list[int]:
    """``total`` cut into ``count`` random positive parts (in order)."""
    if count == 1:
        return [total]
    cuts = torch.randperm(total - 1, generator=generator)[: count - 1] + 1
    edges = [0, *sorted(cuts.tolist()), total]
    return [b - a for a, b in zip(edges, edges[1:])]


def random_spans_mask(
    length: int, noise_density: float, mean_span_length: float, generator: torch.Generator
) -> list[bool]:
    """A noise mask of ``length`` positions (True = hidden), as T5's random_spans_noise_mask.

    ``round(length * noise_density)`` positions (at least 1, at most ``length - 1``) are hidden
    in about ``noise / mean_span_length`` spans; the mask starts with a kept run. A ``length``
    of 1 hides nothing.

    Args:
        length: the number of positions.
        noise_density: the share of hidden positions, in (0, 1).
        mean_span_length: the mean length of a hidden span, > 0.
        generator: the source of the random cuts.

    Raises:
        ValueError: an argument out of range.

    Examples:
        >>> sum(random_spans_mask(20, 0.15, 3.0, torch.Generator().manual_seed(0)))
        3
    """
    checks.positive_int("length", length)
    checks.in_range("noise_density", noise_density, 0.0, 1.0, low_open=True, high_open=True)
    checks.positive_float("mean_span_length", mean_span_length)
    if length < 2:
        return [False] * length
    noise = min(max(round(length * noise_density), 1), length - 1)
    spans = max(min(round(noise / mean_span_length), noise, length - noise), 1)
    noise_runs = _segments(noise, spans, generator)
    kept_runs = _segments(length - noise, spans, generator)
    mask: list[bool] = []
    for kept, hidden in zip(kept_runs, noise_runs):
        mask += [False] * kept + [True] * hidden
    return mask


def corrupt_spans(
    ids: Sequence[int], mask: Sequence[bool], sentinels: Sequence[int], eos_id: int
) -> tuple[list[int], list[int]]:
    """(input ids, target ids) of ``ids`` with the spans of ``mask`` hidden (module docstring).

    Args:
        ids: the token ids of the window.
        mask: one flag per id, True = hidden.
        sentinels: the ids that replace the spans, the first span by ``sentinels[0]``.
        eos_id: the id ending both sequences.

    Raises:
        ValueError: ``ids`` and ``mask`` differ in length, or the mask has more spans than
            there are sentinels.

    Examples:
        >>> corrupt_spans([10, 11, 12, 13, 14, 15, 16], [0, 1, 1, 0, 0, 1, 0], [99, 98], 1)
        ([10, 99, 13, 14, 98, 16, 1], [99, 11, 12, 98, 15, 1])
    """
    if len(ids) != len(mask):
        raise ValueError(f"ids has {len(ids)} tokens and mask {len(mask)}; expected equal lengths")
    source: list[int] = []
    target: list[int] = []
    span = -1
    for i, (tok, hidden) in enumerate(zip(ids, mask)):
        if hidden:
            if i == 0 or not mask[i - 1]:
                span += 1
                if span >= len(sentinels):
                    raise ValueError(
                        f"the mask has more than {len(sentinels)} spans; expected at most one "
                        f"per sentinel token"
                    )
                source.append(sentinels[span])
                target.append(sentinels[span])
            target.append(tok)
        else:
            source.append(tok)
    return source + [eos_id], target + [eos_id]


def span_corruption(
    ids: Sequence[int],
    sentinels: Sequence[int],
    eos_id: int,
    generator: torch.Generator,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
) -> tuple[list[int], list[int]]:
    """:func:`corrupt_spans` of ``ids`` under a :func:`random_spans_mask`.

    Args:
        ids: the token ids of the window (at least one).
        sentinels: the sentinel ids, at least as many as the spans drawn.
        eos_id: the id ending both sequences.
        generator: the source of the random mask.
        noise_density: the share of hidden tokens.
        mean_span_length: the mean length of a hidden span.

    Returns:
        ``(input ids, target ids)``, each ending with ``eos_id``.

    Examples:
        >>> src, tgt = span_corruption(list(range(10, 30)), [99, 98, 97], 1, torch.Generator())
    """
    mask = random_spans_mask(len(ids), noise_density, mean_span_length, generator)
    return corrupt_spans(ids, mask, sentinels, eos_id)
