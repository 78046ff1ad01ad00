"""Checks of generation's arguments, each naming the bad value and what was expected.

They run once, when :func:`~attnkit.generation.decode.stream` or ``generate`` is called; the
decode loop itself does no checking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tokenizers import Tokenizer

from attnkit._util import checks
from attnkit.models.common import ModelBase
from attnkit.models.gpt import GPT

__all__ = [
    "CONTEXT_MODES",
    "Options",
    "check_model",
    "check_options",
    "eos_set",
    "prompt_rows",
    "stop_list",
]

CONTEXT_MODES = ("error", "slide")


def check_model(model: object) -> GPT:
    """``model`` if it is an attnkit GPT with an LM head.

    Args:
        model: the model to generate with.

    Raises:
        TypeError: if ``model`` is not a :class:`~attnkit.models.gpt.GPT`.
        ValueError: if it has no LM head (``config.head='none'``).

    Examples:
        >>> gpt = check_model(attnkit.load("runs/char"))  # the same object, typed as GPT
    """
    if not isinstance(model, GPT):
        raise TypeError(
            f"model must be an attnkit GPT (attnkit.load(DIR) of a GPT or HF GPT-2 "
            f"checkpoint), got {type(model).__name__}"
            + (f" with arch={model.config.arch!r}" if isinstance(model, ModelBase) else "")
        )
    if model.lm_head is None:
        raise ValueError("model has no LM head (config.head='none'); generation needs head='lm'")
    return model


@dataclass(frozen=True)
class Options:
    """The checked sampling and stopping options of one generation call, as
    :func:`check_options` makes them: ``stops`` the stop strings, ``stop_ids`` the stop
    token-id sequences and ``eos`` the eos ids; the rest as given to ``generate``.

    Examples:
        >>> check_options(256, 64, 1.0, None, None, 1.0, None, None, 0, True, "error").seed  # 0
    """

    max_new_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    repetition_penalty: float
    stops: tuple[str, ...]
    stop_ids: tuple[tuple[int, ...], ...]
    eos: frozenset[int]
    seed: int | None
    use_cache: bool
    context: str


def check_options(
    vocab: int,
    max_new_tokens: Any,
    temperature: Any,
    top_k: Any,
    top_p: Any,
    repetition_penalty: Any,
    stop: Any,
    eos_token_id: Any,
    seed: Any,
    use_cache: Any,
    context: Any,
) -> Options:
    """Every option checked, in the order of the signature of ``generate``.

    Args:
        vocab: the model's vocabulary size (token ids must be below it).
        max_new_tokens: an int >= 1.
        temperature: a float >= 0 (0: greedy).
        top_k: None or an int >= 1.
        top_p: None or a float in (0, 1].
        repetition_penalty: a float > 0.
        stop: None, a stop string, a token-id sequence, or a list of those (:func:`stop_list`).
        eos_token_id: None, an id or a list of ids (:func:`eos_set`).
        seed: None or an int >= 0.
        use_cache: a bool.
        context: one of :data:`CONTEXT_MODES`.

    Raises:
        ValueError: for a bad value (a ``CheckTypeError``, also a TypeError, for a wrong type).

    Examples:
        >>> check_options(256, 64, 0.8, 40, None, 1.0, "\\n\\n", None, 0, True, "error").stops
        ('\\n\\n',)
    """
    checks.int_at_least("max_new_tokens", max_new_tokens, 1)
    temperature = checks.in_range("temperature", temperature, 0.0, math.inf)
    if top_k is not None:
        checks.int_at_least("top_k", top_k, 1)
    if top_p is not None:
        top_p = checks.in_range("top_p", top_p, 0.0, 1.0, low_open=True, high_open=False)
    repetition_penalty = checks.in_range(
        "repetition_penalty", repetition_penalty, 0.0, math.inf, low_open=True
    )
    if seed is not None:
        checks.int_at_least("seed", seed, 0)
    if context not in CONTEXT_MODES:
        raise ValueError(f"context must be one of {CONTEXT_MODES}, got {context!r}")
    checks.flag("use_cache", use_cache)
    stops, stop_ids = stop_list(stop, vocab)
    return Options(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        stops=tuple(stops),
        stop_ids=tuple(stop_ids),
        eos=frozenset(eos_set(eos_token_id, vocab)),
        seed=seed,
        use_cache=use_cache,
        context=context,
    )


def prompt_rows(
    prompt: Any, tokenizer: Tokenizer | None, vocab: int
) -> tuple[list[list[int]], bool]:
    """The prompt as token-id rows, and whether it was a batch.

    Args:
        prompt: a str, a list of token ids, a (T,) or (B, T) integer tensor, a list of str or
            a list of token-id lists.
        tokenizer: encodes text prompts (no special tokens added); None if there is none.
        vocab: the model's vocabulary size; every id must be in [0, vocab).

    Raises:
        ValueError: for a prompt of another kind, an empty prompt or row, an id out of range,
            or text without a tokenizer.

    Examples:
        >>> prompt_rows([[1, 2], [3]], None, 256)  # ([[1, 2], [3]], True)
    """
    rows: list[Any]
    if isinstance(prompt, torch.Tensor):
        if (
            prompt.dtype.is_floating_point
            or prompt.dtype == torch.bool
            or prompt.dim() not in (1, 2)
        ):
            raise ValueError(
                f"prompt tensor must hold integer token ids, shape (T,) or (B, T); "
                f"got shape {tuple(prompt.shape)} dtype {prompt.dtype}"
            )
        batched = prompt.dim() == 2
        rows = prompt.tolist() if batched else [prompt.tolist()]
    elif isinstance(prompt, str):
        batched, rows = False, [prompt]
    elif isinstance(prompt, (list, tuple)):
        if not prompt:
            raise ValueError("prompt is empty; expected text, token ids or a list of them")
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            batched, rows = False, [list(prompt)]
        elif all(isinstance(p, str) for p in prompt):
            batched, rows = True, list(prompt)
        elif all(isinstance(p, (list, tuple)) for p in prompt):
            batched, rows = True, [list(p) for p in prompt]
        else:
            raise ValueError(
                f"prompt must be a str, a list of token ids, a list of str or a "
                f"list of token-id lists, got a list of "
                f"{sorted({type(p).__name__ for p in prompt})}"
            )
    else:
        raise ValueError(
            f"prompt must be text, token ids (list or tensor) or a list of them, got "
            f"{type(prompt).__name__}"
        )
    out = []
    for i, row in enumerate(rows):
        if isinstance(row, str):
            if tokenizer is None:
                raise ValueError(
                    "a text prompt needs a tokenizer: the model has none "
                    "(model.meta.tokenizer) and no tokenizer= was given"
                )
            row = tokenizer.encode(row, add_special_tokens=False).ids
        if not row:
            raise ValueError(f"prompt {i} is empty (no tokens); expected at least one token")
        bad = [
            t for t in row if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab
        ]
        if bad:
            raise ValueError(f"prompt {i} holds token id {bad[0]!r}, expected ints in [0, {vocab})")
        out.append(list(row))
    return out, batched


def eos_set(eos_token_id: Any, vocab: int) -> set[int]:
    """``eos_token_id`` (None, an id or a list of ids) as a set of ids in [0, vocab).

    Args:
        eos_token_id: None (no eos), an int, or a list, tuple or set of ints.
        vocab: the model's vocabulary size.

    Raises:
        ValueError: for an id that is not an int in [0, vocab).

    Examples:
        >>> eos_set([2, 3], 256)  # {2, 3}
    """
    if eos_token_id is None:
        return set()
    ids = [eos_token_id] if not isinstance(eos_token_id, (list, tuple, set)) else list(eos_token_id)
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab:
            raise ValueError(
                f"eos_token_id must be an int or list of ints in [0, {vocab}), got {eos_token_id!r}"
            )
    return set(ids)


def stop_list(stop: Any, vocab: int) -> tuple[list[str], list[tuple[int, ...]]]:
    """(stop strings, stop token-id sequences) from ``stop``: a string, a list of token ids, or
    a list mixing strings and lists of token ids.

    Args:
        stop: None (no stops), a non-empty str, a non-empty list of token ids, or a list of
            those.
        vocab: the model's vocabulary size; stop ids must be in [0, vocab).

    Raises:
        ValueError: for anything else (an empty string or list, an id out of range).

    Examples:
        >>> stop_list(["\\n\\n", [1, 2]], 256)  # (['\\n\\n'], [(1, 2)])
    """
    if stop is None:
        return [], []
    bad = ValueError(
        f"stop must be a non-empty string, a non-empty list of token ids in "
        f"[0, {vocab}), or a list of those, got {stop!r}"
    )
    items: Sequence[Any]
    if isinstance(stop, str):
        items = [stop]
    elif (
        isinstance(stop, (list, tuple))
        and stop
        and all(isinstance(t, int) and not isinstance(t, bool) for t in stop)
    ):
        items = [tuple(stop)]  # one token-id sequence
    elif isinstance(stop, (list, tuple)):
        items = list(stop)
    else:
        raise bad
    strings, sequences = [], []
    for item in items:
        if isinstance(item, str) and item:
            strings.append(item)
        elif (
            isinstance(item, (list, tuple))
            and item
            and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in item)
        ):
            sequences.append(tuple(item))
        else:
            raise bad
    return strings, sequences
