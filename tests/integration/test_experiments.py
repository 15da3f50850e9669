"""Experiments end to end: real OpenSearch, real ONNX Runtime (the tiny model), real
HTTP on loopback. What ubi_queries records is what the client received, for _search
and _msearch, A/B and interleaved, page by page; recording never fails a search."""

from __future__ import annotations

import gzip
import itertools
import json
import time
from pathlib import Path

import httpx
import pytest
from opensearchpy import OpenSearch
from opensearchpy.helpers import bulk

from es_rerank import create_app, settings_from_dict

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
INDEX = "abx-data"
QUERIES, EVENTS = "t-abx-ubi-queries", "t-abx-ubi-events"
TEXTS = [
    "vitamin D deficiency risk",
    "cancer cells immune response",
    "protein folding disease",
    "blood pressure treatment",
]


@pytest.fixture(scope="module")
def direct(opensearch_url):
    client = OpenSearch(opensearch_url, timeout=60)
    for name in (INDEX, QUERIES, EVENTS):
        client.indices.delete(index=name, ignore_unavailable=True)
    client.indices.create(index=INDEX, body={"settings": {"number_of_shards": 1, "number_of_replicas": 0}})
    with gzip.open(ROOT / "demo" / "scifact" / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in itertools.islice(f, 300)]
    bulk(
        client, ({"_index": INDEX, "_id": d["_id"], "title": d["title"], "text": d["text"]} for d in docs), refresh=True
    )
    client.indices.update_aliases(
        body={"actions": [{"add": {"index": INDEX, "alias": "abx-ab"}}, {"add": {"index": INDEX, "alias": "abx-il"}}]}
    )
    yield client
    for name in (INDEX, QUERIES, EVENTS):
        client.indices.delete(index=name, ignore_unavailable=True)


def _settings(opensearch_url, tiny_model_dir):
    return settings_from_dict(
        {
            "upstream": {"url": opensearch_url, "timeout": 20},
            "models": {"tiny": {"path": str(tiny_model_dir), "max_length": 128}},
            "indices": [{"pattern": "abx-*", "model": "tiny", "window": 20}],
            "experiments": [
                {
                    "name": "ab1",
                    "indices": ["abx-ab"],
                    "mode": "ab",
                    "salt": "t1",
                    "keys": ["ubi.client_id", "header:x-user-id"],
                    "arms": [{"name": "bm25", "kind": "bm25"}, {"name": "rr", "kind": "rerank", "window": 15}],
                },
                {
                    "name": "il1",
                    "indices": ["abx-il"],
                    "mode": "interleave",
                    "salt": "t2",
                    "arms": [{"name": "bm25", "kind": "bm25"}, {"name": "rr", "kind": "rerank"}],
                },
            ],
            "ubi": {"queries_index": QUERIES, "events_index": EVENTS, "flush_interval_ms": 20},
        },
        env={},
    )


@pytest.fixture(scope="module")
def settings(opensearch_url, tiny_model_dir):
    return _settings(opensearch_url, tiny_model_dir)


@pytest.fixture(scope="module")
def proxy(direct, settings, serve_app):
    with serve_app(create_app(settings)) as served:
        yield served


@pytest.fixture(scope="module")
def via(proxy):
    with httpx.Client(base_url=proxy.url, timeout=60) as client:
        yield client


