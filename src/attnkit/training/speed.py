"""How fast a training run goes and when it stops, shared by the pre-training loop
(:mod:`attnkit.training.loop`) and the encoder-decoder one (:mod:`attnkit.training.seq2seq`):
compiling the model, the steady-state step rate, and the wall-time, token and FLOP budgets.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from attnkit.training.config import TrainConfig


def compile_model(
    raw: torch.nn.Module,
    threads: int,
    device: torch.device,
    prime: torch.Tensor | None = None,
    dynamic: bool | None = None,
) -> torch.nn.Module:
    """``torch.compile(raw, dynamic=dynamic)``; on a CPU with ``threads`` > 0 the fused kernels it generates run
    on that many threads (Inductor's ``cpp.threads``), while the matrix products and attention
    it calls keep the process's thread count. Compiled kernels are cached on disk by
    PyTorch (``TORCHINDUCTOR_CACHE_DIR``), so a second run of the same model compiles faster.

    ``prime``, input ids (batch, seq) of the training length, is run once through ``raw``
    first (eval mode, no gradient, so no dropout draws from the generator): tables a model
    builds on first use, such as RoPE's cos/sin, then exist when it is traced, and the second
    step does not compile the model again (5 s for a 3-layer RoPE GPT on 2 CPU threads).

    Args:
        raw: the model.
        threads: CPU threads for the fused kernels (``train.elementwise_threads``); 0: the
            process's count.
        device: the model's device (``threads`` is for the CPU only).
        prime: (batch, seq) input ids run through ``raw`` before compiling, or None.
        dynamic: torch.compile's: True compiles for symbolic sizes from the first call (batches
            of varying shape, as the encoder-decoder's length buckets); None, PyTorch's default.

    Returns:
        The compiled module (it shares ``raw``'s parameters).

    Examples:
        >>> model = compile_model(raw, 1, torch.device("cpu"), prime=torch.zeros(1, 64).long())
    """
    if prime is not None:
        was = raw.training
        raw.eval()
        with torch.no_grad():
            raw(prime)
        raw.train(was)
    options: dict[str, Any] | None = None
    if threads > 0 and device.type == "cpu":
        options = {"cpp.threads": threads}
    return torch.compile(raw, dynamic=dynamic, options=options)  # type: ignore[return-value]


STEADY_SKIP = 10  # the first steps (compilation, warm-up) left out of the steady-state rate


def steady_tokens_per_second(
    step_seconds: list[float],
    tokens_per_step: int,
    skip: int = STEADY_SKIP,
    exclude: Iterable[int] = (),
) -> float | None:
    """Tokens per step over the median of the steady-state step times: the times after the
    first ``skip`` steps, less the steps at indices ``exclude`` (those that include an
    evaluation or a checkpoint); None when none is left.

    Args:
        step_seconds: wall-clock seconds of each step, in order.
        tokens_per_step: tokens trained per optimizer step.
        skip: the leading steps left out (compilation and warm-up).
        exclude: indices into ``step_seconds`` left out as well.

    Returns:
        Tokens per second, or None.

    Examples:
        >>> steady_tokens_per_second([9.0, 0.5, 0.25, 0.5], 100, skip=1)
        200.0
    """
    kept = steady_steps(step_seconds, skip, exclude)
    if not kept:
        return None
    return tokens_per_step / statistics.median(kept)


def steady_steps(
    step_seconds: Sequence[float], skip: int = STEADY_SKIP, exclude: Iterable[int] = ()
) -> list[float]:
    """The steady-state step times: those after the first ``skip``, less the indices
    ``exclude`` (the one rule of :func:`steady_tokens_per_second` and of the benchmarks that
    compare runs with it).

    Args:
        step_seconds: wall-clock seconds of each step, in order.
        skip: the leading steps left out (compilation and warm-up).
        exclude: indices into ``step_seconds`` left out as well.

    Examples:
        >>> steady_steps([9.0, 0.5, 7.0, 0.25], skip=1, exclude=[2])
        [0.5, 0.25]
    """
    left_out = set(exclude)
    return [t for i, t in enumerate(step_seconds) if i >= skip and i not in left_out]


def budget_spent(
    tc: TrainConfig, tokens: int, seconds: float, flops_per_token: float
) -> str | None:
    """The name of the first budget (``budget_seconds``, ``budget_tokens``, ``budget_flops``)
    that ``tokens`` trained in ``seconds`` have spent, or None.

    Args:
        tc: the train config (its budgets; 0 is no limit).
        tokens: the tokens trained so far (resumed parts included).
        seconds: the loop's wall time so far.
        flops_per_token: the model's training FLOPs per token.

    Examples:
        >>> budget_spent(TrainConfig(budget_tokens=1e6), tokens=2_000_000, seconds=5.0,
        ...     flops_per_token=1e6)
        'budget_tokens'
    """
    if tc.budget_seconds and seconds >= tc.budget_seconds:
        return "budget_seconds"
    if tc.budget_tokens and tokens >= tc.budget_tokens:
        return "budget_tokens"
    if tc.budget_flops and tokens * flops_per_token >= tc.budget_flops:
        return "budget_flops"
    return None
