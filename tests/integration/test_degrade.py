"""Reranking that never locks up: deadline-aware scoring through the proxy.

Real OpenSearch, the tiny real ONNX model, real HTTP on loopback. The models' time is
a fake clock per model that each run moves on by its tokens (``GatedSession``), so what
the admission sees is set by the test, not by how loaded the machine is; a gate holds a
model's runs, so "busy" is a state the test sets, not a race. No wall-clock thresholds:
waits are bounded and end on events.
"""

from __future__ import annotations

import gzip
import itertools
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from fakeclock import FakeClock  # tests/ is on sys.path (conftest)
from opensearchpy import OpenSearch
from opensearchpy.helpers import bulk

from es_rerank import create_app, settings_from_dict
from es_rerank.reranker import OnnxReranker

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
INDEX = "rd-docs"
K = 8
BUDGET = 54.0  # 90% of rerank_timeout 60: fake seconds for admission, and a real bound nobody reaches
QUERIES = ["vitamin D deficiency", "cancer cells", "protein folding", "immune response",
           "gene expression", "blood pressure", "brain development", "bacterial infection"]  # fmt: skip


class GatedSession:
    """The real session. Each run moves ``clock`` on by ``per_token`` x its padded tokens;
    while ``gate`` is clear, runs wait for it (the model is busy)."""

    def __init__(self, inner, clock: FakeClock, per_token: float) -> None:
        self.inner, self.clock, self.per_token = inner, clock, per_token
        self.runs = 0
        self.started = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def run(self, names, feeds, *args, **kwargs):
        self.runs += 1
        self.started.set()
        assert self.gate.wait(60)
        self.clock.now += self.per_token * feeds["input_ids"].size
        return self.inner.run(names, feeds, *args, **kwargs)


def _engine(name: str, model_dir: Path, per_token: float) -> tuple[OnnxReranker, GatedSession]:
    clock = FakeClock()
    sessions: list[GatedSession] = []

    def wrap(session):
        sessions.append(GatedSession(session, clock, per_token))
        return sessions[0]

    engine = OnnxReranker(
        name, model_dir / "model.onnx", model_dir / "tokenizer.json", max_length=256, batch_size=4,
        max_batch_tokens=1024, cache_size=0, batch_wait_ms=0, clock=clock, wrap_session=wrap,
    )  # fmt: skip
    return engine, sessions[0]


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def direct(opensearch_url):
    client = OpenSearch(opensearch_url, timeout=60)
    client.indices.delete(index=INDEX, ignore_unavailable=True)
    client.indices.create(index=INDEX, body={"settings": {"number_of_shards": 1, "number_of_replicas": 0}})
    with gzip.open(ROOT / "demo" / "scifact" / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in itertools.islice(f, 300)]
    bulk(
        client, ({"_index": INDEX, "_id": d["_id"], "title": d["title"], "text": d["text"]} for d in docs), refresh=True
    )
    yield client
    client.indices.delete(index=INDEX, ignore_unavailable=True)


def _settings(opensearch_url, model_dir, **index):
    return settings_from_dict(
        {
            "upstream": {"url": opensearch_url, "timeout": 30},
            "server": {"rerank_timeout": BUDGET / 0.9},
            "models": {"big": {"path": str(model_dir)}, "small": {"path": str(model_dir)}},
            "indices": [{"pattern": "rd-*", "model": "big", "window": K, "max_window": 100, **index}],
        },
        env={},
    )


def _first_stage(direct, query: str, size: int = 10) -> list[str]:
    hits = direct.search(index=INDEX, body={"query": {"match": {"text": query}}, "size": size})["hits"]["hits"]
    return [h["_id"] for h in hits]


def _search(url: str, query: str, **body) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=120) as c:
        return c.post(f"/{INDEX}/_search", json={"query": {"match": {"text": query}}, **body})


def _marks(r: httpx.Response) -> tuple[str, str, str, int]:
    return (
        r.headers["x-rerank"],
        r.headers["x-rerank-reason"],
        r.headers["x-rerank-model"],
        int(r.headers["x-rerank-window"]),
    )


class Background:
    """A search in a thread; ``done`` is set when its answer is in."""

    def __init__(self, fn, *args, **kwargs) -> None:
        self.done = threading.Event()
        self.response: httpx.Response | None = None

        def run():
            try:
                self.response = fn(*args, **kwargs)
            finally:
                self.done.set()

        threading.Thread(target=run, daemon=True).start()

    def result(self) -> httpx.Response:
        assert self.done.wait(120)
        assert self.response is not None
        return self.response


# -- one client at a time ------------------------------------------------------------------


