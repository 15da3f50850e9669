"""The cross-request batcher: merges concurrent calls, never mixes up whose score is whose,
waits for company only within its bound, and drops calls whose caller left."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fakeclock import FakeClock  # tests/ is on sys.path (conftest)

from es_rerank.errors import ModelError, ModelOverloadedError
from es_rerank.reranker import OnnxReranker, ScoreStats
from es_rerank.reranker._batcher import Batcher, Job, Overloaded

# -- the batcher alone, with a fake model ------------------------------------------------


class Enc:
    """What the batcher reads of an encoding: its ids."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids


class FakeModel:
    """score = sum of ids; records every run's (rows, width) and can fail or be slow."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.runs: list[tuple[int, int]] = []
        self.fail_next = False
        self.lock = threading.Lock()

    def __call__(self, encodings, width):
        with self.lock:
            self.runs.append((len(encodings), width))
            if self.fail_next:
                self.fail_next = False
                raise ModelError("boom")
        time.sleep(self.delay)
        assert all(len(e.ids) <= width for e in encodings)
        return np.array([sum(e.ids) for e in encodings], dtype=np.float32)


def make_job(values: list[list[int]], batch_size: int = 32, max_width: int = 512) -> Job:
    return Job([Enc(v) for v in values], batch_size=batch_size, max_width=max_width, stats=ScoreStats())


def expected(values: list[list[int]]) -> np.ndarray:
    return np.array([sum(v) for v in values], dtype=np.float32)


def random_values(rng, n, lo=1, hi=60):
    return [rng.integers(0, 1000, size=int(rng.integers(lo, hi))).tolist() for _ in range(n)]


def test_jobs_get_their_own_scores_in_their_own_order():
    rng = np.random.default_rng(0)
    model = FakeModel()
    incoming = [0]
    batcher = Batcher(model, max_tokens=256, wait_s=0.05, pad_multiple=8, name="t", incoming=lambda: incoming[0])
    try:
        incoming[0] = 1  # hold the first jobs until all are in: they share runs
        jobs = [make_job(random_values(rng, int(rng.integers(1, 30)))) for _ in range(20)]
        futures = [batcher.submit(job) for job in jobs]
        incoming[0] = 0
        batcher.poke()
        for job, future in zip(jobs, futures):
            np.testing.assert_array_equal(future.result(5), expected([list(e.ids) for e in job.encodings]))
        assert batcher.merged_runs >= 1
        for rows, width in model.runs:
            assert width % 8 == 0 and (rows * width <= 256 or rows == 1)
        assert sum(job.stats.pairs for job in jobs) == sum(len(job.encodings) for job in jobs)
    finally:
        batcher.close(ModelError("closed"))


class TimedModel:
    """score = sum of ids; each run advances ``clock`` by ``per_token`` x its tokens.
    ``gate``, when set to an Event, holds each run until it is set (a run in progress)."""

    def __init__(self, clock: FakeClock, per_token: float) -> None:
        self.clock, self.per_token = clock, per_token
        self.runs: list[int] = []  # tokens of each run
        self.gate: threading.Event | None = None
        self.started = threading.Event()

    def __call__(self, encodings, width):
        tokens = sum(len(e.ids) for e in encodings)
        self.runs.append(tokens)
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        self.clock.now += self.per_token * tokens
        return np.array([sum(e.ids) for e in encodings], dtype=np.float32)


def timed_batcher(per_token: float, max_tokens: int = 256):
    clock = FakeClock()
    model = TimedModel(clock, per_token)
    return Batcher(model, max_tokens=max_tokens, wait_s=0.0, pad_multiple=8, name="t", clock=clock), model, clock


def test_a_lone_caller_is_not_held():
    model = FakeModel()
    batcher = Batcher(model, max_tokens=8192, wait_s=60.0, pad_multiple=8, name="t")  # nobody incoming
    try:
        job = make_job([[1, 2, 3]])
        batcher.submit(job).result(30)  # held for the minute's wait, it would time out here
        assert job.stats.hold_ms < 60_000
    finally:
        batcher.close(ModelError("closed"))


def test_the_hold_is_bounded_by_the_wait():
    model = FakeModel()
    # a caller is announced but never arrives: the job must not wait past the bound
    batcher = Batcher(model, max_tokens=8192, wait_s=0.05, pad_multiple=8, name="t", incoming=lambda: 1)
    try:
        job = make_job([[1, 2, 3]])
        np.testing.assert_array_equal(batcher.submit(job).result(30), [6])
        assert job.stats.hold_ms >= 40  # it did wait for the announced caller, and then went
    finally:
        batcher.close(ModelError("closed"))
    # a full budget goes at once, whatever is announced: with a minute's wait its first run still starts
    timed = TimedModel(FakeClock(), 0.0)
    batcher = Batcher(timed, max_tokens=8192, wait_s=60.0, pad_multiple=8, name="t", incoming=lambda: 1)
    try:
        big = make_job([[1] * 64] * 200)
        batcher.submit(big)
        assert timed.started.wait(30)
        assert big.stats.hold_ms < 60_000
    finally:
        batcher.close(ModelError("closed"))


def test_cancelled_jobs_are_dropped():
    batcher, model, _ = timed_batcher(per_token=0.0, max_tokens=64)
    try:
        model.gate = threading.Event()
        first = make_job([[1] * 8] * 4, batch_size=1)  # four one-row runs
        f1 = batcher.submit(first)
        assert model.started.wait(10)  # its first run is held
        second = make_job([[2] * 8] * 10, batch_size=1)
        f2 = batcher.submit(second)
        assert f2.cancel()
        model.gate.set()
        f1.result(10)
        batcher.submit(make_job([[3] * 8])).result(10)  # behind the cancelled job: it is gone by now
        assert len(model.runs) == 4 + 1  # none of the cancelled job's ten pairs ran
    finally:
        batcher.close(ModelError("closed"))


def test_an_error_reaches_the_callers_of_that_run_only():
    model = FakeModel()
    incoming = [1]
    batcher = Batcher(model, max_tokens=8192, wait_s=0.5, pad_multiple=8, name="t", incoming=lambda: incoming[0])
    try:
        model.fail_next = True
        a, b = make_job([[1]]), make_job([[2]])
        fa, fb = batcher.submit(a), batcher.submit(b)
        incoming[0] = 0
        batcher.poke()
        for f in (fa, fb):
            with pytest.raises(ModelError, match="boom"):
                f.result(5)
        np.testing.assert_array_equal(batcher.submit(make_job([[5, 5]])).result(5), [10])
    finally:
        batcher.close(ModelError("closed"))


def test_close_fails_pending_jobs():
    batcher, model, _ = timed_batcher(per_token=0.0, max_tokens=8)
    model.gate = threading.Event()
    running = batcher.submit(make_job([[1]]))
    assert model.started.wait(10)
    pending = batcher.submit(make_job([[2]]))
    batcher.close(ModelError("closed"))
    model.gate.set()
    with pytest.raises(ModelError, match="closed"):
        pending.result(5)
    running.result(5)
    with pytest.raises(RuntimeError):
        batcher.submit(make_job([[3]]))


def test_a_job_that_would_miss_its_deadline_is_refused_not_queued():
    batcher, model, clock = timed_batcher(per_token=1e-3, max_tokens=64)  # 1 ms a token, on the fake clock
    try:
        first = [[1] * 16] * 8
        assert batcher.seconds_per_token is None
        batcher.submit(make_job(first), deadline=clock() + 0.001).result(5)  # no rate yet: taken
        assert batcher.seconds_per_token == pytest.approx(1e-3)
        model.gate = threading.Event()
        model.started.clear()
        big = [[2] * 16] * 40  # 10 full runs, 0.64 s
        queued = batcher.submit(make_job(big))
        assert model.started.wait(10)
        with pytest.raises(Overloaded) as refused:
            batcher.submit(make_job([[3] * 16]), deadline=clock() + 0.05)
        assert refused.value.wait_s > 0.05 and batcher.refused == 1
        late = batcher.submit(make_job([[4] * 16]), deadline=clock() + 30)  # time enough: queued
        model.gate.set()
        np.testing.assert_array_equal(queued.result(5), expected(big))  # nothing lost
        np.testing.assert_array_equal(late.result(5), expected([[4] * 16]))
        assert sum(model.runs) == 16 * (8 + 40 + 1)  # the refused job never ran
    finally:
        batcher.close(ModelError("closed"))


SEARCH = [[1] * 64] * 4  # 256 tokens: one full run at max_tokens 256


def test_a_slow_spell_is_forgotten_within_five_searches():
    """The rate comes down from every run: after the model is fast again, within five
    searches even a search that could be refused (one with a cheaper way out) is taken."""
    batcher, model, clock = timed_batcher(per_token=0.05)  # 12.8 s a search
    try:
        for _ in range(3):  # a slow spell: each idle search is still taken, never refused
            batcher.submit(make_job(SEARCH), deadline=clock() + 9.0).result(5)
        assert batcher.seconds_per_token * 256 > 9.0  # the model looks too slow for the budget
        with pytest.raises(Overloaded):
            batcher.submit(make_job(SEARCH), deadline=clock() + 9.0, admit_idle=False)
        model.per_token = 1e-4  # fast again: 0.026 s a search
        recovered = None
        for search in range(1, 6):
            batcher.submit(make_job(SEARCH), deadline=clock() + 9.0).result(5)
            try:
                batcher.submit(make_job(SEARCH), deadline=clock() + 0.5, admit_idle=False).result(5)
            except Overloaded:
                continue
            recovered = search
            break
        assert recovered is not None, batcher.seconds_per_token
        assert batcher.refused == 1 + recovered - 1
    finally:
        batcher.close(ModelError("closed"))


def test_a_single_sequential_client_is_never_shed():
    """Nothing queued ahead: scored whatever the estimate says, through slow and fast spells."""
    batcher, model, clock = timed_batcher(per_token=0.001)
    try:
        for i in range(40):
            model.per_token = 0.2 if i % 10 < 3 else 0.001  # 51 s a search in the slow spells
            np.testing.assert_array_equal(
                batcher.submit(make_job(SEARCH), deadline=clock() + 1.0).result(5), expected(SEARCH)
            )
        assert batcher.refused == 0 and len(model.runs) == 40
    finally:
        batcher.close(ModelError("closed"))


def test_after_a_20_s_stall_the_next_idle_search_is_scored_whole():
    batcher, model, clock = timed_batcher(per_token=1e-4)
    try:
        batcher.submit(make_job(SEARCH)).result(5)
        normal = batcher.seconds_per_token
        model.per_token = 20.0 / 256  # one run stalls for 20 s
        batcher.submit(make_job(SEARCH), deadline=clock() + 9.0).result(5)
        assert batcher.seconds_per_token <= 2 * normal * 1.0001  # one stall raises it at most 2x
        model.per_token = 1e-4
        job = make_job(SEARCH)
        batcher.submit(job, deadline=clock() + 9.0, partial=True, admit_idle=False).result(5)
        assert len(job.encodings) == 4  # whole, not shrunk nor refused
    finally:
        batcher.close(ModelError("closed"))


def test_every_run_teaches_the_rate_by_its_tokens():
    batcher, model, clock = timed_batcher(per_token=1e-3)
    try:
        batcher.submit(make_job([[1] * 8])).result(5)  # a one-pair run sets the first estimate
        assert batcher.seconds_per_token == pytest.approx(1e-3)
        model.per_token = 1e-4
        batcher.submit(make_job([[1] * 8])).result(5)  # 8 of 256 tokens: a small move
        small = batcher.seconds_per_token
        assert 5e-4 < small < 1e-3
        batcher.submit(make_job(SEARCH)).result(5)  # a full run: halfway, in log space
        assert batcher.seconds_per_token == pytest.approx((small * 1e-4) ** 0.5)
    finally:
        batcher.close(ModelError("closed"))


def test_a_big_job_on_an_idle_model_is_partly_taken_when_the_caller_allows():
    """A window four times what fits: its first pairs that fit are scored, not nothing."""
    batcher, model, clock = timed_batcher(per_token=1e-3)
    try:
        batcher.submit(make_job(SEARCH)).result(5)  # rate: 1 ms a token
        values = [[i + 1] * 64 for i in range(16)]  # 1024 tokens: 1.02 s
        job = make_job(values)
        scores = batcher.submit(job, deadline=clock() + 0.3, partial=True).result(5)
        assert len(job.encodings) == 4  # 4 x 64 tokens fit in 0.3 s
        np.testing.assert_array_equal(scores, expected(values[:4]))  # the caller's first four
        assert model.runs[-1] == 256 and batcher.refused == 0
        # without partial an idle job is still taken whole: no lock-up on an estimate
        whole = make_job(values)
        batcher.submit(whole, deadline=clock() + 0.3).result(5)
        assert len(whole.encodings) == 16
    finally:
        batcher.close(ModelError("closed"))


def test_behind_a_real_queue_a_job_that_cannot_make_it_is_refused_or_shrunk():
    batcher, model, clock = timed_batcher(per_token=1e-3)
    try:
        batcher.submit(make_job(SEARCH)).result(5)  # rate: 1 ms a token
        model.gate = threading.Event()
        model.started.clear()
        running = batcher.submit(make_job(SEARCH))  # 0.256 s in progress
        assert model.started.wait(5)
        queued = batcher.submit(make_job(SEARCH * 2))  # 0.512 s more queued
        with pytest.raises(Overloaded):  # not idle: the estimate decides
            batcher.submit(make_job(SEARCH), deadline=clock() + 0.9)
        part = make_job(SEARCH)
        batcher.submit(part, deadline=clock() + 1.1, partial=True)
        assert len(part.encodings) == 2  # 0.768 s ahead: half the 0.332 s left holds two pairs of 64
        with pytest.raises(Overloaded):  # nothing fits: refused even with partial
            batcher.submit(make_job(SEARCH), deadline=clock() + 0.5, partial=True)
        model.gate.set()
        running.result(5), queued.result(5), part.future.result(5)
        assert batcher.refused == 2
    finally:
        if model.gate is not None:
            model.gate.set()
        batcher.close(ModelError("closed"))


def test_behind_a_queue_partial_jobs_share_the_room_left_instead_of_the_first_taking_it_all():
    """A steady load shrinks every window rather than refusing most searches whole."""
    batcher, model, clock = timed_batcher(per_token=1e-3)
    try:
        batcher.submit(make_job(SEARCH)).result(5)  # rate: 1 ms a token
        model.gate = threading.Event()
        model.started.clear()
        running = batcher.submit(make_job(SEARCH))  # 0.256 s in progress
        assert model.started.wait(5)
        queued = batcher.submit(make_job(SEARCH * 2))  # 0.512 s more queued
        deadline = clock() + 3.0  # half of it: 1.5 s, 0.732 s of it left behind the queue
        first, second, third = make_job(SEARCH * 3), make_job(SEARCH * 3), make_job(SEARCH * 3)
        for job in (first, second, third):
            batcher.submit(job, deadline=deadline, partial=True)
        assert len(first.encodings) == 5  # half of the 0.732 s: five pairs of 64, not all twelve
        assert len(second.encodings) == 3  # half of what is left then: three pairs
        assert len(third.encodings) == 2  # past half the deadline: two pairs while they make it, not a refusal
        model.gate.set()
        for future in (running, queued, first.future, second.future, third.future):
            future.result(5)
        assert batcher.refused == 0
    finally:
        if model.gate is not None:
            model.gate.set()
        batcher.close(ModelError("closed"))


# -- through the engine ----------------------------------------------------------------

QUERIES = [
    "vitamin d deficiency and multiple sclerosis",
    "football transfers",
    "olive oil and garlic",
    "risk factors of smoking",
    "",
    "harvest in the village",
]
TEXTS = [
    "Vitamin D deficiency raises the risk of multiple sclerosis in young adults.",
    "Football clubs spent record sums on transfers this summer.",
    "A long passage about cooking: " + "tomatoes garlic olive oil basil pasta " * 40,
    "multiple sclerosis risk factors include smoking, obesity and low vitamin d",
    "The weather was mild and the harvest good, the village said, year after year. " * 3,
    "sclerosis",
    "",
]


def _requests(seed: int, n: int):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        q = QUERIES[int(rng.integers(len(QUERIES)))]
        idx = rng.choice(len(TEXTS), size=int(rng.integers(1, len(TEXTS) + 1)), replace=False)
        out.append((q, [TEXTS[i] + (" extra" * int(rng.integers(0, 5))) for i in idx]))
    return out


@pytest.fixture(scope="module")
def merged(tiny_model_dir):
    """A model whose batcher waits long for company, so concurrent calls share runs."""
    with OnnxReranker(
        "tiny", tiny_model_dir / "model.onnx", tiny_model_dir / "tokenizer.json",
        cache_size=0, batch_wait_ms=200, max_batch_tokens=4096,
    ) as reranker:  # fmt: skip
        yield reranker


@pytest.fixture(scope="module")
def alone(tiny_model_dir):
    with OnnxReranker(
        "alone", tiny_model_dir / "model.onnx", tiny_model_dir / "tokenizer.json", cache_size=0, pad_multiple=1
    ) as reranker:
        yield reranker


def test_concurrent_ascore_calls_get_their_own_scores(merged, alone):
    requests = _requests(1, 24)
    expected_scores = [np.concatenate([alone.score(q, [p]) for p in ps]) for q, ps in requests]
    runs0, merged0 = merged.engine_info()["runs"], merged.engine_info()["merged_runs"]

    async def main():
        stats = [ScoreStats() for _ in requests]
        results = await asyncio.gather(*(merged.ascore(q, ps, stats=s) for (q, ps), s in zip(requests, stats)))
        return results, stats

    results, stats = asyncio.run(main())
    for got, want in zip(results, expected_scores):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    info = merged.engine_info()
    assert info["merged_runs"] > merged0  # pairs of different calls did share runs
    assert info["runs"] - runs0 < len(requests)
    assert sum(s.merged for s in stats) > 0
    for s in stats:
        assert s.pairs >= 1 and s.inference_ms > 0 and s.hold_ms < 2000


def test_concurrent_threads_calling_score(merged, alone):
    requests = _requests(2, 16)
    expected_scores = [np.concatenate([alone.score(q, [p]) for p in ps]) for q, ps in requests]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda r: merged.score(*r), requests))
    for got, want in zip(results, expected_scores):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_a_lone_ascore_is_not_held(tiny_model_dir):
    """A lone call pays no batching wait: with a minute's wait configured, it is answered
    (bounded by the test's own timeout, not by a wall-clock threshold)."""
    with OnnxReranker(
        "tiny", tiny_model_dir / "model.onnx", tiny_model_dir / "tokenizer.json", cache_size=0, batch_wait_ms=60_000
    ) as reranker:
        stats = ScoreStats()
        scores = asyncio.run(asyncio.wait_for(reranker.ascore(QUERIES[0], TEXTS, stats=stats), 30))
        assert scores.shape == (len(TEXTS),)
        assert stats.hold_ms < 60_000


class GatedSession:
    """The real session; each run counts itself, says it started, and waits for ``gate``
    (set: runs go through). With a ``clock``, a run also advances it by ``per_token`` x its tokens."""

    def __init__(self, inner, clock: FakeClock | None = None, per_token: float = 0.0) -> None:
        self.inner, self.clock, self.per_token = inner, clock, per_token
        self.runs = 0
        self.started = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def run(self, names, feeds, *args, **kwargs):
        self.runs += 1
        self.started.set()
        assert self.gate.wait(30)
        if self.clock is not None:
            self.clock.now += self.per_token * feeds["input_ids"].size
        return self.inner.run(names, feeds, *args, **kwargs)


def _gated(tiny_model_dir, clock=None, per_token=0.0, **options):
    sessions: list[GatedSession] = []

    def wrap(session):
        sessions.append(GatedSession(session, clock, per_token))
        return sessions[-1]

    reranker = OnnxReranker(
        "tiny", tiny_model_dir / "model.onnx", tiny_model_dir / "tokenizer.json", wrap_session=wrap,
        **({"clock": clock} if clock is not None else {}), **options,
    )  # fmt: skip
    return reranker, sessions[0]


def test_a_timed_out_call_stops_costing_model_time(tiny_model_dir):
    reranker, session = _gated(tiny_model_dir, cache_size=0, batch_size=1)
    with reranker:
        session.gate.clear()

        async def main():
            call = asyncio.ensure_future(reranker.ascore(QUERIES[0], [f"text {i}" for i in range(40)]))
            assert await asyncio.to_thread(session.started.wait, 30)  # its first run is in progress
            call.cancel()  # what a timeout does
            with pytest.raises(asyncio.CancelledError):
                await call

        asyncio.run(main())
        session.gate.set()
        # Queued behind whatever was left: when it is answered, the model is done with the rest.
        assert reranker.score(QUERIES[0], ["x", "y"]).shape == (2,)
        assert session.runs <= 2 + 2  # the run in progress (and at most one taken with it), then the two above; not 40


def test_closing_fails_waiting_callers(tiny_model_dir):
    reranker, session = _gated(tiny_model_dir, batch_size=1)
    session.gate.clear()

    async def main():
        task = asyncio.ensure_future(reranker.ascore(QUERIES[0], [f"text {i}" for i in range(20)]))
        assert await asyncio.to_thread(session.started.wait, 30)
        reranker.close()
        session.gate.set()
        with pytest.raises(ModelError):
            await task

    asyncio.run(main())


def test_a_call_the_queue_cannot_serve_in_time_is_refused_and_the_others_are_scored(tiny_model_dir):
    clock = FakeClock()
    reranker, session = _gated(
        tiny_model_dir, clock, 1e-3, cache_size=0, batch_size=4, max_batch_tokens=256, batch_wait_ms=0
    )
    with reranker:
        texts = [f"passage number {i} " + "word " * 30 for i in range(40)]
        want = np.concatenate([reranker.score(QUERIES[0], texts[i : i + 4]) for i in range(0, 40, 4)])
        assert reranker.engine_info()["seconds_per_token"] is not None  # 1 ms a token, on the fake clock
        session.gate.clear()
        session.started.clear()
        runs_before = session.runs

        async def main():
            first = asyncio.ensure_future(reranker.ascore(QUERIES[0], texts, budget_s=300))
            assert await asyncio.to_thread(session.started.wait, 30)  # running, the rest queued
            with pytest.raises(ModelOverloadedError, match="overloaded"):
                await reranker.ascore(QUERIES[1], texts, budget_s=0.1)
            session.gate.set()
            return await first

        scores = asyncio.run(main())
        np.testing.assert_allclose(scores, want, atol=1e-5, rtol=0)
        assert reranker.engine_info()["refused"] == 1
        assert session.runs - runs_before == 10  # the first call's ten runs; none of the refused one's


class ClockedSession:
    """The real session; each run advances a fake clock by ``per_token`` x its tokens."""

    def __init__(self, inner, clock: FakeClock, per_token: float) -> None:
        self.inner, self.clock, self.per_token = inner, clock, per_token

    def run(self, names, feeds, *args, **kwargs):
        self.clock.now += self.per_token * feeds["input_ids"].size
        return self.inner.run(names, feeds, *args, **kwargs)


def test_a_partial_call_scores_the_first_passages_that_fit_cache_hits_free(tiny_model_dir):
    clock = FakeClock()
    with OnnxReranker(
        "tiny", tiny_model_dir / "model.onnx", tiny_model_dir / "tokenizer.json",
        batch_size=4, max_batch_tokens=256, batch_wait_ms=0, clock=clock,
        wrap_session=lambda session: ClockedSession(session, clock, 1e-3),
    ) as reranker:  # fmt: skip
        texts = [f"passage number {i} " + "word " * 20 for i in range(12)]
        want = np.concatenate([reranker.score(QUERIES[0], [t]) for t in texts])  # rate known; all cached
        reranker.cache.clear()
        reranker.score(QUERIES[0], texts[:2])  # the first two are cached again: free
        pair_s = reranker.engine_info()["seconds_per_token"] * reranker.token_lengths(QUERIES[0], texts[:1])[0]

        async def main():
            return await reranker.ascore(QUERIES[0], texts, budget_s=2.5 * pair_s, partial=True)

        got = asyncio.run(main())
        assert 3 <= len(got) < len(texts)  # two free, then what the budget holds
        np.testing.assert_allclose(got, want[: len(got)], atol=1e-5, rtol=0)
        assert reranker.engine_info()["refused"] == 0


def test_a_partial_job_keeps_at_least_two_pairs_or_is_refused():
    """One pair reordered is no reordering: behind a queue, room for one is room for none."""
    batcher, model, clock = timed_batcher(per_token=1e-3)
    try:
        batcher.submit(make_job(SEARCH)).result(5)  # rate: 1 ms a token
        model.gate = threading.Event()
        model.started.clear()
        running = batcher.submit(make_job(SEARCH))  # 0.256 s ahead
        assert model.started.wait(5)
        with pytest.raises(Overloaded):  # room for one pair of 64 only
            batcher.submit(make_job(SEARCH), deadline=clock() + 0.256 + 0.1, partial=True)
        model.gate.set()
        running.result(5)
        idle = make_job(SEARCH)  # idle, room for none: still two, never refused
        batcher.submit(idle, deadline=clock() + 0.001, partial=True).result(5)
        assert len(idle.encodings) == 2
    finally:
        if model.gate is not None:
            model.gate.set()
        batcher.close(ModelError("closed"))
