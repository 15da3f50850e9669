"""The proxy end to end: real OpenSearch, real ONNX Runtime, real HTTP on loopback.

Where drop-in behaviour is claimed, the same request goes direct to OpenSearch and
through es-rerank, and the answers are compared.
"""

from __future__ import annotations

import gzip
import itertools
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from opensearchpy import OpenSearch
from tokenizers import Tokenizer

from es_rerank import create_app, settings_from_dict

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
INDEX = "rr-docs"
WINDOW = 30
CATEGORIES = ["biology", "medicine", "chemistry", "physics"]


def _docs(n: int = 400):
    with gzip.open(ROOT / "demo" / "scifact" / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        for i, line in enumerate(itertools.islice(f, n)):
            doc = json.loads(line)
            yield {
                "_id": doc["_id"],
                "title": doc["title"],
                "text": doc["text"],
                "category": CATEGORIES[i % 4],
                "year": 1990 + i % 30,
            }


@pytest.fixture(scope="module")
def direct(opensearch_url):
    client = OpenSearch(opensearch_url, timeout=60)
    if client.indices.exists(index=INDEX):
        client.indices.delete(index=INDEX)
    client.indices.create(
        index=INDEX,
        body={
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": {
                "properties": {
                    "title": {"type": "text"},
                    "text": {"type": "text"},
                    "category": {"type": "keyword"},
                    "year": {"type": "integer"},
                }
            },
        },
    )
    from opensearchpy.helpers import bulk

    bulk(
        client,
        ({"_index": INDEX, **{k: v for k, v in d.items() if k != "_id"}, "_id": d["_id"]} for d in _docs()),
        refresh=True,
    )
    yield client
    client.indices.delete(index=INDEX, ignore_unavailable=True)


@pytest.fixture(scope="module")
def settings(opensearch_url, tiny_model_dir):
    return settings_from_dict(
        {
            "upstream": {"url": opensearch_url, "timeout": 20},
            "models": {"tiny": {"path": str(tiny_model_dir), "max_length": 256}},
            "indices": [
                {"pattern": "rr-*", "model": "tiny", "fields": ["title", "text"], "window": WINDOW, "max_window": 100}
            ],
        },
        env={},
    )


@pytest.fixture(scope="module")
def proxy(direct, settings, serve_app):
    app = create_app(settings)
    with serve_app(app) as served:
        yield served


@pytest.fixture(scope="module")
def http(proxy, opensearch_url):
    """Two plain HTTP clients: to es-rerank and to OpenSearch."""
    with httpx.Client(base_url=proxy.url, timeout=30) as via, httpx.Client(base_url=opensearch_url, timeout=30) as raw:
        yield via, raw


class DirectScorer:
    """The test's own model scores: ONNX Runtime and tokenizers called directly."""

    def __init__(self, model_dir: Path) -> None:
        self.session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
        self.tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tok.enable_truncation(256, strategy="only_second")
        self.tok.no_padding()

    def __call__(self, query: str, passages: list[str]) -> np.ndarray:
        out = []
        for p in passages:
            enc = self.tok.encode(query, p)
            feed = {
                "input_ids": np.array([enc.ids], dtype=np.int64),
                "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
                "token_type_ids": np.array([enc.type_ids], dtype=np.int64),
            }
            out.append(self.session.run(None, feed)[0][0, 0])
        return np.array(out)


def _expected_order(direct: OpenSearch, scorer: DirectScorer, query_text: str, k: int = WINDOW) -> list[str]:
    res = direct.search(index=INDEX, body={"query": {"match": {"text": query_text}}, "size": k})
    hits = res["hits"]["hits"]
    scores = scorer(query_text, [f"{h['_source']['title']} {h['_source']['text']}" for h in hits])
    order = np.argsort(-scores, kind="stable")
    return [hits[i]["_id"] for i in order]


QUERY = "vitamin D deficiency risk"


# -- pass-through -----------------------------------------------------------------


def test_passthrough_root_and_head(http):
    via, raw = http
    a, b = via.get("/"), raw.get("/")
    assert a.status_code == b.status_code == 200
    assert a.json() == b.json()
    a, b = via.head("/"), raw.head("/")
    assert a.status_code == b.status_code == 200
    assert a.headers["content-length"] == b.headers["content-length"]
    assert a.content == b""