def test_a_sequential_client_through_a_slow_spell_and_a_stall_is_never_shed(
    direct, opensearch_url, tiny_model_dir, serve_app
):
    """Slow (each window 4x the budget), then fast, then one run stalled for 20 s: every
    search of one client after another is scored (partly while the model looks slow); the
    full window is back within 5 searches of the slow spell ending, and right after the stall."""
    big, session = _engine("big", tiny_model_dir, per_token=0.0)
    small, _ = _engine("small", tiny_model_dir, per_token=0.0)
    app = create_app(_settings(opensearch_url, tiny_model_dir), rerankers={"big": big, "small": small})
    window_tokens = K * 256  # SciFact abstracts fill the 256 tokens
    with serve_app(app) as served:
        session.per_token = 4 * BUDGET / window_tokens
        slow = [_marks(_search(served.url, q)) for q in QUERIES[:3]]
        session.per_token = 0.1 * BUDGET / window_tokens
        fast = []
        for query in QUERIES[3:8]:
            fast.append(_marks(_search(served.url, query)))
            if fast[-1][:2] == ("reranked", "reranked"):
                break
        session.per_token = 20.0 / 1024  # the next run (1,024 padded tokens) takes 20 s
        stalled = _marks(_search(served.url, "warm up", ext={"rerank": {"window_size": 4}}))
        session.per_token = 0.1 * BUDGET / window_tokens
        after = _marks(_search(served.url, QUERIES[0]))
    for outcome, reason, model, window in slow:  # scored, not shed: the first hits that fit
        assert (outcome, model) == ("reranked", "big") and reason in ("reranked", "partial"), slow
        assert 1 <= window <= K
    assert any(reason == "partial" for _, reason, _, _ in slow), slow
    assert fast[-1] == ("reranked", "reranked", "big", K), fast  # recovered within 5 searches
    assert stalled[0] == "reranked"
    assert after == ("reranked", "reranked", "big", K)
    assert big.engine_info()["refused"] == 0


def test_a_big_window_on_an_idle_proxy_is_partly_scored(direct, opensearch_url, tiny_model_dir, serve_app):
    """window_size 100 where the model's rate scores about 40 in time: the first hits that fit
    are reranked, the rest follow in first-stage order."""
    big, session = _engine("big", tiny_model_dir, per_token=0.0)
    small, _ = _engine("small", tiny_model_dir, per_token=0.0)
    app = create_app(_settings(opensearch_url, tiny_model_dir), rerankers={"big": big, "small": small})
    session.per_token = BUDGET / (40 * 256)
    query = QUERIES[1]
    with serve_app(app) as served:
        assert _marks(_search(served.url, "warm up"))[0] == "reranked"  # the rate is known after it
        r = _search(served.url, query, size=100, ext={"rerank": {"window_size": 100}})
    outcome, reason, model, window = _marks(r)
    assert (outcome, reason, model) == ("reranked", "partial", "big")
    assert 10 <= window < 100
    ids = [h["_id"] for h in r.json()["hits"]["hits"]]
    first = _first_stage(direct, query, 100)
    assert sorted(ids[:window]) == sorted(first[:window])  # the scored hits, in model order
    assert ids[window:] == first[window:]  # the rest as OpenSearch ranked them
    assert all("_rerank" in h for h in r.json()["hits"]["hits"][:window])


# -- concurrent searches on a slow model ---------------------------------------------------------


@pytest.fixture
def busy(direct, opensearch_url, tiny_model_dir, serve_app):
    """A proxy whose model 'big' takes 0.6 of the budget for a window and whose fallback
    'small' 0.55; both rates known; both gates open."""
    big, big_session = _engine("big", tiny_model_dir, per_token=0.0)
    small, small_session = _engine("small", tiny_model_dir, per_token=0.0)
    settings = _settings(opensearch_url, tiny_model_dir, fallback_model="small")
    app = create_app(settings, rerankers={"big": big, "small": small})
    big_session.per_token = 0.6 * BUDGET / (K * 256)
    small_session.per_token = 0.55 * BUDGET / (K * 256)
    with serve_app(app) as served:
        assert _marks(_search(served.url, "warm up")) == ("reranked", "reranked", "big", K)
        # 'small' learns its rate from a search that names it
        assert _marks(_search(served.url, "warm up", ext={"rerank": {"model": "small"}}))[:3] == (
            "reranked",
            "reranked",
            "small",
        )
        yield served, (big, big_session), (small, small_session)
        big_session.gate.set()
        small_session.gate.set()


def _occupy(served, engine, session, query: str) -> Background:
    """A search admitted on ``engine`` whose run is held at the gate (the model is busy)."""
    before = engine.queue_wait_s() or 0.0
    session.started.clear()
    session.gate.clear()
    search = Background(_search, served.url, query)
    wait_until(lambda: search.done.is_set() or (session.started.is_set() and (engine.queue_wait_s() or 0) > before))
    assert not search.done.is_set(), _marks(search.result())
    return search


