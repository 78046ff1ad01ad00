"""``/v1/embeddings`` on an :class:`~attnkit.tasks.sentence.Encoder`: requests checked and
tokenised by the handler, embedded together by the worker.

The handler tokenises each request once (to count and check its tokens); the worker
concatenates the token ids of every request in a batch and makes one
:meth:`Encoder.encode_ids` call, which sorts them by token count into batches of
``batch_size`` (run on their real tokens only, see ``Bert.hidden_states(unpad=True)``) and
L2-normalises them, as ``attnkit embed`` does; each request gets its own rows back. An
input longer than ``max_input_tokens`` (default: the encoder's ``max_length``) is refused
with a 400 rather than cut.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from attnkit.serve.batching import BatchQueue, Job
from attnkit.serve.errors import APIError
from attnkit.serve.limits import Limits
from attnkit.serve.schemas import EmbeddingRequest
from attnkit.tasks.sentence import Encoder

__all__ = ["EmbeddingService"]


@dataclass
class _Work:
    ids: list[list[int]]  # the token ids of each text, as Encoder.tokenize gives them
    tokens: int


class EmbeddingService:
    """An encoder served under ``model_id``; its worker thread owns the model.

    Args:
        encoder: the sentence encoder.
        model_id: the id requests name it by.
        limits: the server's caps (``max_input_tokens`` is capped at the encoder's
            ``max_length``).
        batch_size: texts per :meth:`Encoder.encode_ids` batch.

    Examples:
        >>> svc = EmbeddingService(Encoder.load("minilm"), "minilm", Limits())
    """

    kind = "embeddings"

    def __init__(self, encoder: Encoder, model_id: str, limits: Limits, batch_size: int = 128):
        self.encoder = encoder
        self.model_id = model_id
        self.limits = limits
        self.batch_size = batch_size
        self.max_input_tokens = min(
            limits.max_input_tokens or encoder.max_length, encoder.max_length
        )
        # the handlers' own tokenizer (the worker's belongs to the encoder), cut just past
        # the limit so an over-long input costs no more than a long one
        self.counter = Tokenizer.from_str(encoder.tokenizer.to_str())
        self.counter.no_padding()
        self.counter.enable_truncation(self.max_input_tokens + 1)
        self.queue = BatchQueue(
            self._run, limits, limits.max_batch_texts, f"attnkit-serve-{model_id}"
        )

    def describe(self) -> dict[str, Any]:
        """What ``/health`` shows of it: ``{"kind", "dimensions", "max_input_tokens"}``.

        Examples:
            >>> svc.describe()["kind"]
            'embeddings'
        """
        return {
            "kind": self.kind,
            "dimensions": self.encoder.dim,
            "max_input_tokens": self.max_input_tokens,
        }

    def prepare(self, req: EmbeddingRequest) -> Job:
        """The job for one request: its texts checked and tokenised.

        Args:
            req: the embedding request.

        Raises:
            APIError: 400 naming what is wrong (no input, token ids, too many texts, an empty
                or over-long text, ``dimensions`` other than the encoder's).

        Examples:
            >>> job = svc.prepare(EmbeddingRequest(model="minilm", input=["a text"]))
        """
        inp = req.input
        items: list[Any] = [inp] if isinstance(inp, str) else list(inp)
        if not items:
            raise APIError(400, "input is an empty list; expected at least one text", "input")
        texts = [t for t in items if isinstance(t, str)]
        if len(texts) != len(items):
            raise APIError(
                400,
                "input holds token ids; this server embeds text: send a string or a list of strings",
                "input",
            )
        if len(texts) > self.limits.max_inputs:
            raise APIError(
                400,
                f"input holds {len(texts)} texts; the limit is {self.limits.max_inputs} per request",
                "input",
            )
        if req.dimensions is not None and req.dimensions != self.encoder.dim:
            raise APIError(
                400,
                f"dimensions={req.dimensions}: model {self.model_id!r} gives {self.encoder.dim}-dimensional "
                f"vectors and cannot shorten them",
                "dimensions",
            )
        for i, t in enumerate(texts):
            if not t.strip():
                raise APIError(400, f"input[{i}] is empty; expected a non-empty string", "input")
            try:
                t.encode("utf-8")
            except UnicodeEncodeError:
                raise APIError(
                    400, f"input[{i}] is not valid Unicode (a lone surrogate)", "input"
                ) from None
        ids = [e.ids for e in self.counter.encode_batch(texts)]
        for i, seq in enumerate(ids):
            if len(seq) > self.max_input_tokens:
                raise APIError(
                    400,
                    f"input[{i}] has more than {self.max_input_tokens} tokens, the most model "
                    f"{self.model_id!r} reads; shorten it",
                    "input",
                    "context_length_exceeded",
                )
        # a text within the limit was not cut, so these are the ids Encoder.tokenize gives
        return Job(_Work(ids, sum(map(len, ids))), size=len(texts))

    def _run(self, jobs: list[Job]) -> None:
        ids = [seq for job in jobs for seq in job.payload.ids]
        vecs = self.encoder.encode_ids(ids, batch_size=self.batch_size).cpu().numpy()
        start = 0
        for job in jobs:
            n = len(job.payload.ids)
            job.finish(vecs[start : start + n])
            start += n

    def response(self, req: EmbeddingRequest, job: Job, vecs: np.ndarray) -> dict[str, Any]:
        """The JSON answer: one ``"embedding"`` item per text (floats, or little-endian
        float32 in base64 with ``encoding_format="base64"``) and the token usage.

        Args:
            req: the request answered.
            job: its job (for the token count).
            vecs: the job's result, shape (texts, dim), L2-normalised.

        Examples:
            >>> svc.response(req, job, job.future.result())["data"][0]["index"]
            0
        """
        if req.encoding_format == "base64":
            items: list[Any] = [
                base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode("ascii")
                for v in vecs
            ]
        else:
            items = vecs.astype(np.float32).tolist()
        tokens = job.payload.tokens
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(items)
            ],
            "model": self.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