@pytest.mark.parametrize(
    "path",
    [
        f"/{INDEX}/_mapping",
        f"/{INDEX}/_count",
        "/_cat/indices?format=json&index=" + INDEX,
        "/_cat/indices/" + INDEX + "?h=index,health",
        "/no-such-index/_mapping",
    ],
)
def test_passthrough_reads_equal_direct(http, path):
    via, raw = http
    a, b = via.get(path), raw.get(path)
    assert a.status_code == b.status_code
    assert a.content == b.content
    assert a.headers["content-type"] == b.headers["content-type"]


def test_passthrough_count_with_body(http):
    via, raw = http
    body = {"query": {"term": {"category": "biology"}}}
    a, b = via.post(f"/{INDEX}/_count", json=body), raw.post(f"/{INDEX}/_count", json=body)
    assert a.status_code == b.status_code == 200
    assert a.json() == b.json() and a.json()["count"] == 100


def test_passthrough_doc_lifecycle_and_bulk(http):
    via, raw = http
    index = "rr-scratch"
    raw.delete(f"/{index}")
    try:
        created = via.put(f"/{index}/_doc/1?refresh=true", json={"title": "t", "text": "x"})
        assert created.status_code == 201 and created.json()["result"] == "created"
        a, b = via.get(f"/{index}/_doc/1"), raw.get(f"/{index}/_doc/1")
        assert a.status_code == b.status_code == 200 and a.json() == b.json()
        deleted = via.delete(f"/{index}/_doc/1?refresh=true")
        assert deleted.status_code == 200 and deleted.json()["result"] == "deleted"
        a, b = via.get(f"/{index}/_doc/1"), raw.get(f"/{index}/_doc/1")
        assert a.status_code == b.status_code == 404 and a.json() == b.json()

        ndjson = "".join(
            json.dumps({"index": {"_index": index, "_id": str(i)}}) + "\n" + json.dumps({"title": f"doc {i}"}) + "\n"
            for i in range(5)
        )
        bulk = via.post("/_bulk?refresh=true", content=ndjson, headers={"content-type": "application/x-ndjson"})
        assert bulk.status_code == 200 and bulk.json()["errors"] is False and len(bulk.json()["items"]) == 5
        a, b = via.get(f"/{index}/_count"), raw.get(f"/{index}/_count")
        assert a.json() == b.json() and a.json()["count"] == 5
    finally:
        raw.delete(f"/{index}")


def test_passthrough_keeps_encoded_path_and_query(http):
    via, raw = http
    path = f"/{INDEX}/_doc/does%2Fnot%2Fexist?pretty"
    a, b = via.get(path), raw.get(path)
    assert a.status_code == b.status_code == 404
    assert a.content == b.content


# -- rerank -----------------------------------------------------------------------


def test_rerank_top10_is_model_order_of_first_stage_window(proxy, direct, tiny_model_dir):
    scorer = DirectScorer(tiny_model_dir)
    client = OpenSearch(proxy.url, timeout=60)
    res = client.search(index=INDEX, body={"query": {"match": {"text": QUERY}}, "size": 10})
    expected = _expected_order(direct, scorer, QUERY)
    got = [h["_id"] for h in res["hits"]["hits"]]
    assert got == expected[:10]
    bm25 = direct.search(index=INDEX, body={"query": {"match": {"text": QUERY}}, "size": 10})
    assert got != [h["_id"] for h in bm25["hits"]["hits"]], "the model should change the order"
    scores = [h["_score"] for h in res["hits"]["hits"]]
    assert scores == sorted(scores, reverse=True)
    assert res["hits"]["max_score"] == scores[0]
    first = res["hits"]["hits"][0]["_rerank"]
    assert first["first_stage_rank"] >= 1 and isinstance(first["first_stage_score"], float)


