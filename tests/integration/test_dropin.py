"""Odd requests sent direct to a real OpenSearch and through es-rerank: the same status
class and, where es-rerank answers itself, OpenSearch's error shape.

Each case is one the proxy once got wrong (a 500, a rerank of a body OpenSearch
refuses, a body OpenSearch accepts refused by the rewrite); see the README's
reliability section for what each answer looks like.
"""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import httpx
import pytest
from opensearchpy import OpenSearch
from opensearchpy.helpers import bulk
from rawhttp import exchange, is_shaped_error, request

from es_rerank import create_app, settings_from_dict

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
INDEX = "dg-docs"
NO_SOURCE = "dg-nosource"
QUERY = {"query": {"match": {"text": "cells protein expression"}}}
JSON = {"Content-Type": "application/json"}


def _docs(n: int = 120):
    with gzip.open(ROOT / "demo" / "scifact" / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        for i, line in enumerate(itertools.islice(f, n)):
            doc = json.loads(line)
            yield {"_id": doc["_id"], "title": doc["title"], "text": doc["text"], "n": 1.1 + i}


@pytest.fixture(scope="module")
def indices(opensearch_url):
    client = OpenSearch(opensearch_url, timeout=60)
    for name, mappings in ((INDEX, {}), (NO_SOURCE, {"_source": {"enabled": False}})):
        client.indices.delete(index=name, ignore_unavailable=True)
        client.indices.create(
            index=name, body={"settings": {"number_of_shards": 1, "number_of_replicas": 0}, "mappings": mappings}
        )
        bulk(
            client,
            ({"_index": name, **{k: v for k, v in d.items() if k != "_id"}, "_id": d["_id"]} for d in _docs()),
            refresh=True,
        )
    # One document whose number is written as no float would write it back.
    written = httpx.put(
        f"{opensearch_url}/{INDEX}/_doc/as-written?refresh=true",
        content=b'{"title":"cells protein","text":"cells protein expression","n":1.10}',
        headers=JSON,
    )
    assert written.status_code == 201
    yield
    for name in (INDEX, NO_SOURCE):
        client.indices.delete(index=name, ignore_unavailable=True)


@pytest.fixture(scope="module")
def proxy(indices, opensearch_url, tiny_model_dir, serve_app):
    settings = settings_from_dict(
        {
            "upstream": {"url": opensearch_url, "timeout": 30},
            "models": {"tiny": {"path": str(tiny_model_dir)}},
            "indices": [{"pattern": "dg-*", "model": "tiny", "fields": ["title", "text"], "window": 20}],
        },
        env={},
    )
    with serve_app(create_app(settings)) as served:
        yield served


@pytest.fixture(scope="module")
def ports(proxy, opensearch_url):
    return proxy.port, int(opensearch_url.rsplit(":", 1)[1])


def both(ports, data: bytes, *, head: bool = False):
    via, direct = ports
    return exchange(via, data, head=head), exchange(direct, data, head=head)


def same_class(via, direct) -> None:
    assert via is not None, "the proxy closed without an answer"
    if direct is None:  # OpenSearch drops the connection: the proxy refuses, shaped
        assert 400 <= via.status < 500 and is_shaped_error(via), via
        return
    assert via.status // 100 == direct.status // 100, (via, direct)
    if via.status >= 400 and via.body != direct.body and not via.headers.get("x-rerank"):
        assert is_shaped_error(via), via


def search(index: str, body: bytes, headers: dict[str, str] | None = None, target: str = "_search") -> bytes:
    return request("POST", f"/{index}/{target}", body, {**JSON, **(headers or {})})


# -- drop-in gaps -------------------------------------------------------------------


def test_an_index_without_source_answers_as_direct(ports):
    via, direct = both(ports, search(NO_SOURCE, json.dumps(QUERY).encode()))
    assert via.status == direct.status == 200
    assert via.headers["x-rerank"] == "skipped" and via.headers["x-rerank-reason"] == "rewrite_refused"
    assert [h["_id"] for h in via.json()["hits"]["hits"]] == [h["_id"] for h in direct.json()["hits"]["hits"]]


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Encoding": "gzip"},
        {"Content-Type": "application/vnd.opensearch+json;compatible-with=7"},
        {"Content-Type": "application/x-ndjson"},
    ],
)
def test_compressed_and_vendor_json_bodies_are_reranked(ports, headers):
    body = json.dumps(QUERY).encode()
    if headers.get("Content-Encoding") == "gzip":
        body = gzip.compress(body)
    via, direct = both(ports, search(INDEX, body, headers))
    assert via.status == direct.status == 200
    assert via.headers["x-rerank"] == "reranked"
    assert {h["_id"] for h in via.json()["hits"]["hits"]} <= {h["_id"] for h in _top(ports, 20)}


