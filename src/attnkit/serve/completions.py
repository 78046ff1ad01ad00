"""``/v1/completions`` and ``/v1/chat/completions`` on a GPT: prompts checked and tokenised by
the handler, decoded together by the worker with :func:`attnkit.generation.stream`.

Requests whose sampling options are equal (``max_tokens``, ``temperature``, ``top_p``,
``stop``) share one left-padded batch, up to ``max_batch_rows`` rows; a request with a
``seed`` (at a temperature above 0) runs alone, so that the seed reproduces its text. Each
row's tokens go to its request as they are made: to a server-sent-event stream, or collected
for one JSON answer.

As in the OpenAI API the text returned stops before a stop string (:class:`StopCutter`; a
streamed row holds back the few characters that could begin one), and ``finish_reason`` is
``"stop"`` (a stop string or the end-of-text token) or ``"length"`` (``max_tokens`` reached).
A chat is rendered as one ``"<role>: <content>"`` line per message followed by
``"assistant:"``, and a turn ends at a line that starts another speaker (``"\\nuser:"``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tokenizers import Tokenizer

from attnkit.generation import stream
from attnkit.models.gpt import GPT
from attnkit.serve.batching import BatchQueue, Job
from attnkit.serve.errors import APIError
from attnkit.serve.limits import Limits
from attnkit.serve.schemas import ChatRequest, CompletionRequest

__all__ = ["CompletionService", "StopCutter", "chat_prompt"]

CHAT_STOPS = ("\nuser:", "\nsystem:")
MAX_STOPS = 4


def chat_prompt(messages: list[Any]) -> str:
    """The text a GPT continues for a chat (see the module docstring).

    Args:
        messages: the chat's messages, each with ``role`` and ``content``
            (:class:`~attnkit.serve.schemas.ChatMessage`).

    Examples:
        >>> chat_prompt([ChatMessage(role="user", content="Hi")])
        'user: Hi\\nassistant:'
    """
    return "".join(f"{m.role}: {m.content}\n" for m in messages) + "assistant:"


class StopCutter:
    """Text of one row as it is made, cut before the first stop string. :meth:`push` returns
    what is safe to send now (all but an end that could begin a stop string); :meth:`flush`
    the rest at the end. ``text`` holds everything sent, ``stopped`` whether a stop string
    was met.

    Args:
        stops: the stop strings.

    Examples:
        >>> cut = StopCutter(("END",))
        >>> cut.push("abcE"), cut.push("ND more"), cut.text
        ('abc', '', 'abc')
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.pending = ""
        self.text = ""  # everything sent
        self.stopped = False

    def _held(self) -> int:
        """The length of the longest end of ``pending`` that begins some stop string."""
        for n in range(min(len(self.pending), max((len(s) for s in self.stops), default=0)), 0, -1):
            tail = self.pending[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0

    def push(self, new: str) -> str:
        """Add the row's ``new`` text; the part now safe to send ("" once stopped).

        Args:
            new: the text the latest token made printable.

        Examples:
            >>> StopCutter(("\\nuser:",)).push("Hi there\\nus")
            'Hi there'
        """
        if self.stopped:
            return ""
        self.pending += new
        cuts = [self.pending.find(s) for s in self.stops if s in self.pending]
        if cuts:
            out, self.pending, self.stopped = self.pending[: min(cuts)], "", True
        else:
            keep = self._held()
            out = self.pending[: len(self.pending) - keep]
            self.pending = self.pending[len(self.pending) - keep :]
        self.text += out
        return out

    def flush(self) -> str:
        """The text held back at the row's end ("" when a stop string was met).

        Examples:
            >>> cut = StopCutter(("END",)); cut.push("abcE"); cut.flush()
            'E'
        """
        out = "" if self.stopped else self.pending
        self.pending = ""
        self.text += out
        return out


@dataclass
class _Choice:
    cutter: StopCutter
    prompt_tokens: int
    tokens: int = 0
    ended_by_eos: bool = False


@dataclass
class _Work:
    rows: list[list[int]]
    max_tokens: int
    temperature: float
    top_p: float
    stops: tuple[str, ...]
    seed: int | None
    emit: Callable[[int, str], None] | None  # (choice, text) as it is made (streaming)
    choices: list[_Choice] = field(default_factory=list)


class CompletionService:
    """A GPT served under ``model_id``; its worker thread owns the model.

    The model is put in eval mode; prompts are tokenised with a copy of its tokenizer, and
    ``<|endoftext|>`` (when the tokenizer has it) ends a row.

    Args:
        model: the GPT, with a tokenizer in ``model.meta.tokenizer``.
        model_id: the id requests name it by.
        limits: the server's caps.

    Raises:
        ValueError: the model has no tokenizer.

    Examples:
        >>> svc = CompletionService(attnkit.load("runs/char"), "char", Limits())
    """

    kind = "completions"

    def __init__(self, model: GPT, model_id: str, limits: Limits):
        tok = model.meta.tokenizer
        if tok is None:
            raise ValueError(f"model {model_id!r} has no tokenizer; serving a GPT needs one")
        self.model = model.eval()
        self.model_id = model_id
        self.limits = limits
        cfg = model.config
        self.context = cfg.max_seq_len
        self.limited = cfg.positional in ("learned", "sinusoidal")
        self.max_prompt_tokens = min(limits.max_input_tokens or self.context, self.context)
        self.tokenizer = Tokenizer.from_str(tok.to_str())  # the handlers' own copy
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        eos = tok.token_to_id("<|endoftext|>")
        self.eos = eos if eos is not None and eos < cfg.vocab_size else None
        self.queue = BatchQueue(
            self._run, limits, limits.max_batch_rows, f"attnkit-serve-{model_id}"
        )

    def describe(self) -> dict[str, Any]:
        """What ``/health`` shows of it: ``{"kind", "context", "max_tokens"}``.

        Examples:
            >>> svc.describe()["kind"]
            'completions'
        """
        return {"kind": self.kind, "context": self.context, "max_tokens": self.limits.max_tokens}

    # ---------------------------------------------------------------------------------------
    def prepare(
        self,
        req: CompletionRequest | ChatRequest,
        emit: Callable[[int, str], None] | None = None,
    ) -> Job:
        """The job for one request: its prompts tokenised and checked, ``max_tokens``
        settled (the request's, else ``default_max_tokens`` within the context).

        Args:
            req: a completion or a chat request.
            emit: for a streamed request, called on the worker thread with ``(choice, text)``
                as text is made.

        Raises:
            APIError: 400 naming what is wrong (``echo``, ``n`` other than 1, too many or
                empty prompts, bad ``stop``, too many tokens asked for or in a prompt).

        Examples:
            >>> job = svc.prepare(CompletionRequest(model="char", prompt="ROMEO:", max_tokens=8))
        """
        if isinstance(req, ChatRequest):
            prompts = [chat_prompt(req.messages)]
            requested = req.max_completion_tokens or req.max_tokens
            extra_stops: tuple[str, ...] = CHAT_STOPS
        else:
            prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
            requested = req.max_tokens
            extra_stops = ()
            if req.echo:
                raise APIError(400, "echo=true is not supported; expected echo=false", "echo")
        if req.n != 1:
            raise APIError(
                400, f"n={req.n}: this server makes one choice per prompt; expected n=1", "n"
            )
        if not prompts:
            raise APIError(400, "prompt is an empty list; expected at least one prompt", "prompt")
        if len(prompts) > min(self.limits.max_inputs, self.limits.max_batch_rows):
            raise APIError(
                400,
                f"prompt holds {len(prompts)} prompts; the limit is "
                f"{min(self.limits.max_inputs, self.limits.max_batch_rows)} per request",
                "prompt",
            )
        stops = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        if len(stops) > MAX_STOPS or any(not s for s in stops):
            raise APIError(
                400, f"stop must be at most {MAX_STOPS} non-empty strings, got {req.stop!r}", "stop"
            )
        if requested is not None and requested > self.limits.max_tokens:
            raise APIError(
                400,
                f"max_tokens={requested} exceeds this server's limit of {self.limits.max_tokens}",
                "max_tokens",
            )
        rows = []
        for i, p in enumerate(prompts):
            try:
                ids = self.tokenizer.encode(p, add_special_tokens=False).ids
            except Exception as e:  # tokenizers raises a bare Exception (an unknown character)
                raise APIError(
                    400, f"prompt {i} cannot be tokenised by model {self.model_id!r}: {e}", "prompt"
                ) from None
            if not ids:
                raise APIError(
                    400, f"prompt {i} is empty (no tokens); expected some text", "prompt"
                )
            if len(ids) > self.max_prompt_tokens:
                raise APIError(
                    400,
                    f"prompt {i} has {len(ids)} tokens; model {self.model_id!r} reads at most "
                    f"{self.max_prompt_tokens}",
                    "prompt",
                    "context_length_exceeded",
                )
            rows.append(ids)
        longest = max(len(r) for r in rows)
        room = self.context - longest if self.limited else self.limits.max_tokens
        if requested is None:
            max_tokens = max(1, min(self.limits.default_max_tokens, room))
        else:
            max_tokens = requested
        if self.limited and longest + max_tokens > self.context:
            raise APIError(
                400,
                f"the prompt ({longest} tokens) and max_tokens={max_tokens} exceed model "
                f"{self.model_id!r}'s context of {self.context} tokens; ask for at most "
                f"{max(room, 0)} new tokens",
                "max_tokens",
                "context_length_exceeded",
            )
        all_stops = stops + extra_stops
        seed = req.seed if req.temperature > 0 else None
        work = _Work(
            rows,
            max_tokens,
            req.temperature,
            req.top_p,
            all_stops,
            seed,
            emit,
            [_Choice(StopCutter(all_stops), len(r)) for r in rows],
        )
        key: Any = (max_tokens, req.temperature, req.top_p, all_stops)
        if seed is not None:
            key = (key, seed, uuid.uuid4().hex)  # alone in its batch
        return Job(work, size=len(rows), key=key)

    def _run(self, jobs: list[Job]) -> None:
        first: _Work = jobs[0].payload
        rows, owners = [], []
        for job in jobs:
            for c, r in enumerate(job.payload.rows):
                rows.append(r)
                owners.append((job, c))
        events = stream(
            self.model,
            rows,
            first.max_tokens,
            temperature=first.temperature,
            top_p=first.top_p if first.top_p < 1.0 else None,
            stop=list(first.stops) or None,
            eos_token_id=self.eos,
            seed=first.seed,
            context="error",
        )
        for event in events:
            job, c = owners[event.row]
            if job.cancelled:
                if all(j.cancelled for j in jobs):
                    break
                continue
            work: _Work = job.payload
            choice = work.choices[c]
            choice.tokens += 1
            if event.token_id == self.eos:
                choice.ended_by_eos = True
                continue
            out = choice.cutter.push(event.text or "")
            if out and work.emit is not None:
                work.emit(c, out)
        for job in jobs:
            work = job.payload
            for c, choice in enumerate(work.choices):
                rest = choice.cutter.flush()
                if rest and work.emit is not None:
                    work.emit(c, rest)
            job.finish(work)

    # ---------------------------------------------------------------------------------------
    @staticmethod
    def finish_reason(work: _Work, c: int) -> str:
        """``"stop"`` when choice ``c`` met a stop string or the end-of-text token (or ended
        early), ``"length"`` when it made ``max_tokens`` tokens.

        Args:
            work: the finished work of a job (its future's result).
            c: the choice (prompt) index.

        Examples:
            >>> CompletionService.finish_reason(job.future.result(), 0)  # "stop" or "length"
        """
        choice = work.choices[c]
        if choice.cutter.stopped or choice.ended_by_eos or choice.tokens < work.max_tokens:
            return "stop"
        return "length"

    def usage(self, work: _Work) -> dict[str, int]:
        """The token counts of a finished job: ``{"prompt_tokens", "completion_tokens",
        "total_tokens"}`` over all its choices.

        Args:
            work: the finished work of a job (its future's result).

        Examples:
            >>> svc.usage(job.future.result())["completion_tokens"]  # at most max_tokens
        """
        prompt = sum(ch.prompt_tokens for ch in work.choices)
        done = sum(ch.tokens for ch in work.choices)
        return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}

    def response(self, chat: bool, work: _Work) -> dict[str, Any]:
        """The JSON answer to a non-streamed request: a ``"chat.completion"`` (each choice a
        ``message``) or a ``"text_completion"`` (each choice a ``text``), with usage.

        Args:
            chat: answer a chat request.
            work: the finished work of the job (its future's result).

        Examples:
            >>> svc.response(False, job.future.result())["choices"][0]["text"]
        """
        made = int(time.time())
        if chat:
            return {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": made,
                "model": self.model_id,
                "choices": [
                    {
                        "index": c,
                        "message": {"role": "assistant", "content": ch.cutter.text},
                        "finish_reason": self.finish_reason(work, c),
                        "logprobs": None,
                    }
                    for c, ch in enumerate(work.choices)
                ],
                "usage": self.usage(work),
            }
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": made,
            "model": self.model_id,
            "choices": [
                {
                    "index": c,
                    "text": ch.cutter.text,
                    "finish_reason": self.finish_reason(work, c),
                    "logprobs": None,
                }
                for c, ch in enumerate(work.choices)
            ],
            "usage": self.usage(work),
        }
