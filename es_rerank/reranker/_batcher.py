"""The cross-request batcher: pairs from concurrent calls merged into one model run.

One thread per model owns the ONNX Runtime session. Calls hand it their tokenized
pairs (:class:`Job`) and wait on a future. The thread takes pending jobs oldest
first and fills one model run with their pairs, up to a token budget
(``max_tokens`` padded tokens, ``batch_size`` rows), so small requests arriving
together share a run, and a large request is cut into runs that other requests can
join at the tail. When the model is idle, the pending pairs do not fill the budget
and other calls are on their way (being tokenized: ``incoming()`` says how many),
it waits for them at most ``wait_s`` after the oldest pending job arrived; never
longer, not at all once the budget is full, and not at all when no other call is
coming (a lone client pays no wait).

Oldest first is deliberate: on a compute-bound device (a CPU) sharing runs round
robin would make every request finish as late as the last one; oldest first lets
the first requests finish first while the later ones queue, which is what a
deadline-bound caller wants. A job whose future is cancelled (the caller timed out
and stopped waiting) is dropped before its next run, so it costs no more model time.

A job may come with a deadline. The batcher keeps the model's time per token, measured
on runs that fill at least half the token budget (what runs look like when work
queues up). A job the queue ahead of it and its own tokens would take past its
deadline at that rate is refused (:class:`Overloaded`) rather than queued, so its
caller can answer at once instead of after waiting out its deadline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError
from typing import Callable, Sequence

import numpy as np

from ._stats import ScoreStats
from ._tokenize import Encoded, padded_width

__all__ = ["Job", "Batcher", "Overloaded"]

logger = logging.getLogger("es_rerank.reranker")

# (encodings of one run, padded width) -> one float32 score per encoding
RunBatch = Callable[[Sequence[Encoded], int], np.ndarray]


class Overloaded(Exception):
    """The job would finish past its deadline: it was not queued."""

    def __init__(self, wait_s: float, left_s: float) -> None:
        super().__init__(f"the model would take about {wait_s:.1f} s for it, {max(left_s, 0):.1f} s are left")
        self.wait_s = wait_s
        self.left_s = left_s


class Job:
    """The pairs of one call still to score, longest first, and where their scores go."""

    __slots__ = (
        "encodings", "order", "lengths", "next", "remaining", "scores", "batch_size",
        "max_width", "future", "stats", "submitted", "started", "inference_s",
    )  # fmt: skip

    def __init__(
        self, encodings: Sequence[Encoded], *, batch_size: int, max_width: int, stats: ScoreStats
    ) -> None:
        self.encodings = encodings
        self.lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        self.order = np.argsort(-self.lengths, kind="stable")
        self.next = 0
        self.remaining = len(encodings)
        self.scores = np.empty(len(encodings), dtype=np.float32)
        self.batch_size = batch_size
        self.max_width = max_width
        self.future: Future[np.ndarray] = Future()
        self.stats = stats
        self.submitted = 0.0
        self.started: float | None = None
        self.inference_s = 0.0

    def next_length(self) -> int:
        return int(self.lengths[self.order[self.next]])

    def pending_tokens(self) -> int:
        return int(self.lengths[self.order[self.next :]].sum())

    def tokens(self) -> int:
        return int(self.lengths.sum())


def _settle(future: Future, *, result: np.ndarray | None = None, error: BaseException | None = None) -> None:
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:  # cancelled by the caller meanwhile
        pass


class Batcher:
    """Runs :class:`Job` pairs on one thread, merging concurrent jobs into shared model runs."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_tokens: int,
        wait_s: float,
        pad_multiple: int,
        name: str,
        incoming: Callable[[], int] = lambda: 0,
    ) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        if wait_s < 0:
            raise ValueError(f"wait must be 0 or more, got {wait_s}")
        self.run_batch = run_batch
        self.max_tokens = max_tokens
        self.wait_s = wait_s
        self.pad_multiple = pad_multiple
        self.incoming = incoming
        self.runs = 0  # model runs so far
        self.merged_runs = 0  # runs that carried pairs of more than one job
        self.refused = 0  # jobs refused: they would have finished past their deadline
        # seconds a token on runs of at least half the budget (moving average), None until one ran
        self.seconds_per_token: float | None = None
        self._running_tokens = 0
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"rerank-{name}", daemon=True)
        self._thread.start()

    # -- callers ---------------------------------------------------------------------

    def submit(self, job: Job, deadline: float | None = None) -> Future:
        """Queue ``job``; its future gets the scores in the order of its encodings.

        With a ``deadline`` (a ``time.perf_counter()`` value), a job the model would
        finish past it is refused with :class:`Overloaded` instead.
        """
        with self._cond:
            if self._closed:
                raise RuntimeError("batcher is closed")
            now = time.perf_counter()
            if deadline is not None:
                wait = self._estimated_s(job.tokens())
                if wait is not None and now + wait > deadline:
                    self.refused += 1
                    raise Overloaded(wait, deadline - now)
            job.submitted = now
            self._pending.append(job)
            self._cond.notify()
        return job.future

    def queued_s(self) -> float | None:
        """Seconds until the run in progress and the queued jobs are scored; None before a full run."""
        with self._cond:
            return self._estimated_s(0)

    def _estimated_s(self, tokens: int) -> float | None:
        """Seconds until ``tokens`` more would be scored, behind the run and the queue (lock held)."""
        if self.seconds_per_token is None:
            return None
        queued = self._running_tokens + sum(job.pending_tokens() for job in self._pending)
        return (queued + tokens) * self.seconds_per_token

    def poke(self) -> None:
        """Wake the thread: a call it may be waiting for will not come (or came)."""
        with self._cond:
            self._cond.notify_all()

    def close(self, error: BaseException) -> None:
        """Stop the thread after the run in progress; pending jobs fail with ``error``."""
        with self._cond:
            self._closed = True
            pending = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for job in pending:
            _settle(job.future, error=error)

    # -- the thread ------------------------------------------------------------------

    def _drop_cancelled(self) -> None:
        if any(job.future.cancelled() for job in self._pending):
            self._pending = deque(job for job in self._pending if not job.future.cancelled())

    def _budget_full(self) -> bool:
        tokens = 0
        for job in self._pending:
            tokens += job.pending_tokens()
            if tokens >= self.max_tokens:
                return True
        return False

    def _take(self) -> list[tuple[Job, np.ndarray]]:
        """Pairs for one run, oldest job first, within the row and token budget."""
        taken: list[tuple[Job, np.ndarray]] = []
        rows = 0
        width = 0
        row_cap: int | None = None
        for job in self._pending:
            cap = job.batch_size if row_cap is None else min(row_cap, job.batch_size)
            start = job.next
            stop = start
            n = len(job.order)
            while stop < n and rows < cap:
                length = int(job.lengths[job.order[stop]])
                new_width = max(width, padded_width(length, self.pad_multiple, job.max_width))
                if rows and (rows + 1) * new_width > self.max_tokens:
                    break
                width = new_width
                rows += 1
                stop += 1
            if stop > start:
                row_cap = cap
                taken.append((job, job.order[start:stop]))
                job.next = stop
            if rows >= cap or (rows and (rows + 1) * width > self.max_tokens):
                break
        return taken

    def _loop(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._pending and not self._closed:
                    cond.wait()
                if self._closed:
                    return
                # The model is idle: wait for company while the budget is not full,
                # at most wait_s after the oldest pending job arrived.
                idle_since = time.perf_counter()
                deadline = self._pending[0].submitted + self.wait_s
                while not self._closed and self.incoming() > 0 and not self._budget_full():
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    cond.wait(left)
                if self._closed:
                    return
                now = time.perf_counter()
                self._drop_cancelled()
                if not self._pending:
                    continue
                for job in self._pending:
                    if job.started is None:
                        job.stats.hold_ms += max(0.0, now - max(idle_since, job.submitted)) * 1000
                taken = self._take()
                for job, _ in taken:
                    if job.next >= len(job.order):
                        self._pending.remove(job)
                self._running_tokens = sum(int(job.lengths[positions].sum()) for job, positions in taken)
            self._run(taken)
            with cond:
                self._running_tokens = 0

    def _run(self, taken: list[tuple[Job, np.ndarray]]) -> None:
        encodings = [job.encodings[p] for job, positions in taken for p in positions]
        width = max(
            padded_width(int(job.lengths[positions[0]]), self.pad_multiple, job.max_width)
            for job, positions in taken
        )
        started = time.perf_counter()
        for job, _ in taken:
            if job.started is None:
                job.started = started
        try:
            scores = self.run_batch(encodings, width)
        except BaseException as exc:  # noqa: BLE001 - handed to every caller of this run
            with self._cond:
                for job, _ in taken:
                    if job in self._pending:
                        self._pending.remove(job)
            for job, _ in taken:
                _settle(job.future, error=exc)
            if not isinstance(exc, Exception):
                raise
            return
        finished = time.perf_counter()
        if len(encodings) * width * 2 >= self.max_tokens:  # a full run: the rate work queued up drains at
            per_token = (finished - started) / max(1, self._running_tokens)
            last = self.seconds_per_token
            self.seconds_per_token = per_token if last is None else 0.8 * last + 0.2 * per_token
        self.runs += 1
        merged = len(taken) > 1
        self.merged_runs += merged
        offset = 0
        for job, positions in taken:
            n = len(positions)
            job.scores[positions] = scores[offset : offset + n]
            offset += n
            job.remaining -= n
            stats = job.stats
            job.inference_s += finished - started
            stats.inference_ms += (finished - started) * 1000
            stats.pairs += n
            stats.batches += 1
            stats.merged += merged
            if job.remaining == 0:
                stats.queue_ms += max(0.0, finished - job.submitted - job.inference_s) * 1000
                _settle(job.future, result=job.scores)