def _fill(served, big, big_session, small, small_session):
    """'big' busy, then 'small' busy, then searches queued on 'small' until one is refused."""
    a = _occupy(served, big, big_session, QUERIES[0])  # big: 0.6 of the budget queued
    b = _occupy(served, small, small_session, QUERIES[1])  # big cannot make it: the fallback model
    later: list[tuple[str, Background]] = []
    for query in QUERIES[2:8]:  # small's queue fills: partial windows, then nothing fits
        before = small.queue_wait_s()
        search = Background(_search, served.url, query)
        wait_until(lambda search=search, before=before: search.done.is_set() or small.queue_wait_s() > before)
        if search.done.is_set():
            return a, b, later, (query, search.result())
        later.append((query, search))
    raise AssertionError("small's queue never filled")


def test_concurrent_searches_degrade_to_the_fallback_model_then_partial_then_first_stage(busy, direct):
    served, (big, big_session), (small, small_session) = busy
    a, b, later, (query, refused) = _fill(served, big, big_session, small, small_session)
    big_session.gate.set()
    small_session.gate.set()

    assert _marks(a.result()) == ("reranked", "reranked", "big", K)
    assert _marks(b.result()) == ("reranked", "fallback_model", "small", K)
    assert later
    for later_query, search in later:
        outcome, reason, model, window = _marks(search.result())
        assert (outcome, reason, model) == ("reranked", "partial", "small") and 1 <= window < K
        ids = [h["_id"] for h in search.result().json()["hits"]["hits"]]
        assert ids[window:] == _first_stage(direct, later_query)[window:]  # the rest in first-stage order
    assert _marks(refused)[:2] == ("fallback", "overloaded")
    assert [h["_id"] for h in refused.json()["hits"]["hits"]] == _first_stage(direct, query)
    metrics = httpx.get(f"{served.url}/_rerank/metrics").text
    for model, outcome, reason in [("big", "reranked", "reranked"), ("small", "reranked", "fallback_model"),
                                   ("small", "reranked", "partial"), ("big", "fallback", "overloaded")]:  # fmt: skip
        assert (
            f'es_rerank_rerank_outcomes_total{{index="rd-*",model="{model}",outcome="{outcome}",reason="{reason}"}}'
            in metrics
        )


def _msearch(url: str, queries: list[str]) -> httpx.Response:
    lines = []
    for query in queries:
        lines += [{"index": INDEX}, {"query": {"match": {"text": query}}}]
    with httpx.Client(base_url=url, timeout=120) as c:
        return c.post(
            "/_msearch",
            content="".join(json.dumps(x) + "\n" for x in lines),
            headers={"content-type": "application/x-ndjson"},
        )


def _counter(served, model: str, outcome: str, reason: str) -> float:
    """es_rerank_rerank_outcomes_total for the index, ``model``, ``outcome`` and ``reason`` (0 when absent)."""
    series = f'es_rerank_rerank_outcomes_total{{index="rd-*",model="{model}",outcome="{outcome}",reason="{reason}"}} '
    for line in httpx.get(f"{served.url}/_rerank/metrics").text.splitlines():
        if line.startswith(series):
            return float(line.split()[-1])
    return 0.0


def test_msearch_items_report_the_same_outcomes(busy, direct):
    served, (big, big_session), (small, small_session) = busy
    r = _msearch(served.url, QUERIES[:2])  # idle: both reranked (one may go to the fallback model)
    assert (r.headers["x-rerank"], r.headers["x-rerank-items"]) == ("reranked", "2/2")
    assert r.headers["x-rerank-item-outcomes"] == "reranked=2,fallback=0,skipped=0,error=0"

    by_small = _counter(served, "small", "reranked", "fallback_model")
    a = _occupy(served, big, big_session, QUERIES[2])
    r = _msearch(served.url, [QUERIES[3]])  # big busy, small idle: scored by the fallback model
    assert r.headers["x-rerank-item-outcomes"] == "reranked=1,fallback=0,skipped=0,error=0"
    assert _counter(served, "small", "reranked", "fallback_model") == by_small + 1
    big_session.gate.set()
    a.result()

    a, b, later, (query, _) = _fill(served, big, big_session, small, small_session)
    # Both models busy past the budget: items answered at once in first-stage order, marked fallback.
    r = _msearch(served.url, [query, query])
    assert (r.headers["x-rerank"], r.headers["x-rerank-items"]) == ("fallback", "0/2"), dict(r.headers)
    assert r.headers["x-rerank-item-outcomes"] == "reranked=0,fallback=2,skipped=0,error=0"
    for item in r.json()["responses"]:
        assert [h["_id"] for h in item["hits"]["hits"]] == _first_stage(direct, query)
    big_session.gate.set()
    small_session.gate.set()
    for search in [a, b, *(s for _, s in later)]:
        assert search.result().headers["x-rerank"] == "reranked"
