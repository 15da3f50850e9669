"""Search-as-you-type through the proxy: real OpenSearch, the tiny ONNX model behind a gate.

The gate holds every model call until the test opens it, so "queued behind the model"
is a state the test sets up, not a race: each wait is on an event. A browser's newer
search supersedes its older one (first-stage order, reason ``superseded``), another
client's search is untouched, and an ``_msearch`` whose client leaves stops scoring
every one of its items.
"""

from __future__ import annotations

import json
import queue
import socket
import threading

import httpx
import pytest
from opensearchpy import OpenSearch
from rawhttp import request

from es_rerank import create_app, settings_from_dict
from es_rerank.app import load_rerankers

pytestmark = pytest.mark.integration

INDEX = "rr-typing"
PAGE = "http://page.example"
WAIT_S = 60  # an upper bound on events that come in milliseconds, never a measure


class Gate:
    """Wraps a reranker: each call says it arrived (its query) and waits for ``open``."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.open = threading.Event()
        self.arrived: queue.Queue[str] = queue.Queue()
        self.cancelled: queue.Queue[str] = queue.Queue()

    async def ascore(self, query, passages, **kwargs):
        import asyncio

        self.arrived.put(query)
        try:
            while not self.open.is_set():
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.cancelled.put(query)
            raise
        return await self.inner.ascore(query, passages, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def docs(opensearch_url):
    client = OpenSearch(opensearch_url, timeout=60)
    client.indices.delete(index=INDEX, ignore_unavailable=True)
    client.indices.create(index=INDEX, body={"settings": {"number_of_shards": 1, "number_of_replicas": 0}})
    for i, text in enumerate(["alpha beta", "alpha gamma", "alpha delta beta", "beta alpha alpha", "alpha"]):
        client.index(index=INDEX, id=str(i), body={"title": f"doc {i}", "text": text})
    client.indices.refresh(index=INDEX)
    yield client
    client.indices.delete(index=INDEX, ignore_unavailable=True)


@pytest.fixture()
def proxy(docs, opensearch_url, tiny_model_dir, serve_app):
    settings = settings_from_dict(
        {
            "upstream": {"url": opensearch_url},
            "models": {"tiny": {"path": str(tiny_model_dir)}},
            "indices": [{"pattern": INDEX, "model": "tiny", "fields": ["title", "text"], "window": 5}],
        },
        env={},
    )
    gate = Gate(load_rerankers(settings)["tiny"])
    with serve_app(create_app(settings, rerankers={"tiny": gate})) as served:
        served.gate = gate
        yield served
        gate.open.set()


def _search(url: str, text: str, origin: str = PAGE, results: dict | None = None, path: str = "_search"):
    body = json.dumps({"query": {"match": {"text": text}}})
    headers = {"Content-Type": "application/json", "Origin": origin}
    if path == "_msearch":
        body = f"{{}}\n{body}\n{{}}\n{json.dumps({'query': {'match': {'title': text}}})}\n"
        headers["Content-Type"] = "application/x-ndjson"
    answer = httpx.post(f"{url}/{INDEX}/{path}", content=body, headers=headers, timeout=WAIT_S)
    if results is not None:
        results[text] = answer
    return answer


def _in_thread(*args, **kwargs) -> tuple[threading.Thread, dict]:
    results: dict = {}
    thread = threading.Thread(target=_search, args=args, kwargs={**kwargs, "results": results}, daemon=True)
    thread.start()
    return thread, results


def test_a_newer_search_of_the_same_page_supersedes_the_queued_one(proxy):
    gate = proxy.gate
    older, older_result = _in_thread(proxy.url, "alpha")
    assert gate.arrived.get(timeout=WAIT_S) == "alpha"  # queued behind the (closed) model
    other, other_result = _in_thread(proxy.url, "gamma", origin="http://other.example")
    assert gate.arrived.get(timeout=WAIT_S) == "gamma"
    newer, newer_result = _in_thread(proxy.url, "alpha beta")
    older.join(WAIT_S)
    answer = older_result["alpha"]
    assert answer.status_code == 200
    assert (answer.headers["x-rerank"], answer.headers["x-rerank-reason"]) == ("fallback", "superseded")
    direct = proxy_direct_ids(proxy, "alpha")
    assert [h["_id"] for h in answer.json()["hits"]["hits"]] == direct  # first-stage order
    assert gate.cancelled.get(timeout=WAIT_S) == "alpha"
    assert gate.arrived.get(timeout=WAIT_S) == "alpha beta"
    gate.open.set()
    newer.join(WAIT_S)
    other.join(WAIT_S)
    assert newer_result["alpha beta"].headers["x-rerank"] == "reranked"
    assert other_result["gamma"].headers["x-rerank"] == "reranked"  # another client: untouched


def proxy_direct_ids(proxy, text: str) -> list[str]:
    plain = httpx.post(
        f"{proxy.url}/{INDEX}/_search", json={"query": {"match": {"text": text}}}, headers={"x-rerank-enabled": "false"}
    )
    assert plain.headers["x-rerank"] == "skipped"
    return [h["_id"] for h in plain.json()["hits"]["hits"]]


def test_a_newer_msearch_supersedes_every_item_of_the_older(proxy):
    gate = proxy.gate
    older, older_result = _in_thread(proxy.url, "alpha", path="_msearch")
    assert {gate.arrived.get(timeout=WAIT_S), gate.arrived.get(timeout=WAIT_S)} == {"alpha"}
    newer, newer_result = _in_thread(proxy.url, "beta", path="_msearch")
    older.join(WAIT_S)
    answer = older_result["alpha"]
    assert answer.headers["x-rerank"] == "fallback"
    assert "fallback=2" in answer.headers["x-rerank-item-outcomes"]
    assert [r["status"] for r in answer.json()["responses"]] == [200, 200]
    assert gate.arrived.get(timeout=WAIT_S) == "beta"
    gate.open.set()
    newer.join(WAIT_S)
    assert newer_result["beta"].headers["x-rerank-items"] == "2/2"


def test_an_msearch_whose_client_leaves_stops_scoring_every_item(proxy):
    gate = proxy.gate
    body = (
        b'{}\n{"query": {"match": {"text": "alpha"}}}\n'
        b'{}\n{"query": {"match": {"title": "doc"}}}\n'
        b'{}\n{"query": {"match": {"text": "beta"}}}\n'
    )
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.sendall(request("POST", f"/{INDEX}/_msearch", body, {"Content-Type": "application/x-ndjson"}))
    arrived = {gate.arrived.get(timeout=WAIT_S) for _ in range(3)}
    assert arrived == {"alpha", "doc", "beta"}
    sock.close()
    cancelled = {gate.cancelled.get(timeout=WAIT_S) for _ in range(3)}
    assert cancelled == {"alpha", "doc", "beta"}


@pytest.fixture()
def proxy_in_experiment(docs, opensearch_url, tiny_model_dir, serve_app):
    settings = settings_from_dict(
        {
            "upstream": {"url": opensearch_url},
            "models": {"tiny": {"path": str(tiny_model_dir)}},
            "indices": [{"pattern": INDEX, "model": "tiny", "fields": ["title", "text"], "window": 5}],
            "experiments": [
                {
                    "name": "typing", "indices": [INDEX], "mode": "ab", "salt": "s",
                    "arms": [{"name": "rr", "kind": "rerank", "weight": 100}, {"name": "b", "kind": "bm25", "weight": 0}],
                }
            ],
        },
        env={},
    )  # fmt: skip
    gate = Gate(load_rerankers(settings)["tiny"])
    with serve_app(create_app(settings, rerankers={"tiny": gate})) as served:
        served.gate = gate
        yield served
        gate.open.set()


def test_a_search_in_an_experiment_is_superseded_by_the_users_next(proxy_in_experiment):
    """The user's key (ext.ubi.client_id) is the experiment's and supersession's: no Origin needed."""
    proxy, gate = proxy_in_experiment, proxy_in_experiment.gate
    results: dict = {}

    def search(text: str) -> None:
        body = {"query": {"match": {"text": text}}, "ext": {"ubi": {"client_id": "user-1"}}}
        results[text] = httpx.post(f"{proxy.url}/{INDEX}/_search", json=body, timeout=WAIT_S)

    older = threading.Thread(target=search, args=("alpha",), daemon=True)
    older.start()
    assert gate.arrived.get(timeout=WAIT_S) == "alpha"
    newer = threading.Thread(target=search, args=("alpha beta",), daemon=True)
    newer.start()
    older.join(WAIT_S)
    answer = results["alpha"]
    assert (answer.headers["x-rerank"], answer.headers["x-rerank-reason"]) == ("fallback", "superseded")
    assert answer.headers["x-rerank-arm"] == "rr"  # served (and recorded) as its arm, first-stage order
    assert gate.arrived.get(timeout=WAIT_S) == "alpha beta"
    gate.open.set()
    newer.join(WAIT_S)
    assert results["alpha beta"].headers["x-rerank"] == "reranked"