def _top(ports, k: int) -> list[dict]:
    _, direct = ports
    answer = exchange(direct, search(INDEX, json.dumps({**QUERY, "size": k}).encode()))
    return answer.json()["hits"]["hits"]


def test_a_content_type_opensearch_refuses_is_refused_the_same(ports):
    body = json.dumps(QUERY).encode()
    for headers in (
        {"Content-Type": "application/vnd.elasticsearch+json;compatible-with=7"},
        {"Content-Type": "text/plain"},
    ):
        via, direct = both(ports, search(INDEX, body, headers))
        assert via.status == direct.status == 406
    no_type = request("POST", f"/{INDEX}/_search", body)
    via, direct = both(ports, no_type)
    assert via.status == direct.status == 406


@pytest.mark.parametrize("line", [b"null", b"[]", b'"x"', b"{}"])
def test_odd_msearch_header_lines_keep_the_other_items_reranked(ports, line):
    item = json.dumps({**QUERY, "size": 3, "ext": {"rerank": {"window_size": 10}}}).encode()
    data = line + b"\n" + item + b"\n" + b'{"index":"dg-docs"}\n' + item + b"\n"
    via = exchange(ports[0], request("POST", f"/{INDEX}/_msearch", data, {"Content-Type": "application/x-ndjson"}))
    assert via.status == 200
    responses = via.json()["responses"]
    assert [r["status"] for r in responses] == [200, 200]
    assert via.headers["x-rerank-items"].startswith("2/")


def test_an_unreadable_msearch_item_is_left_to_opensearch(ports):
    """An item the proxy cannot read goes as written: OpenSearch judges the request as direct."""
    item = json.dumps({**QUERY, "size": 3}).encode()
    for odd in (b'{"size":1,"size":2}', b'{"query":{"match_all":{}},"min_score":NaN}'):
        data = b"{}\n" + odd + b"\n" + b"{}\n" + item + b"\n"
        via, direct = both(ports, request("POST", f"/{INDEX}/_msearch", data, {"Content-Type": "application/x-ndjson"}))
        assert via.status == direct.status, odd
        if direct.status == 200:
            assert [r["status"] for r in via.json()["responses"]] == [r["status"] for r in direct.json()["responses"]]
        else:
            assert via.json()["error"]["type"] == direct.json()["error"]["type"]


@pytest.mark.parametrize(
    "name, data",
    [
        ("duplicate keys", search(INDEX, b'{"size":1,"size":2,"query":{"match":{"text":"cells"}}}')),
        ("duplicate nested keys", search(INDEX, b'{"query":{"match":{"text":"cells","text":"x"}}}')),
        ("null body", search(INDEX, b"null")),
        ("whitespace body", search(INDEX, b"   ")),
        ("a list body", search(INDEX, b"[1]")),
        ("empty size", request("GET", f"/{INDEX}/_search?size=&q=cells")),
        ("full-width size, raw", b"GET /dg-docs/_search?q=cells&size=\xef\xbc\x91 HTTP/1.1\r\nHost: x\r\n\r\n"),
        (
            "msearch without final newline",
            request(
                "POST",
                f"/{INDEX}/_msearch",
                b'{}\n{"query":{"match_all":{}}}',
                {"Content-Type": "application/x-ndjson"},
            ),
        ),
        ("NaN", search(INDEX, b'{"min_score":NaN,"query":{"match":{"text":"cells"}}}')),
    ],
)
def test_what_opensearch_refuses_is_refused_the_same(ports, name, data):
    via, direct = both(ports, data)
    assert direct.status == 400, name
    assert via.status == 400, (name, via)
    assert via.json()["error"]["type"] == direct.json()["error"]["type"]


