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

A job may come with a deadline. The batcher keeps the model's time per token, an
exponentially weighted average over every run, each run weighted by its tokens (a run
that fills the budget moves it halfway to what it measured, a one-pair run a little):
a slow spell is forgotten within a few runs of it ending. Rises are damped (at most 2x
a full run), so one stalled run does not make the model look slow for long. A job that
the work queued ahead of it and its own tokens would take past its deadline at that
rate is refused (:class:`Overloaded`) rather than queued, so its caller can answer at
once instead of after waiting out its deadline; or, with ``partial``, only the first of
its pairs that fit are queued. A job with nothing queued or running ahead of it is never
refused on the estimate (unless its caller has a cheaper way out, ``admit_idle=False``):
the estimate is only ever corrected by runs, and a model that no search reaches could
never show it is fast again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError

import numpy as np

from ..errors import ModelOptionError
from ._stats import ScoreStats
from ._tokenize import Encoded, padded_width

__all__ = ["Job", "Batcher", "Overloaded"]

logger = logging.getLogger("es_rerank.reranker")

# (encodings of one run, padded width) -> one float32 score per encoding
RunBatch = Callable[[Sequence[Encoded], int], np.ndarray]

# A run that fills the token budget moves the rate estimate this share of the way
# (in log space) to what it measured; smaller runs move it less, by their tokens.
RATE_STEP = 0.5
# The most one full run can raise the estimate: a single stalled run (a pause of the
# host, a noisy neighbour) must not make the model look slow for many runs after it.
RATE_RISE = 2.0
# The fewest pairs a partial job keeps: one pair reordered is no reordering, only model time spent.
MIN_PARTIAL = 2


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

    def __init__(self, encodings: Sequence[Encoded], *, batch_size: int, max_width: int, stats: ScoreStats) -> None:
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

    def prefix_fitting(self, tokens: int) -> int:
        """How many of the first encodings (the caller's order) hold at most ``tokens``."""
        return int(np.searchsorted(np.cumsum(self.lengths), tokens, side="right"))

    def keep_first(self, n: int) -> None:
        """Score only the first ``n`` encodings (before it is queued)."""
        self.encodings = self.encodings[:n]
        self.lengths = self.lengths[:n]
        self.order = np.argsort(-self.lengths, kind="stable")
        self.remaining = n
        self.scores = self.scores[:n]


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
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if max_tokens < 1:
            raise ModelOptionError(f"max_tokens must be at least 1, got {max_tokens}")
        if wait_s < 0:
            raise ModelOptionError(f"wait must be 0 or more, got {wait_s}")
        self.run_batch = run_batch
        self.max_tokens = max_tokens
        self.wait_s = wait_s
        self.pad_multiple = pad_multiple
        self.incoming = incoming
        # Deadlines and the rate are read off this clock (tests pass a fake one).
        self.clock = clock
        self.runs = 0  # model runs so far
        self.merged_runs = 0  # runs that carried pairs of more than one job
        self.refused = 0  # jobs refused: they would have finished past their deadline
        # seconds a token, averaged over runs weighted by their tokens; None until one ran
        self.seconds_per_token: float | None = None
        self._running_tokens = 0
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"rerank-{name}", daemon=True)
        self._thread.start()

    # -- callers ---------------------------------------------------------------------

    def submit(
        self, job: Job, deadline: float | None = None, *, partial: bool = False, admit_idle: bool = True
    ) -> Future:
        """Queue ``job``; its future gets the scores in the order of its encodings.

        With a ``deadline`` (a ``clock()`` value), a job the model would finish past it
        is refused with :class:`Overloaded` instead; with ``partial`` only its first
        encodings that fit are kept (``len(job.encodings)`` says how many, at least
        ``MIN_PARTIAL``). With nothing queued or running ahead, a job is taken whatever the
        estimate (with ``partial``, what fits, at least ``MIN_PARTIAL``) unless ``admit_idle`` is False.
        """
        with self._cond:
            if self._closed:
                raise RuntimeError("batcher is closed")
            now = self.clock()
            if deadline is not None and self.seconds_per_token is not None:
                ahead = self._queued_tokens()
                left = deadline - now
                wait = (ahead + job.tokens()) * self.seconds_per_token
                room = max(0.0, left / self.seconds_per_token - ahead)  # tokens that still make the deadline
                least = min(MIN_PARTIAL, len(job.encodings))
                if partial and ahead > 0:
                    # Behind a queue a partial job is sized to keep the queue within half the
                    # deadline (it takes half of what is left of that half; two pairs while they
                    # make the deadline): a steady load shrinks every window, to about rate x
                    # deadline / 2(searches + 1), instead of refusing searches whole, and the other
                    # half absorbs errors in the estimate.
                    if job.prefix_fitting(int(room)) < least:
                        self.refused += 1
                        raise Overloaded(wait, left)
                    share = max(0.0, left / 2 / self.seconds_per_token - ahead) / 2
                    keep = max(job.prefix_fitting(int(share)), least)
                    if keep < len(job.encodings):
                        job.keep_first(keep)
                elif job.tokens() > room:
                    fits = job.prefix_fitting(int(room))
                    idle = ahead == 0 and admit_idle
                    if partial and (fits >= least or idle):
                        job.keep_first(max(fits, least))
                    elif not idle:
                        self.refused += 1
                        raise Overloaded(wait, left)
            job.submitted = time.perf_counter()
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
        return (self._queued_tokens() + tokens) * self.seconds_per_token

    def _queued_tokens(self) -> int:
        """Tokens of the run in progress and of the pending jobs (lock held). A cancelled job
        (its caller left, or was superseded) is not counted: it leaves before the next run."""
        return self._running_tokens + sum(job.pending_tokens() for job in self._pending if not job.future.cancelled())

    def _learn(self, seconds: float, tokens: int) -> None:
        """Move the rate toward one run's measure, by the share of the budget it filled (lock held)."""
        if tokens <= 0 or seconds <= 0:
            return
        measured = seconds / tokens
        last = self.seconds_per_token
        if last is None:
            self.seconds_per_token = measured
            return
        step = 1.0 - (1.0 - RATE_STEP) ** min(1.0, tokens / self.max_tokens)
        shift = min(math.log(measured / last), math.log(RATE_RISE) / RATE_STEP)
        self.seconds_per_token = last * math.exp(step * shift)

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

    def _run(self, taken: list[tuple[Job, np.ndarray]]) -> None:
        encodings = [job.encodings[p] for job, positions in taken for p in positions]
        width = max(
            padded_width(int(job.lengths[positions[0]]), self.pad_multiple, job.max_width) for job, positions in taken
        )
        started = time.perf_counter()
        clock_started = self.clock()
        for job, _ in taken:
            if job.started is None:
                job.started = started
        try:
            scores = self.run_batch(encodings, width)
        except BaseException as exc:  # noqa: BLE001 - handed to every caller of this run
            with self._cond:
                self._running_tokens = 0
                for job, _ in taken:
                    if job in self._pending:
                        self._pending.remove(job)
            for job, _ in taken:
                _settle(job.future, error=exc)
            if not isinstance(exc, Exception):
                raise
            return
        finished = time.perf_counter()
        with self._cond:
            # Every run teaches the rate; and the run is over before its callers hear of it,
            # so a caller that submits again at once finds the model idle, not busy with itself.
            self._learn(self.clock() - clock_started, self._running_tokens)
            self._running_tokens = 0
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