def test_rerank_keeps_total_aggregations_and_highlight(http):
    via, raw = http
    body = {
        "query": {"match": {"text": QUERY}},
        "aggs": {"cats": {"terms": {"field": "category"}}, "years": {"stats": {"field": "year"}}},
        "highlight": {"fields": {"text": {}}},
        "size": 10,
    }
    a, b = via.post(f"/{INDEX}/_search", json=body), raw.post(f"/{INDEX}/_search", json=body)
    assert a.status_code == b.status_code == 200
    assert a.headers["x-rerank"] == "reranked"
    ja, jb = a.json(), b.json()
    assert ja["hits"]["total"] == jb["hits"]["total"]
    assert ja["aggregations"] == jb["aggregations"]
    assert ja["_shards"] == jb["_shards"] and ja["timed_out"] == jb["timed_out"]
    assert set(ja) == set(jb) and set(ja["hits"]) == set(jb["hits"])
    # Highlights travel with their hit: compare per id with a direct window query.
    window = raw.post(f"/{INDEX}/_search", json={**body, "size": WINDOW}).json()
    highlight_by_id = {h["_id"]: h.get("highlight") for h in window["hits"]["hits"]}
    for hit in ja["hits"]["hits"]:
        assert hit["highlight"] == highlight_by_id[hit["_id"]]


@pytest.mark.parametrize(
    "source",
    [
        False,
        ["title"],
        {"includes": ["tit*"]},
        {"excludes": ["text"]},
        {"includes": ["category", "year"], "excludes": ["year"]},
        None,
    ],
)
def test_rerank_source_filtering_is_what_the_client_asked(http, source):
    via, raw = http
    body = {"query": {"match": {"text": QUERY}}, "size": 5}
    if source is not None:
        body["_source"] = source
    a = via.post(f"/{INDEX}/_search", json=body)
    assert a.headers["x-rerank"] == "reranked"
    ids = [h["_id"] for h in a.json()["hits"]["hits"]]
    direct = raw.post(
        f"/{INDEX}/_search",
        json={"query": {"ids": {"values": ids}}, "size": 5, **({"_source": source} if source is not None else {})},
    ).json()
    by_id = {h["_id"]: h for h in direct["hits"]["hits"]}
    for hit in a.json()["hits"]["hits"]:
        expected = by_id[hit["_id"]]
        assert ("_source" in hit) == ("_source" in expected)
        assert hit.get("_source") == expected.get("_source")
        assert "fields" not in hit  # the model's fields are removed again


def test_rerank_client_fields_are_kept(http):
    via, _ = http
    body = {"query": {"match": {"text": QUERY}}, "size": 3, "_source": False, "fields": ["category", "title"]}
    hits = via.post(f"/{INDEX}/_search", json=body).json()["hits"]["hits"]
    for hit in hits:
        assert set(hit["fields"]) == {"category", "title"}
        assert "_source" not in hit


def test_pagination_pages_are_disjoint_and_make_the_top30(proxy, direct, tiny_model_dir):
    client = OpenSearch(proxy.url, timeout=60)
    pages = [
        [
            h["_id"]
            for h in client.search(index=INDEX, body={"query": {"match": {"text": QUERY}}, "from": f, "size": 10})[
                "hits"
            ]["hits"]
        ]
        for f in (0, 10, 20)
    ]
    flat = [i for p in pages for i in p]
    assert len(flat) == len(set(flat)) == 30
    assert flat == _expected_order(direct, DirectScorer(tiny_model_dir), QUERY)[:30]


def test_page_beyond_window_is_first_stage_order(http):
    via, raw = http
    body = {"query": {"match": {"text": QUERY}}, "from": WINDOW, "size": 10}
    a, b = via.post(f"/{INDEX}/_search", json=body), raw.post(f"/{INDEX}/_search", json=body)
    assert a.headers["x-rerank"] == "skipped" and a.headers["x-rerank-reason"] == "beyond_window"
    assert a.json()["hits"] == b.json()["hits"]


def test_window_size_from_ext_and_its_bound(http):
    via, raw = http
    body = {"query": {"match": {"text": QUERY}}, "size": 5, "ext": {"rerank": {"window_size": 10}}}
    a = via.post(f"/{INDEX}/_search", json=body)
    assert a.status_code == 200 and a.headers["x-rerank-window"] == "10"
    top10 = {
        h["_id"]
        for h in raw.post(f"/{INDEX}/_search", json={"query": body["query"], "size": 10}).json()["hits"]["hits"]
    }
    assert {h["_id"] for h in a.json()["hits"]["hits"]} <= top10
    too_big = via.post(f"/{INDEX}/_search", json={**body, "ext": {"rerank": {"window_size": 1000}}})
    assert too_big.status_code == 400
    err = too_big.json()
    assert err["status"] == 400 and err["error"]["type"] == "rerank_illegal_argument_exception"
    assert err["error"]["root_cause"][0]["type"] == "rerank_illegal_argument_exception"