def test_digits_of_any_script_are_read_as_java_reads_them(ports):
    via, direct = both(ports, request("GET", f"/{INDEX}/_search?q=cells&size=%EF%BC%92"))  # a full-width 2
    assert via.status == direct.status == 200
    assert via.headers["x-rerank"] == "reranked"
    assert len(via.json()["hits"]["hits"]) == len(direct.json()["hits"]["hits"]) == 2


def test_numbers_reach_opensearch_and_the_client_as_written(ports):
    via, direct = both(ports, search(INDEX, b'{"min_score":-1e400,"query":{"match":{"text":"cells protein"}}}'))
    assert via.status == direct.status == 200
    assert via.headers["x-rerank"] == "reranked"
    via = exchange(
        ports[0],
        search(
            INDEX,
            b'{"query":{"ids":{"values":["as-written"]}},"ext":{"rerank":{"query_context":{"query_text":"cells"}}}}',
        ),
    )
    assert via.headers["x-rerank"] == "reranked"
    assert b'"n":1.10' in via.body


@pytest.mark.parametrize(
    "target, headers, content_type",
    [
        ("_search?format=yaml", {}, "application/yaml"),
        ("_search", {"Accept": "application/yaml"}, "application/yaml"),
        ("_search", {"Accept": "application/cbor"}, "application/cbor"),
        ("_search", {"Accept": "application/smile"}, "application/smile"),
        ("_msearch?format=yaml", {"Content-Type": "application/x-ndjson"}, "application/yaml"),
    ],
)
def test_other_answer_formats_are_opensearchs_own(ports, target, headers, content_type):
    body = json.dumps(QUERY).encode()
    if "msearch" in target:
        body = b"{}\n" + body + b"\n"
    via, direct = both(ports, search(INDEX, body, headers, target=target))
    assert via.status == direct.status == 200
    assert via.headers["content-type"].startswith(content_type)
    assert via.headers["x-rerank"] == "skipped"


def _deep(depth: int) -> tuple[bytes, bytes]:
    query = b'{"query":' * depth + b"{}" + b"}" * depth
    meta = b'{"size":0,"aggs":{"a":{"terms":{"field":"n"},"meta":' + b'{"m":' * depth + b"1" + b"}" * depth + b"}}}"
    return query, meta


@pytest.mark.parametrize("depth", [990, 1200])
def test_deep_nesting_is_answered_as_direct(ports, depth):
    query, meta = _deep(depth)
    via, direct = both(ports, search(INDEX, query))
    same_class(via, direct)
    via, direct = both(ports, search(INDEX, meta))
    assert via.status == direct.status == 200


@pytest.mark.parametrize("route", ["_search", "_count", "_msearch", "_doc"])
def test_a_body_nested_deep_enough_to_kill_opensearch_is_refused(ports, route):
    """Not sent direct: 5,000 levels of `meta` end the node with a StackOverflowError."""
    _, meta = _deep(5000)
    if route == "_msearch":
        meta = b"{}\n" + meta + b"\n"
    for body in (meta, gzip.compress(meta)):
        headers = {"Content-Encoding": "gzip"} if body is not meta else {}
        via = exchange(ports[0], search(INDEX, body, headers, target=route))
        assert via.status == 400 and is_shaped_error(via), (route, via)
        assert via.json()["error"]["type"] == "rerank_parse_exception"
    assert exchange(ports[1], request("GET", "/")).status == 200  # still up


def test_pretty_answers_are_laid_out_as_opensearch_lays_them_out(ports):
    from es_rerank.bodies import dumps_pretty

    query = json.dumps({**QUERY, "size": 3, "aggs": {"n": {"max": {"field": "n"}}}}).encode()
    direct = exchange(ports[1], search(INDEX, query, target="_search?pretty"))
    # The printer writes OpenSearch's own pretty answer byte for byte.
    assert dumps_pretty(json.loads(direct.body)) == direct.body
    via = exchange(ports[0], search(INDEX, query, target="_search?pretty"))
    assert via.headers["x-rerank"] == "reranked"
    assert via.body.startswith(b'{\n  "took" : ') and via.body.endswith(b"}\n")
    assert dumps_pretty(json.loads(via.body)) == via.body


