"""compare-attention: the same small GPT pre-trained with each attention variant at each
sequence length, for the same budget.

    spec = compare_spec(base, ["exact", "local", "performer"], [256, 1024], Budget.parse("seconds=60"))
    outcome = attnkit.experiments.sweep.run(spec, "runs/cmp")

A point is ``model.attention`` (``exact`` or a name from the variants registry, with its
default parameters) at ``train.block_size`` T (``model.max_seq_len`` follows). Each length
keeps the tokens per step of the base config (``batch_size = round(tokens_per_step / T)``, at
least 1) unless ``tokens_per_step`` says otherwise, so a step costs the same number of tokens
at every length. Each point's record adds the peak memory one training step takes beyond the
weights and optimizer state, measured in a fresh process
(:func:`attnkit.experiments.run.train_step_op`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from attnkit.experiments.space import Budget
from attnkit.experiments.spec import SweepSpec
from attnkit.training import config as run_config

__all__ = ["DEFAULT_SEQ_LENS", "DEFAULT_VARIANTS", "compare_spec"]

DEFAULT_VARIANTS = ("exact", "local", "bigbird", "lsh", "performer", "linear")
DEFAULT_SEQ_LENS = (256, 1024)


def compare_spec(
    base: Mapping[str, Any],
    variants: Sequence[str] = DEFAULT_VARIANTS,
    seq_lens: Sequence[int] = DEFAULT_SEQ_LENS,
    budget: Budget | None = None,
    tokens_per_step: int | None = None,
    measure_memory: bool = True,
) -> SweepSpec:
    """The comparison's points over ``base`` (a nested config dict): every variant at every
    length, lengths outermost.

    Args:
        base: the nested config dict every point starts from.
        variants: ``"exact"`` and names of the attention variants registry, distinct.
        seq_lens: distinct ``train.block_size`` values, ints >= 2 (``model.max_seq_len``
            follows).
        budget: what each point may spend (required).
        tokens_per_step: tokens per training step at every length (default: the base config's
            ``batch_size * block_size``).
        measure_memory: also measure each point's peak training-step memory.

    Returns:
        A ``"compare-attention"`` :class:`SweepSpec`.

    Raises:
        ValueError: no budget, an unknown or repeated variant, a bad or repeated length, or a
            ``tokens_per_step`` that is not an int >= 1.

    Examples:
        >>> spec = compare_spec({}, ["exact", "local"], [256, 1024], Budget.parse("seconds=60"))
        >>> len(spec.points)
        4
    """
    from attnkit.attention import variants as registry

    if budget is None:
        raise ValueError("compare-attention needs a budget, e.g. Budget.parse('seconds=60')")
    valid = ["exact", *registry.names()]
    if not variants:
        raise ValueError(f"variants must name at least one of {valid}, got none")
    for v in variants:
        if v not in valid:
            raise ValueError(f"unknown attention variant {v!r}; expected some of {valid}")
    if len(set(variants)) != len(variants):
        raise ValueError(f"variants repeat a name: {list(variants)}")
    if not seq_lens or any(
        not isinstance(T, int) or isinstance(T, bool) or T < 2 for T in seq_lens
    ):
        raise ValueError(f"seq_lens must be ints >= 2, got {list(seq_lens)!r}")
    if len(set(seq_lens)) != len(seq_lens):
        raise ValueError(f"seq_lens repeat a length: {list(seq_lens)}")
    cfg = run_config.build(dict(base), [])
    if tokens_per_step is None:
        tokens_per_step = cfg.train.batch_size * cfg.train.block_size
    if not isinstance(tokens_per_step, int) or tokens_per_step < 1:
        raise ValueError(f"tokens_per_step must be an int >= 1, got {tokens_per_step!r}")
    points = [
        {
            "model.attention": v,
            "train.block_size": T,
            "model.max_seq_len": T,
            "train.batch_size": max(1, round(tokens_per_step / T)),
        }
        for T in seq_lens
        for v in variants
    ]
    return SweepSpec(
        base=dict(base),
        points=tuple(points),
        budget=budget,
        kind="compare-attention",
        measure_memory=measure_memory,
        axes=("model.attention", "train.block_size", "train.batch_size"),
    )