# -- skip cases: answered exactly as OpenSearch answers ----------------------------


@pytest.mark.parametrize(
    "name,path,body",
    [
        ("sort", f"/{INDEX}/_search", {"query": {"match": {"text": QUERY}}, "sort": [{"year": "asc"}], "size": 10}),
        (
            "size0",
            f"/{INDEX}/_search",
            {"query": {"match": {"text": QUERY}}, "size": 0, "aggs": {"c": {"terms": {"field": "category"}}}},
        ),
        ("no_text", f"/{INDEX}/_search", {"query": {"term": {"category": "physics"}}, "size": 10}),
        (
            "disabled",
            f"/{INDEX}/_search",
            {"query": {"match": {"text": QUERY}}, "size": 10, "ext": {"rerank": {"enabled": False}}},
        ),
    ],
)
def test_skip_cases_equal_direct(http, name, path, body):
    via, raw = http
    direct_body = {k: v for k, v in body.items() if k != "ext"}
    a, b = via.post(path, json=body), raw.post(path, json=direct_body)
    assert a.status_code == b.status_code == 200
    assert a.headers["x-rerank"] == "skipped"
    assert a.json()["hits"] == b.json()["hits"]


def test_skip_scroll_equals_direct(http):
    via, raw = http
    body = {"query": {"match": {"text": QUERY}}, "size": 10}
    a = via.post(f"/{INDEX}/_search?scroll=1m", json=body)
    b = raw.post(f"/{INDEX}/_search?scroll=1m", json=body)
    assert a.headers["x-rerank-reason"] == "scroll"
    assert [h["_id"] for h in a.json()["hits"]["hits"]] == [h["_id"] for h in b.json()["hits"]["hits"]]
    # The scroll continues through the proxy as well.
    nxt = via.post("/_search/scroll", json={"scroll": "1m", "scroll_id": a.json()["_scroll_id"]})
    assert nxt.status_code == 200 and len(nxt.json()["hits"]["hits"]) == 10
    for sid in (a.json()["_scroll_id"], b.json()["_scroll_id"]):
        raw.request("DELETE", "/_search/scroll", json={"scroll_id": sid})


def test_skip_by_header(http):
    via, raw = http
    body = {"query": {"match": {"text": QUERY}}, "size": 10}
    a = via.post(f"/{INDEX}/_search", json=body, headers={"x-rerank-enabled": "false"})
    assert a.headers["x-rerank-reason"] == "disabled"
    assert a.json()["hits"] == raw.post(f"/{INDEX}/_search", json=body).json()["hits"]


# -- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path,content",
    [
        (f"/{INDEX}/_search", b'{"query": {"match": '),
        ("/no-such-index/_search", json.dumps({"query": {"match": {"text": "x"}}}).encode()),
        ("/rr-missing/_search", json.dumps({"query": {"match": {"text": "x"}}}).encode()),
        (f"/{INDEX}/_search", json.dumps({"query": {"no_such_query": {"text": "x"}}}).encode()),
        (f"/{INDEX}/_search", json.dumps({"query": {"match": {"text": QUERY}}, "size": "ten"}).encode()),
        (f"/{INDEX}/_search", json.dumps({"query": {"match": {"text": QUERY}}, "from": -5}).encode()),
    ],
)
def test_bad_input_same_status_and_type_as_opensearch(http, path, content):
    via, raw = http
    headers = {"content-type": "application/json"}
    a, b = via.post(path, content=content, headers=headers), raw.post(path, content=content, headers=headers)
    assert b.status_code >= 400
    assert a.status_code == b.status_code
    assert a.json()["error"]["type"] == b.json()["error"]["type"]
    assert "Traceback" not in a.text