def test_rescore_and_min_score_are_part_of_the_first_stage(ports):
    """Documented choice: OpenSearch's rescore and min_score pick and order the window;
    the model then orders that window (its scores are returned, the first-stage ones kept)."""
    for extra in (
        {"min_score": 3.0},
        {
            "rescore": {
                "window_size": 20,
                "query": {"rescore_query": {"match": {"title": "protein"}}, "query_weight": 0.1},
            }
        },
    ):
        body = json.dumps({**QUERY, "size": 20, **extra}).encode()
        via, direct = both(ports, search(INDEX, body))
        assert via.status == direct.status == 200
        assert via.headers["x-rerank"] == "reranked"
        assert {h["_id"] for h in via.json()["hits"]["hits"]} == {h["_id"] for h in direct.json()["hits"]["hits"]}
        first_stage = {h["_id"]: h["_score"] for h in direct.json()["hits"]["hits"]}
        assert {h["_id"]: h["_rerank"]["first_stage_score"] for h in via.json()["hits"]["hits"]} == pytest.approx(
            first_stage
        )


@pytest.mark.parametrize(
    "data",
    [
        request("GET", "*"),
        request("OPTIONS", "*"),
        request("GET", "_cat/health"),
        request("GET", "/_rerank%2Fhealth"),
        b"GET /_search?q=caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /dg-docs/_search?q=caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",
        request("CONNECT", "/"),
        request("PATCH", "/"),
        request("TRACE", "/"),
        b"get / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PROPFIND / HTTP/1.1\r\nHost: x\r\n\r\n",
        request("GET", "/" + "a" * 5000),
        request("GET", "/", headers={"X-Big": "a" * 9000}),
    ],
)
def test_odd_requests_get_the_same_status_class(ports, data):
    via, direct = both(ports, data)
    same_class(via, direct)


def test_own_endpoints_are_reached_by_their_own_path_only(ports):
    via = exchange(ports[0], request("GET", "/_rerank%2Fhealth"))
    assert "models" not in via.body.decode("utf-8", "replace")


def test_admin_endpoints_behind_an_api_key(opensearch_url, tiny_model_dir, serve_app, indices):
    settings = settings_from_dict(
        {
            "upstream": {"url": opensearch_url},
            "server": {"admin": {"auth": "api_key", "api_key": "s3cret"}},
            "models": {"tiny": {"path": str(tiny_model_dir)}},
            "indices": [{"pattern": "dg-*", "model": "tiny"}],
        },
        env={},
    )
    with serve_app(create_app(settings)) as served, httpx.Client(base_url=served.url) as http:
        public = http.get("/_rerank/health")
        assert public.status_code == 200
        assert public.json() == {"status": "ok", "upstream": {"reachable": True}}
        assert str(tiny_model_dir) not in public.text
        denied = http.get("/_rerank/metrics")
        assert denied.status_code == 401 and denied.json()["error"]["type"] == "rerank_security_exception"
        assert http.get("/_rerank/metrics", headers={"x-rerank-api-key": "wrong"}).status_code == 401
        assert http.get("/_rerank/metrics", headers={"x-rerank-api-key": "s3cret"}).status_code == 200
        full = http.get("/_rerank/health", headers={"x-rerank-api-key": "s3cret"}).json()
        assert "tiny" in full["models"] and full["upstream"]["url"] == opensearch_url


def test_admin_endpoints_open_to_whoever_opensearch_lets_in(opensearch_url, tiny_model_dir, serve_app, indices):
    """auth: opensearch. This cluster has no security plugin, so OpenSearch answers
    anyone, and so do the admin endpoints."""
    settings = settings_from_dict(
        {
            "upstream": {"url": opensearch_url},
            "server": {"admin": {"auth": "opensearch"}},
            "models": {"tiny": {"path": str(tiny_model_dir)}},
            "indices": [{"pattern": "dg-*", "model": "tiny"}],
        },
        env={},
    )
    with serve_app(create_app(settings)) as served, httpx.Client(base_url=served.url) as http:
        assert http.get("/_rerank/metrics").status_code == 200
        assert "tiny" in http.get("/_rerank/health").json()["models"]
