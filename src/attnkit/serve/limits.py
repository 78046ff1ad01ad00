"""The caps of the server: request size, inputs, tokens, queue and batching, checked once."""

from __future__ import annotations

from dataclasses import dataclass

from attnkit._util import checks

__all__ = ["Limits"]


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how requests are queued and batched.

    max_body_bytes: the largest request body read (413 past it).
    max_inputs: texts per embedding request, prompts per completion request.
    max_input_tokens: tokens per embedding input (default: the encoder's ``max_length``) and
        per prompt (default: the GPT's ``max_seq_len``); a longer one is a 400.
    max_tokens: the largest ``max_tokens`` a completion may ask for (400 past it);
        default_max_tokens is used when a request gives none.
    queue_size: requests waiting for the model at most; one more is answered 429.
    batch_wait_ms: how long the worker waits for more requests after the first arrives
        (only when the queue is empty: under load a batch is formed at once).
    max_batch_texts: texts embedded in one batch of requests (length-sorted inside).
    max_batch_rows: completion rows decoded together.
    request_timeout_s: a request still waiting for the model after this is answered 503.
    answer_timeout_s: a request not answered after this (waiting and running) is answered 503
        (a guard against a model call that never returns; a stream gets an error event).

    Raises:
        ValueError: a count that is not a positive int, a negative wait, a timeout that is
            not positive, or ``default_max_tokens`` over ``max_tokens``.

    Examples:
        >>> Limits(queue_size=8, max_tokens=256).default_max_tokens
        16
    """

    max_body_bytes: int = 2 << 20
    max_inputs: int = 256
    max_input_tokens: int | None = None
    max_tokens: int = 512
    default_max_tokens: int = 16
    queue_size: int = 64
    batch_wait_ms: float = 5.0
    max_batch_texts: int = 128
    max_batch_rows: int = 16
    request_timeout_s: float = 30.0
    answer_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        for name in (
            "max_body_bytes",
            "max_inputs",
            "max_tokens",
            "default_max_tokens",
            "queue_size",
            "max_batch_texts",
            "max_batch_rows",
        ):
            checks.positive_int(f"Limits.{name}", getattr(self, name))
        checks.optional_positive_int("Limits.max_input_tokens", self.max_input_tokens)
        checks.non_negative_float("Limits.batch_wait_ms", self.batch_wait_ms)
        checks.positive_float("Limits.request_timeout_s", self.request_timeout_s)
        checks.positive_float("Limits.answer_timeout_s", self.answer_timeout_s)
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(
                f"Limits.default_max_tokens={self.default_max_tokens} exceeds "
                f"Limits.max_tokens={self.max_tokens}; expected at most it"
            )