@pytest.mark.parametrize(
    "ext,etype",
    [
        ({"model": "nope"}, "rerank_unknown_model_exception"),
        ({"window_size": -1}, "rerank_illegal_argument_exception"),
        ({"enabled": "maybe"}, "rerank_illegal_argument_exception"),
        ({"typo": 1}, "rerank_illegal_argument_exception"),
        ("not-an-object", "rerank_illegal_argument_exception"),
    ],
)
def test_own_errors_in_opensearch_shape(http, ext, etype):
    via, _ = http
    r = via.post(f"/{INDEX}/_search", json={"query": {"match": {"text": QUERY}}, "ext": {"rerank": ext}})
    assert r.status_code == 400
    body = r.json()
    assert set(body) == {"error", "status"} and body["status"] == 400
    assert body["error"]["type"] == etype and body["error"]["reason"]
    assert body["error"]["root_cause"] == [{"type": etype, "reason": body["error"]["reason"]}]
    assert "Traceback" not in r.text


def _blackhole():
    """A listening socket that accepts and never answers (a hung upstream)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    conns = []
    stop = threading.Event()

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(sock.accept()[0])
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    return sock, stop, conns


def test_upstream_errors(tiny_model_dir, serve_app):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # closed again: nothing listens there
    hung, stop, conns = _blackhole()
    try:
        for url, statuses, etype in [
            (f"http://127.0.0.1:{dead_port}", {502, 503}, "rerank_upstream_unavailable_exception"),
            (f"http://127.0.0.1:{hung.getsockname()[1]}", {504}, "rerank_upstream_timeout_exception"),
        ]:
            settings = settings_from_dict(
                {
                    "upstream": {"url": url, "timeout": 1.5, "connect_timeout": 1.0},
                    "models": {"tiny": {"path": str(tiny_model_dir)}},
                    "indices": [{"pattern": "rr-*"}],
                },
                env={},
            )
            with serve_app(create_app(settings)) as served, httpx.Client(base_url=served.url, timeout=10) as c:
                for method, path, body in [
                    ("GET", "/", None),
                    ("POST", f"/{INDEX}/_search", {"query": {"match": {"text": "x"}}}),
                ]:
                    r = c.request(method, path, json=body)
                    # The proxy's own timeout answered (504), not the client's (10 s) running out.
                    assert r.status_code in statuses, (url, path, r.status_code)
                    assert r.json()["error"]["type"] == etype and r.json()["status"] == r.status_code
                    assert "Traceback" not in r.text
    finally:
        stop.set()
        hung.close()
        for conn in conns:
            conn.close()


def test_health_reports_models_and_provider(http):
    via, _ = http
    r = via.get("/_rerank/health")
    assert r.status_code == 200
    info = r.json()["models"]["tiny"]
    assert info["provider"] == "CPUExecutionProvider" and info["status"] == "ready"


# -- _msearch -------------------------------------------------------------------------


def _ndjson(*objs) -> bytes:
    return ("\n".join(json.dumps(o) for o in objs) + "\n").encode()


def test_msearch_items_reranked_skipped_and_refused(http):
    via, raw = http
    search = {"query": {"match": {"text": QUERY}}, "size": 5}
    sort = {"query": {"match": {"text": QUERY}}, "size": 5, "sort": [{"year": "desc"}]}
    bad = {"query": {"match": {"text": QUERY}}, "ext": {"rerank": {"window_size": 0}}}
    headers = {"content-type": "application/x-ndjson"}
    r = via.post(
        "/_msearch",
        content=_ndjson(
            {"index": INDEX}, search, {"index": INDEX}, sort, {"index": INDEX}, bad, {"index": "no-such-index"}, search
        ),
        headers=headers,
    )
    assert r.status_code == 200 and r.headers["x-rerank-items"] == "1/4"
    items = r.json()["responses"]
    assert len(items) == 4
    single = via.post(f"/{INDEX}/_search", json=search).json()
    assert [h["_id"] for h in items[0]["hits"]["hits"]] == [h["_id"] for h in single["hits"]["hits"]]
    assert items[0]["hits"]["total"] == single["hits"]["total"] and items[0]["status"] == 200
    direct = raw.post(
        "/_msearch", content=_ndjson({"index": INDEX}, sort, {"index": "no-such-index"}, search), headers=headers
    ).json()["responses"]
    assert items[1]["hits"] == direct[0]["hits"]
    assert items[2]["status"] == 400 and items[2]["error"]["type"] == "rerank_illegal_argument_exception"
    assert items[3]["status"] == 404 and items[3]["error"]["type"] == direct[1]["error"]["type"]


def test_msearch_on_index_path_and_unconfigured_passthrough(http):
    via, raw = http
    search = {"query": {"match": {"text": QUERY}}, "size": 3}
    headers = {"content-type": "application/x-ndjson"}
    r = via.post(f"/{INDEX}/_msearch", content=_ndjson({}, search), headers=headers)
    assert r.headers["x-rerank"] == "reranked"
    assert r.json()["responses"][0]["hits"]["hits"][0]["_rerank"]
    # No configured index in it: OpenSearch's bytes as they are.
    body = _ndjson({"index": "no-such-index"}, search)
    a, b = via.post("/_msearch", content=body, headers=headers), raw.post("/_msearch", content=body, headers=headers)
    assert (
        a.status_code == b.status_code
        and a.json()["responses"][0]["error"]["type"] == b.json()["responses"][0]["error"]["type"]
    )
    # Malformed NDJSON: OpenSearch's own error.
    a, b = (
        via.post("/_msearch", content=b'{"index": "x"}\n{"query": ', headers=headers),
        raw.post("/_msearch", content=b'{"index": "x"}\n{"query": ', headers=headers),
    )
    assert a.status_code == b.status_code and a.json()["error"]["type"] == b.json()["error"]["type"]


def test_metrics_count_requests_by_outcome(http):
    via, _ = http
    via.post(f"/{INDEX}/_search", json={"query": {"match": {"text": QUERY}}, "size": 3})
    via.post(f"/{INDEX}/_search", json={"query": {"match": {"text": QUERY}}, "size": 0})
    via.get("/")
    r = via.get("/_rerank/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'es_rerank_requests_total{index="rr-*",outcome="reranked",reason="reranked",route="search"}' in text
    assert 'es_rerank_requests_total{index="rr-*",outcome="skipped",reason="size_0",route="search"}' in text
    assert 'route="passthrough"' in text
    assert "es_rerank_request_seconds_bucket" in text


def test_chunking_reports_model_passes_within_cap(direct, opensearch_url, tiny_model_dir, serve_app):
    settings = settings_from_dict(
        {
            "upstream": {"url": opensearch_url},
            "models": {"tiny": {"path": str(tiny_model_dir), "max_length": 64}},
            "indices": [
                {
                    "pattern": "rr-*",
                    "window": 10,
                    "chunking": {"mode": "chunk", "stride": 8, "max_chunks": 3, "aggregate": "max"},
                }
            ],
        },
        env={},
    )
    with serve_app(create_app(settings)) as served, httpx.Client(base_url=served.url, timeout=60) as c:
        r = c.post(f"/{INDEX}/_search", json={"query": {"match": {"text": QUERY}}, "size": 10})
        assert r.status_code == 200 and r.headers["x-rerank"] == "reranked"
        pairs = int(r.headers["x-rerank-pairs"])
        # SciFact abstracts are longer than 64 tokens: several chunks a hit, never more than 3.
        assert 10 < pairs <= 30
        assert len(r.json()["hits"]["hits"]) == 10


# -- when the model cannot answer in time, or at all ---------------------------------------


class SlowSession:
    """The real ONNX Runtime session, each run delayed by its size: a slow CPU, on demand."""

    def __init__(self, inner, seconds_per_token: float) -> None:
        self.inner, self.seconds_per_token, self.runs = inner, seconds_per_token, 0
        self.started = threading.Event()  # set when a run starts
        self.gate = threading.Event()  # cleared: runs wait until it is set
        self.gate.set()

    def run(self, names, feeds, *args, **kwargs):
        self.runs += 1
        self.started.set()
        assert self.gate.wait(60)
        time.sleep(self.seconds_per_token * feeds["input_ids"].size)
        return self.inner.run(names, feeds, *args, **kwargs)


def _slow_proxy_settings(settings, degrade=None, **server):
    update = {"server": settings.server.model_copy(update=server)}
    if degrade is not None:
        update["indices"] = [spec.model_copy(update={"degrade": degrade}) for spec in settings.indices]
    return settings.model_copy(update=update)


def _slow_engine(tiny_model_dir: Path, seconds_per_token: float) -> tuple:
    """An engine whose runs are slowed per token, and its session (runs, started, gate)."""
    from es_rerank.reranker import OnnxReranker

    sessions: list[SlowSession] = []

    def wrap(session):
        sessions.append(SlowSession(session, seconds_per_token))
        return sessions[-1]

    engine = OnnxReranker(
        "tiny", tiny_model_dir / "model.onnx", tiny_model_dir / "tokenizer.json",
        max_length=256, batch_size=4, cache_size=0, batch_wait_ms=0, wrap_session=wrap,
    )  # fmt: skip
    return engine, sessions[0]


def _concurrent_searches(url: str, queries: list[str]) -> list[tuple[httpx.Response, float]]:
    results: list = [None] * len(queries)

    def one(i: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            t0 = time.perf_counter()
            r = c.post(f"/{INDEX}/_search", json={"query": {"match": {"text": queries[i]}}})
            results[i] = (r, time.perf_counter() - t0)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


OVERLOAD_QUERIES = ["vitamin D deficiency", "cancer cells", "protein folding", "immune response",
                    "gene expression", "blood pressure", "brain development", "bacterial infection"]  # fmt: skip


@pytest.mark.parametrize("shed", [True, False])
def test_searches_the_model_cannot_serve_in_time_get_first_stage_order(
    direct, settings, serve_app, tiny_model_dir, shed
):
    """8 concurrent searches of 30 hits, about 0.4 s of model time each (50 us a token),
    against a 1 s budget: the first are reranked. With shed_overload the others are
    answered at once in first-stage order (x-rerank-reason overloaded); without it, after
    waiting out rerank_timeout. Every answer holds OpenSearch's hits."""
    timeout = 1.0
    scorer = DirectScorer(tiny_model_dir)
    engine, _ = _slow_engine(tiny_model_dir, 50e-6)
    # No degradation (tests/integration/test_degrade.py has it): shed or queue, nothing between.
    app = create_app(
        _slow_proxy_settings(settings, degrade=["first_stage"], rerank_timeout=timeout, shed_overload=shed),
        rerankers={"tiny": engine},
    )
    with serve_app(app) as served:
        with httpx.Client(base_url=served.url, timeout=30) as c:  # one search alone: the model's rate is known after it
            assert (
                c.post(f"/{INDEX}/_search", json={"query": {"match": {"text": "warm up"}}}).headers["x-rerank"]
                == "reranked"
            )
        results = _concurrent_searches(served.url, OVERLOAD_QUERIES)
    reasons = []
    for query, (r, seconds) in zip(OVERLOAD_QUERIES, results):
        assert r.status_code == 200, r.text
        first_stage = direct.search(index=INDEX, body={"query": {"match": {"text": query}}})["hits"]["hits"]
        ids = [h["_id"] for h in r.json()["hits"]["hits"]]
        reasons.append(r.headers["x-rerank-reason"])
        if r.headers["x-rerank"] in ("fallback", "skipped"):  # skipped: shed before asking OpenSearch for the window
            assert ids == [h["_id"] for h in first_stage]  # OpenSearch's own order, nothing lost
            if r.headers["x-rerank-reason"] != "overloaded":  # overloaded: answered without waiting the budget out
                assert r.headers["x-rerank-reason"] == "rerank_timeout" and seconds >= timeout
        else:
            assert r.headers["x-rerank"] == "reranked"
            assert ids == _expected_order(direct, scorer, query)[:10]
    assert "reranked" in reasons
    if shed:
        # Admission is an estimate: one search let in just under the budget may still run past it.
        assert "overloaded" in reasons and reasons.count("rerank_timeout") <= 1, reasons
    else:
        assert "rerank_timeout" in reasons and "overloaded" not in reasons, reasons


