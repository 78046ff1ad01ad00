"""Dynamic batching: a bounded queue of requests and the one worker thread that owns a model.

Request handlers :meth:`BatchQueue.submit` a :class:`Job` and await its future; they never
touch the model. The worker takes the oldest job, then every job already waiting (or, when
none is, those that arrive within ``batch_wait_ms``) that shares its batching ``key`` and fits
in ``max_batch`` units (texts, or rows), and hands the batch to ``run_batch`` in one call. So a
lone request waits at most the wait window, and under load each model call serves many
requests at once: throughput grows with the load until the batch is full.

Overload is answered, never queued without bound: a full queue is a 429 at once, a job that
waited past ``request_timeout_s`` is dropped with a 503 before the model sees it, and a job
whose client has gone (``job.cancelled``) is skipped. Jobs taken from the queue but not yet
batched (another key) are held in a list of at most ``queue_size``, so at most twice the
queue's size is ever outstanding. An exception in ``run_batch`` fails that batch's unfinished
jobs (a 500 for their clients) and the worker goes on.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from attnkit.serve.errors import APIError
from attnkit.serve.limits import Limits

__all__ = ["BatchQueue", "Job"]

logger = logging.getLogger(__name__)


class Job:
    """One request's work: ``payload`` (what ``run_batch`` reads), its ``size`` in batch units,
    the batching ``key`` (only jobs with equal keys share a batch) and its ``future``.

    Args:
        payload: what ``run_batch`` reads.
        size: the job's size in batch units (texts, or rows).
        key: jobs share a batch only when their keys are equal.

    Examples:
        >>> job = Job(["a text"], size=1)
        >>> job.done()
        False
    """

    def __init__(self, payload: Any, size: int = 1, key: Hashable = None) -> None:
        self.payload = payload
        self.size = size
        self.key = key
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.cancelled = False  # set by the handler when its client is gone
        self.enqueued = time.monotonic()

    def done(self) -> bool:
        """Whether the job's future has a result or an error.

        Examples:
            >>> job.finish(42); job.done()
            True
        """
        return self.future.done()

    def finish(self, result: Any) -> None:
        """Answer the job with ``result`` (ignored when it was answered already).

        Args:
            result: what the handler awaiting the future gets.

        Examples:
            >>> job.finish(vecs); job.future.result() is vecs
            True
        """
        try:
            self.future.set_result(result)
        except concurrent.futures.InvalidStateError:  # answered already, or given up on
            pass

    def fail(self, error: BaseException) -> None:
        """Answer the job with ``error`` (ignored when it was answered already).

        Args:
            error: the exception the handler awaiting the future gets raised.

        Examples:
            >>> job.fail(APIError(503, "the server is shutting down", code="unavailable"))
        """
        try:
            self.future.set_exception(error)
        except concurrent.futures.InvalidStateError:
            pass


class BatchQueue:
    """A bounded queue of :class:`Job` and the worker thread that runs them in batches.

    The worker thread starts at construction (see the module docstring for how it batches).

    Args:
        run_batch: called on the worker thread with each batch; it answers every job
            (:meth:`Job.finish` or :meth:`Job.fail`).
        limits: the queue size, the batch wait and the request timeout.
        max_batch: the most batch units (the jobs' ``size``) in one batch.
        name: the worker thread's name.

    Examples:
        >>> q = BatchQueue(lambda jobs: [j.finish(len(j.payload)) for j in jobs], Limits(), 8)
        >>> q.submit(Job("abc")).future.result()
        3
    """

    def __init__(
        self,
        run_batch: Callable[[list[Job]], None],
        limits: Limits,
        max_batch: int,
        name: str = "attnkit-serve-worker",
    ) -> None:
        self.run_batch = run_batch
        self.limits = limits
        self.max_batch = max_batch
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=limits.queue_size)
        self._held: list[Job] = []  # taken from the queue, waiting for a batch of their key
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.batches = 0  # batches run so far (for tests and /health)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the worker thread is running and the queue is not closed.

        Examples:
            >>> q.alive
            True
        """
        return self._thread.is_alive() and not self._closed.is_set()

    def depth(self) -> int:
        """Jobs waiting (queued or held).

        Examples:
            >>> q.depth()
            0
        """
        return self._queue.qsize() + len(self._held)

    def submit(self, job: Job) -> Job:
        """Queue ``job``, and return it.

        Args:
            job: the job to queue.

        Raises:
            APIError: 429 when the queue is full, 503 when the worker is not running.

        Examples:
            >>> future = q.submit(Job("abc")).future
        """
        if not self.alive:
            raise APIError(
                503, "the model worker is not running; try again later", code="unavailable"
            )
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise APIError(
                429,
                f"the server is busy: {self.limits.queue_size} requests are waiting for the "
                f"model; retry later",
                code="queue_full",
            ) from None
        return job

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker; jobs still waiting are answered 503.

        Args:
            timeout: seconds to wait for the worker thread to end (its current batch).

        Examples:
            >>> q.close(); q.alive
            False
        """
        self._closed.set()
        self._thread.join(timeout)
        for job in self._drain():
            job.fail(APIError(503, "the server is shutting down", code="unavailable"))

    # ---------------------------------------------------------------------------------------
    def _drain(self) -> list[Job]:
        jobs, self._held = self._held, []
        while True:
            try:
                jobs.append(self._queue.get_nowait())
            except queue.Empty:
                return jobs

    def _usable(self, job: Job, now: float) -> bool:
        """False for a job that is done, cancelled or too old (which is answered 503)."""
        if job.cancelled or job.done():
            return False
        if now - job.enqueued > self.limits.request_timeout_s:
            job.fail(
                APIError(
                    503,
                    f"the request waited {now - job.enqueued:.1f} s for the model (the limit is "
                    f"{self.limits.request_timeout_s:g} s); the server is overloaded, retry later",
                    code="timeout",
                )
            )
            return False
        return True

    def _next_job(self, timeout: float) -> Job | None:
        """The oldest usable job, held ones first; None when none came within ``timeout``."""
        while self._held:
            job = self._held.pop(0)
            if self._usable(job, time.monotonic()):
                return job
        wait: float | None = timeout
        while True:
            try:
                job = self._queue.get(timeout=wait) if wait else self._queue.get_nowait()
            except queue.Empty:
                return None
            if self._usable(job, time.monotonic()):
                return job
            wait = None

    def _collect(self, first: Job) -> list[Job]:
        batch, size = [first], first.size
        # held jobs of the same key first, in order
        keep = []
        for job in self._held:
            if (
                job.key == first.key
                and size + job.size <= self.max_batch
                and self._usable(job, time.monotonic())
            ):
                batch.append(job)
                size += job.size
            elif not job.done() and not job.cancelled:
                keep.append(job)
        self._held = keep
        until = time.monotonic() + self.limits.batch_wait_ms / 1000.0
        while size < self.max_batch and len(self._held) < self.limits.queue_size:
            now = time.monotonic()
            try:
                if not self._queue.empty():
                    job = self._queue.get_nowait()
                elif now < until:
                    job = self._queue.get(timeout=until - now)
                else:
                    break
            except queue.Empty:
                break
            if not self._usable(job, time.monotonic()):
                continue
            if job.key == first.key and size + job.size <= self.max_batch:
                batch.append(job)
                size += job.size
            else:
                self._held.append(job)
        return batch

    def _loop(self) -> None:
        while not self._closed.is_set():
            first = self._next_job(0.1)
            if first is None:
                continue
            batch = self._collect(first)
            try:
                self.run_batch(batch)
            except Exception as e:  # the worker outlives any batch
                logger.exception("attnkit serve: a batch of %d request(s) failed", len(batch))
                for job in batch:
                    job.fail(
                        e
                        if isinstance(e, APIError)
                        else APIError(
                            500,
                            f"the model failed on this batch: {type(e).__name__}: {e}",
                            code="internal_error",
                        )
                    )
            else:
                for job in batch:  # run_batch answers every job; one it missed is a bug
                    job.fail(APIError(500, "the request was not answered", code="internal_error"))
            self.batches += 1
