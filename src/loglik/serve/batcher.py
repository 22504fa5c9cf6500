"""Coalesce concurrent requests into the scorer's batches, on a model thread.

The event loop hands each request's token-id :class:`~loglik.types.Request` list to
:meth:`Batcher.score` (or its text pairs to :meth:`Batcher.score_examples`) and awaits it.
Text pairs go first to a tokenizer thread, which takes every request waiting for it and
tokenizes them in one :meth:`Encoder.encode_many` call (one batched tokenizer call instead of
two per request on the event loop, where it measured a third of the loop's time at one pair
per request; and not on the model thread, which it slowed when the model was the limit), then
queues them for the model. One thread owns the model (with a model worker process, two
threads each keep a batch in flight to it): it takes the oldest job, waits up
to ``wait_ms`` for more jobs asking for the same :class:`~loglik.types.Detail` (up to
``max_tokens``), and scores them all in one :meth:`Scorer.run_requests` call (with a model
worker process, :mod:`loglik.serve.worker`, it sends them there and waits), so requests
sharing a context across clients read it once. A score does not depend on its neighbours (the
planner's invariance, to float rounding). If a coalesced call fails, each job is retried alone
so one bad request cannot fail its neighbours.

Jobs beyond ``max_queue`` are refused at once (:class:`QueueFull`, a 503 for the client).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..types import Detail, Encoded, Example, Request, TokenResult
from .metrics import Metrics


class QueueFull(Exception):
    """More requests are waiting than the server takes; retry later."""


@dataclass
class _Job:
    requests: Sequence[Request] | None
    detail: Detail | None
    fn: Callable[[], Any] | None
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    examples: Sequence[Example] | None = None   # text pairs, for the tokenizer thread
    check: Callable[[list[Encoded]], None] | None = None   # raises to refuse the encoded pairs
    encoded: list[Encoded] | None = None

    @property
    def tokens(self) -> int:
        return sum(len(r.context_ids) + len(r.target_ids) for r in self.requests or ())

    def resolve(self, value: Any = None, error: BaseException | None = None) -> None:
        """From the model thread: hand the answer to the event loop."""
        self.loop.call_soon_threadsafe(self.deliver, value, error)

    def deliver(self, value: Any = None, error: BaseException | None = None) -> None:
        """On the event loop: set the future (unless the client has gone away)."""
        if not self.future.done():
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(value)


class Batcher:
    """The one thread that runs the model (and one that tokenizes text pairs for it);
    coroutine front-ends ``score``, ``score_examples`` and ``call``.

    Args:
        scorer: a :class:`loglik.Scorer`.
        wait_ms: how long the first job of a batch waits for others to join.
        max_tokens: tokens gathered into one scorer call at most (one job may exceed it).
        max_queue: jobs waiting at most (to be tokenized or scored); the next one raises
            :class:`QueueFull`.
        run: scores one coalesced batch (default ``scorer.run_requests``; with a model
            worker, :meth:`WorkerBackend.run_requests`, which plans it in the worker).
        in_flight: batches handed to ``run`` at once, one model thread each: 1 for a model
            in this process; 2 with a model worker, which then finds the next batch waiting
            in its pipe when it finishes one instead of idling while the answers go out and
            the next batch gathers.
    """

    def __init__(self, scorer: Any, *, wait_ms: float = 5.0, max_tokens: int = 16384,
                 max_queue: int = 1024, metrics: Metrics | None = None,
                 run: Callable[[Sequence[Request], Detail], list[TokenResult]] | None = None,
                 in_flight: int = 1) -> None:
        self.scorer = scorer
        self.run = run or scorer.run_requests
        self.wait = wait_ms / 1000.0
        self.max_tokens = max_tokens
        self.max_queue = max_queue
        self.metrics = metrics or Metrics()
        self._jobs: deque[_Job] = deque()      # ready for the model
        self._pending: deque[_Job] = deque()   # text pairs, for the tokenizer thread
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)        # the model thread waits on it
        self._arrived = threading.Condition(self._lock)   # the tokenizer thread waits on it
        self._stopping = False
        self._encoder_done = False
        self._encoder = threading.Thread(target=self._run_encoder, name="loglik-tokenizer",
                                         daemon=True)
        self._threads = [threading.Thread(target=self._run, name=f"loglik-batcher-{i}",
                                          daemon=True) for i in range(max(1, in_flight))]
        self._encoder.start()
        for thread in self._threads:
            thread.start()

    # -- the event loop's side --------------------------------------------------------------
    async def score(self, requests: Sequence[Request], detail: Detail = Detail()
                    ) -> list[TokenResult]:
        """One result per request, as ``scorer.run_requests`` gives it."""
        return await self._submit(list(requests), detail, None)

    async def score_examples(self, examples: Sequence[Example], detail: Detail = Detail(), *,
                             check: Callable[[list[Encoded]], None] | None = None
                             ) -> tuple[list[Encoded], list[TokenResult]]:
        """Tokenize text pairs (``scorer.encoder``, on the tokenizer thread, in one call with
        the other requests waiting for it), then score them with the batch they join.

        ``check(encoded)`` runs on the tokenizer thread before scoring; what it raises (a limit
        the encoded pairs break) is this request's answer, not its neighbours'.
        Returns one :class:`Encoded` and one result per example, in order.
        """
        return await self._submit(None, detail, None, list(examples), check)

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` on the model thread (generation), in turn with the batches."""
        return await self._submit(None, None, fn)

    async def _submit(self, requests: Sequence[Request] | None, detail: Detail | None,
                      fn: Callable[[], Any] | None, examples: Sequence[Example] | None = None,
                      check: Callable[[list[Encoded]], None] | None = None) -> Any:
        loop = asyncio.get_running_loop()
        job = _Job(requests, detail, fn, loop.create_future(), loop, examples, check)
        with self._cv:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            waiting = len(self._jobs) + len(self._pending)
            if waiting >= self.max_queue:
                raise QueueFull(f"{waiting} requests are waiting (the limit)")
            (self._pending if examples is not None else self._jobs).append(job)
            self.metrics.queue_depth = waiting + 1
            (self._arrived if examples is not None else self._cv).notify()
        return await job.future

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the jobs already queued (tokenized, then scored), then end the threads."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
            self._arrived.notify()
        self._encoder.join(timeout)
        for thread in self._threads:
            thread.join(timeout)

    # -- the tokenizer thread --------------------------------------------------------------
    def _run_encoder(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._stopping:
                    self._arrived.wait()
                if not self._pending:
                    self._encoder_done = True
                    self._cv.notify_all()
                    return
                todo = list(self._pending)
                self._pending.clear()
            ready = self._encode(todo)
            with self._lock:
                self._jobs.extend(ready)
                self._cv.notify()

    # -- the model thread ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._jobs and not self._encoder_done:   # it ends after stop()
                    self._cv.wait()
                if not self._jobs:
                    return
                first = self._jobs.popleft()
                self.metrics.queue_depth = len(self._jobs) + len(self._pending)
            if first.fn is not None:
                self._run_call(first)
                continue
            batch = self._gather(first)
            self._run_batch(batch)

    def _gather(self, first: _Job) -> list[_Job]:
        """``first`` and the jobs with the same detail that arrive within the wait."""
        batch, tokens = [first], first.tokens
        deadline = time.monotonic() + self.wait
        with self._cv:
            while tokens < self.max_tokens:
                for job in list(self._jobs):
                    if job.fn is None and job.detail == first.detail:
                        if tokens + job.tokens > self.max_tokens:
                            break
                        self._jobs.remove(job)
                        batch.append(job)
                        tokens += job.tokens
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping:
                    break
                self._cv.wait(left)
            self.metrics.queue_depth = len(self._jobs) + len(self._pending)
        return batch

    def _run_call(self, job: _Job) -> None:
        try:
            job.resolve(job.fn())   # type: ignore[misc]
        except Exception as exc:   # delivered to the request that asked
            job.resolve(error=exc)

    def _encode(self, todo: list[_Job]) -> list[_Job]:
        """Tokenize the text pairs of ``todo`` in one call; answer (and drop) refused jobs."""
        parts: list[list[Encoded] | None] = [None] * len(todo)
        try:
            flat = self.scorer.encoder.encode_many([ex for job in todo for ex in job.examples])
        except Exception:   # one job's pair is refused: below, each job alone
            pass
        else:
            start = 0
            for n, job in enumerate(todo):
                parts[n] = flat[start:start + len(job.examples)]   # type: ignore[arg-type]
                start += len(job.examples)   # type: ignore[arg-type]
        for job, encoded in zip(todo, parts):
            try:
                if encoded is None:
                    encoded = self.scorer.encoder.encode_many(job.examples)
                if job.check is not None:
                    job.check(encoded)
            except Exception as exc:   # delivered to the request that sent it
                job.resolve(error=exc)
                continue
            job.encoded = encoded
            job.requests = [Request(e.context_ids, e.response_ids) for e in encoded]
        return [job for job in todo if job.requests is not None]

    def _run_batch(self, batch: list[_Job]) -> None:
        requests = [r for job in batch for r in job.requests]   # type: ignore[union-attr]
        try:
            results = self.run(requests, batch[0].detail)  # type: ignore[arg-type]
        except Exception as exc:
            if len(batch) == 1:
                batch[0].resolve(error=exc)
                return
            for job in batch:   # find the one that fails; the others still get answers
                self._run_batch([job])
            return
        self.metrics.batch(len(requests), sum(len(r.target_ids) for r in requests))
        answers, start = [], 0
        for job in batch:
            n = len(job.requests)   # type: ignore[arg-type]
            mine = results[start:start + n]
            answers.append((job, mine if job.encoded is None else (job.encoded, mine)))
            start += n
        # One wake-up of the event loop per batch, not one per job (each costs a write to
        # its self-pipe and a GIL hand-over).
        for loop in {job.loop for job in batch}:
            mine = [(job, value) for job, value in answers if job.loop is loop]
            loop.call_soon_threadsafe(lambda mine=mine: [job.deliver(value)
                                                         for job, value in mine])