def _metric(via: httpx.Client, outcome: str, index: str = QUERIES) -> float:
    text = via.get("/_rerank/metrics").text
    for line in text.splitlines():
        if (
            line.startswith("es_rerank_ubi_documents_total{")
            and f'index="{index}"' in line
            and f'outcome="{outcome}"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait_metric(via, outcome: str, at_least: float, index: str = QUERIES) -> float:
    """Wait (bounded) until the recorder has counted ``at_least`` documents as ``outcome``."""
    deadline = time.monotonic() + 120
    while (value := _metric(via, outcome, index)) < at_least:
        assert time.monotonic() < deadline, f"{outcome}: {value} < {at_least}"
        time.sleep(0.05)
    return value


def _recorded(direct: OpenSearch) -> dict[tuple[str, int], dict]:
    direct.indices.refresh(index=QUERIES)
    hits = direct.search(index=QUERIES, body={"size": 1000, "query": {"match_all": {}}})["hits"]["hits"]
    return {(h["_source"]["query_id"], int(h["_source"]["query_attributes"]["from"])): h["_source"] for h in hits}


def _wait_recorded(direct: OpenSearch, keys) -> dict[tuple[str, int], dict]:
    """The recorded pages once every one of ``keys`` (query id, from) is there (bounded wait:
    the recorder writes in the background)."""
    deadline = time.monotonic() + 120
    while True:
        recorded = _recorded(direct) if direct.indices.exists(index=QUERIES) else {}
        missing = [k for k in keys if k not in recorded]
        if not missing:
            return recorded
        assert time.monotonic() < deadline, f"not recorded: {missing[:5]}"
        time.sleep(0.05)


def _search(via, alias, text, *, user, query_id=None, from_=0, size=5, headers=None):
    ubi = {"client_id": user, "user_query": text}
    if query_id:
        ubi["query_id"] = query_id
    body = {"query": {"match": {"text": text}}, "from": from_, "size": size, "ext": {"ubi": ubi}}
    r = via.post(f"/{alias}/_search", json=body, headers=headers or {})
    assert r.status_code == 200, r.text
    return r


def test_search_recorded_as_served_both_modes_across_pages(direct, via):
    served: dict[tuple[str, int], list[str]] = {}
    arms = set()
    for alias, user, text in itertools.product(("abx-ab", "abx-il"), ("u1", "u2", "u3", "u4"), TEXTS[:2]):
        qid = f"{alias}-{user}-{text}"
        for from_ in (0, 5, 10):
            r = _search(via, alias, text, user=user, query_id=qid, from_=from_)
            body = r.json()
            assert r.headers["x-rerank-query-id"] == qid and body["ext"]["ubi"] == {"query_id": qid}
            arms.add((alias, r.headers["x-rerank-arm"]))
            assert all(
                "_rerank" not in h or alias != "abx-ab" or r.headers["x-rerank-arm"] == "rr"
                for h in body["hits"]["hits"]
            )
            served[(qid, from_)] = [h["_id"] for h in body["hits"]["hits"]]
    recorded = _wait_recorded(direct, list(served))
    for key, ids in served.items():
        doc = recorded[key]
        assert doc["query_response_object_ids"] == ids, key
        attrs = doc["query_attributes"]
        if key[0].startswith("abx-il"):
            assert attrs["arm"] == "interleaved" and len(attrs["teams"]) == len(ids)
            assert set(attrs["teams"]) <= {"bm25", "rr"}
        else:
            assert attrs["arm"] in ("bm25", "rr") and "teams" not in attrs
            assert int(attrs["window"]) == (15 if attrs["arm"] == "rr" else 20)
    assert {a for _, a in arms if True} >= {"bm25", "rr", "interleaved"}


def test_interleaved_pages_are_one_list_without_a_query_id(via):
    text = TEXTS[2]
    whole = _search(via, "abx-il", text, user="pager", size=15).json()["hits"]["hits"]
    pages = [_search(via, "abx-il", text, user="pager", from_=f, size=5).json()["hits"]["hits"] for f in (0, 5, 10)]
    assert [h["_id"] for p in pages for h in p] == [h["_id"] for h in whole]


def test_msearch_items_recorded_as_served(direct, via):
    lines, qids = [], []
    for i, (alias, text) in enumerate(itertools.product(("abx-ab", "abx-il"), TEXTS)):
        qid = f"ms-{i}"
        qids.append(qid)
        lines += [
            {"index": alias},
            {
                "query": {"match": {"text": text}},
                "from": 3 * (i % 2),
                "size": 4,
                "ext": {"ubi": {"client_id": f"m{i}", "query_id": qid}},
            },
        ]
    lines += [{"index": INDEX}, {"query": {"match": {"text": "cell"}}, "size": 3}]  # in no experiment
    payload = "".join(json.dumps(x) + "\n" for x in lines)
    r = via.post("/_msearch", content=payload, headers={"content-type": "application/x-ndjson"})
    assert r.status_code == 200, r.text
    responses = r.json()["responses"]
    assert r.headers["x-rerank-query-id"].split(",") == [*qids, "-"]
    assert r.headers["x-rerank-arm"].split(",")[-1] == "-"
    assert "ext" not in responses[-1]
    recorded = _wait_recorded(direct, [(qid, 3 * (i % 2)) for i, qid in enumerate(qids)])
    for i, qid in enumerate(qids):
        assert responses[i]["ext"]["ubi"]["query_id"] == qid
        assert recorded[(qid, 3 * (i % 2))]["query_response_object_ids"] == [
            h["_id"] for h in responses[i]["hits"]["hits"]
        ]


def test_forced_arm_header_and_bad_ubi(via):
    r = _search(via, "abx-ab", TEXTS[0], user="qa", headers={"x-rerank-arm": "bm25"})
    assert r.headers["x-rerank-arm"] == "bm25" and r.headers["x-rerank-reason"] == "experiment_bm25"
    r = via.post("/abx-ab/_search", json={"query": {"match": {"text": "x"}}, "ext": {"ubi": {"client_id": 3}}})
    assert r.status_code == 400 and "ext.ubi.client_id" in r.json()["error"]["reason"]


def test_assignment_same_on_two_proxies_and_after_a_restart(
    direct, settings, serve_app, opensearch_url, tiny_model_dir
):
    users = [f"user-{i}" for i in range(24)]

    def arms(url):
        with httpx.Client(base_url=url, timeout=60) as c:
            return [
                c.post(
                    "/abx-ab/_search", json={"query": {"match": {"text": "cell"}}, "size": 2}, headers={"x-user-id": u}
                ).headers["x-rerank-arm"]
                for u in users
            ]

    with (
        serve_app(create_app(settings)) as one,
        serve_app(create_app(_settings(opensearch_url, tiny_model_dir))) as two,
    ):
        first, second = arms(one.url), arms(two.url)
    with serve_app(create_app(_settings(opensearch_url, tiny_model_dir))) as restarted:
        third = arms(restarted.url)
    assert first == second == third and set(first) == {"bm25", "rr"}


def test_unwritable_ubi_index_drops_counted_and_recording_resumes(direct, via):
    _search(via, "abx-ab", TEXTS[0], user="w0")
    _wait_metric(via, "written", 1)
    direct.indices.put_settings(index=QUERIES, body={"index.blocks.read_only": True})
    try:
        refused = _metric(via, "refused")
        for i in range(5):
            assert _search(via, "abx-ab", TEXTS[1], user=f"w{i}").status_code == 200  # still answered
        _wait_metric(via, "refused", refused + 5)
    finally:
        direct.indices.put_settings(index=QUERIES, body={"index.blocks.read_only": None})
    r = _search(via, "abx-ab", TEXTS[1], user="after", query_id="after-block")
    assert _wait_recorded(direct, [("after-block", 0)])[("after-block", 0)]["query_response_object_ids"] == [
        h["_id"] for h in r.json()["hits"]["hits"]
    ]


def test_events_endpoint_good_and_bad_batches(direct, via):
    click = {
        "action_name": "click",
        "query_id": "q1",
        "client_id": "u1",
        "event_attributes": {"object": {"object_id": "d1"}, "position": {"ordinal": 1}},
    }
    r = via.post(
        "/_rerank/ubi/events?refresh=true",
        content=json.dumps(click) + "\n" + json.dumps({**click, "query_id": "q2"}) + "\n",
        headers={"content-type": "application/x-ndjson"},
    )
    assert r.status_code == 200 and r.json() == {"acknowledged": True, "written": 2}
    count = direct.count(index=EVENTS)["count"]
    r = via.post("/_rerank/ubi/events?refresh=true", json=[click, {**click, "action_name": None}])
    assert r.status_code == 400
    error = r.json()
    assert error["status"] == 400 and error["error"]["type"] == "ubi_event_parse_exception"
    assert "event 1: [action_name] is required" in error["error"]["reason"]
    direct.indices.refresh(index=EVENTS)
    assert direct.count(index=EVENTS)["count"] == count  # nothing of the bad batch
    assert via.get("/_rerank/ubi/events").status_code == 405


class Forwarder:
    """A TCP forwarder to OpenSearch on a fixed loopback port that can be taken down and
    brought back: the node, briefly down, as the recorder's connections see it."""

    def __init__(self, target_url: str) -> None:
        import socket as _socket
        from urllib.parse import urlsplit

        parts = urlsplit(target_url)
        self.target = (parts.hostname, parts.port)
        with _socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.listener = None
        self.conns: list = []

    def up(self) -> None:
        import socket as _socket
        import threading

        self.listener = _socket.socket()
        self.listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(16)
        listener = self.listener

        def pipe(a, b):
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    try:
                        s.close()
                    except OSError:
                        pass

        def accept():
            while True:
                try:
                    client, _ = listener.accept()
                except OSError:
                    return
                server = _socket.create_connection(self.target)
                self.conns += [client, server]
                threading.Thread(target=pipe, args=(client, server), daemon=True).start()
                threading.Thread(target=pipe, args=(server, client), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()

    def down(self) -> None:
        import socket as _socket

        try:
            self.listener.shutdown(_socket.SHUT_RDWR)  # wakes the accept() blocked on it
        except OSError:
            pass
        self.listener.close()
        for s in self.conns:
            try:
                s.close()
            except OSError:
                pass
        self.conns = []


def test_recorder_through_a_node_briefly_down(direct, opensearch_url):
    """The real aiohttp transport: documents written, dropped and counted while the
    node cannot be reached (record() never raises), written again once it is back."""
    import asyncio

    from es_rerank.config import UpstreamSettings
    from es_rerank.experiments.config import UbiSettings
    from es_rerank.experiments.record import Recorder
    from es_rerank.metrics import Metrics
    from es_rerank.upstream import Upstream

    node = Forwarder(opensearch_url)
    node.up()
    index = "t-abx-down-queries"
    direct.indices.delete(index=index, ignore_unavailable=True)

    async def scenario():
        metrics = Metrics()
        upstream = Upstream(UpstreamSettings(url=node.url, connect_timeout=1, timeout=5))
        rec = Recorder(
            upstream,
            UbiSettings(queries_index=index, events_index=index + "-events", flush_interval_ms=20, write_timeout=2),
            metrics,
        )
        await rec.start()

        def count(outcome):
            labels = {"index": index, "outcome": outcome}
            return metrics.registry.get_sample_value("es_rerank_ubi_documents_total", labels) or 0.0

        rec.record_query({"query_id": "before"})
        await rec.wait_written()
        node.down()
        for i in range(3):
            rec.record_query({"query_id": f"down-{i}"})
        while count("unavailable") < 3:
            await rec.wait_written()
        node.up()
        rec.record_query({"query_id": "after"})
        while count("written") < 2:
            await rec.wait_written()
        await rec.stop()
        await upstream.aclose()
        return count("written"), count("unavailable")

    try:
        written, unavailable = asyncio.run(scenario())
    finally:
        node.down()
    assert (written, unavailable) == (2, 3)
    direct.indices.refresh(index=index)
    ids = sorted(h["_source"]["query_id"] for h in direct.search(index=index, body={"size": 10})["hits"]["hits"])
    assert ids == ["after", "before"]
    direct.indices.delete(index=index, ignore_unavailable=True)
    direct.indices.delete(index=index + "-events", ignore_unavailable=True)