def test_a_search_behind_a_queue_longer_than_the_budget_is_opensearchs_own_answer(
    direct, settings, serve_app, tiny_model_dir
):
    """When the model's queue alone would outlast the budget, the search is not even sent
    for its window: it is passed through, and the answer is OpenSearch's."""
    engine, _ = _slow_engine(tiny_model_dir, 50e-6)
    app = create_app(_slow_proxy_settings(settings, rerank_timeout=2.0), rerankers={"tiny": engine})
    body = {"query": {"match": {"text": QUERY}}, "size": 5}
    with serve_app(app) as served, httpx.Client(base_url=served.url, timeout=30) as c:
        assert c.post(f"/{INDEX}/_search", json=body).headers["x-rerank"] == "reranked"  # the rate is known after it
        busy = threading.Thread(target=engine.score, args=("busy", [f"text {i} " + "word " * 300 for i in range(200)]))
        busy.start()  # about 200 x 256 tokens x 50 us = 2.6 s of queued work
        deadline = time.time() + 10
        while (engine.queue_wait_s() or 0) <= 0.9 * 2.0 and time.time() < deadline:
            time.sleep(0.01)
        r = c.post(f"/{INDEX}/_search", json=body)
        health = c.get("/_rerank/health").json()["models"]["tiny"]
        gauge = [
            line
            for line in c.get("/_rerank/metrics").text.splitlines()
            if line.startswith("es_rerank_model_queue_seconds{")
        ]
        busy.join()
    # Reranking was asked for and first-stage order answered: a fallback, as on _msearch.
    assert (r.headers["x-rerank"], r.headers["x-rerank-reason"]) == ("fallback", "overloaded")
    assert health["queue_wait_s"] > 0 and gauge[0].startswith('es_rerank_model_queue_seconds{model="tiny"}')
    assert float(gauge[0].split()[-1]) > 0  # what an operator or a load balancer can watch
    want = direct.search(index=INDEX, body=body)
    got = r.json()
    assert {**got, "took": 0} == {**want, "took": 0}


def test_a_search_the_client_gave_up_on_stops_costing_model_time(direct, settings, serve_app, tiny_model_dir):
    engine, session = _slow_engine(tiny_model_dir, 50e-6)
    app = create_app(_slow_proxy_settings(settings, rerank_timeout=30), rerankers={"tiny": engine})
    body = {"query": {"match": {"text": QUERY}}, "ext": {"rerank": {"window_size": 100}}}  # about 25 runs
    content = json.dumps(body).encode()
    session.gate.clear()
    with serve_app(app) as served:
        with socket.create_connection(("127.0.0.1", served.port), timeout=30) as client:
            client.sendall(
                f"POST /{INDEX}/_search HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                f"content-length: {len(content)}\r\n\r\n".encode()
                + content
            )
            assert session.started.wait(30)  # its first run is under way (held at the gate)...
        # ...when the client gives up and closes the connection. Once the proxy has seen it
        # (its outcome counted), the run in progress is let go; the model's queue then empties:
        # at once if the rest of the search was dropped, after all its runs if not.
        deadline = time.monotonic() + 30
        while 'reason="client_closed"' not in app.metrics.render().decode() and time.monotonic() < deadline:
            time.sleep(0.01)
        session.gate.set()
        while engine.queue_wait_s() != 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        runs = session.runs
        with httpx.Client(base_url=served.url, timeout=30) as c:  # the model still serves: the whole window
            assert c.post(f"/{INDEX}/_search", json={**body, "size": 3}).headers["x-rerank"] == "reranked"
        whole = session.runs - runs
    assert 0 < runs <= whole // 2, (runs, whole)  # the search given up on stopped within its first half


def test_a_model_that_fails_gives_first_stage_order(direct, settings, serve_app, tiny_model_dir):
    engine, _ = _slow_engine(tiny_model_dir, 0.0)
    app = create_app(settings, rerankers={"tiny": engine})
    engine.close()  # every score call now fails
    with serve_app(app) as served, httpx.Client(base_url=served.url, timeout=30) as c:
        r = c.post(f"/{INDEX}/_search", json={"query": {"match": {"text": QUERY}}})
    assert r.status_code == 200
    assert (r.headers["x-rerank"], r.headers["x-rerank-reason"]) == ("fallback", "rerank_error")
    want = direct.search(index=INDEX, body={"query": {"match": {"text": QUERY}}})["hits"]["hits"]
    assert [h["_id"] for h in r.json()["hits"]["hits"]] == [h["_id"] for h in want]
