"""CORS answered by es-rerank itself (``server.cors``), as OpenSearch's ``http.cors.*``.

Preflights are answered by es-rerank even when OpenSearch is down; every answer it
makes, its own errors (400, 404 under /_rerank/, 413, 502, 504) and its own endpoints
included, carries the CORS headers a browser needs to let page code read it; an origin
not allowed is refused 403. Off, a preflight goes to OpenSearch as before.
"""

from __future__ import annotations

import json
import socket

import httpx
import pytest
from faulty_upstream import FaultyUpstream
from rawhttp import exchange, is_shaped_error, request

from es_rerank import create_app, settings_from_dict

pytestmark = pytest.mark.integration

ORIGIN = "http://localhost:5173"
SEARCH = json.dumps({"query": {"match": {"title": "a title"}}}).encode()


def _settings(upstream_url: str, model_dir, cors: dict | None, **upstream) -> object:
    return settings_from_dict(
        {
            "upstream": {"url": upstream_url, "timeout": 1, "connect_timeout": 1, **upstream},
            "server": {"max_content_length": 10_000, **({"cors": cors} if cors is not None else {})},
            "models": {"tiny": {"path": str(model_dir)}},
            "indices": [
                {"pattern": "ft-*", "model": "tiny", "fields": ["title", "text"], "window": 2, "max_window": 5}
            ],
        },
        env={},
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


@pytest.fixture(scope="module")
def faulty():
    with FaultyUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def proxy(faulty, tiny_model_dir, serve_app):
    cors = {"enabled": True, "allow_origin": [ORIGIN, "http://127.0.0.1:8080"]}
    with serve_app(create_app(_settings(faulty.url, tiny_model_dir, cors))) as served:
        yield served


@pytest.fixture(scope="module")
def proxy_upstream_down(tiny_model_dir, serve_app):
    cors = {"enabled": True, "allow_origin": "/https?:\\/\\/localhost(:[0-9]+)?/"}
    app = create_app(_settings(f"http://127.0.0.1:{_closed_port()}", tiny_model_dir, cors))
    with serve_app(app) as served:
        yield served


def _cors_ok(answer, origin: str = ORIGIN) -> None:
    assert answer is not None
    assert answer.headers.get("access-control-allow-origin") == origin, answer.headers
    assert "origin" in answer.headers.get("vary", "").lower()
    exposed = {h.strip() for h in answer.headers.get("access-control-expose-headers", "").split(",")}
    assert {"x-rerank", "x-rerank-reason", "x-rerank-items", "x-rerank-model"} <= exposed


def _preflight(
    port: int, path: str, origin: str = ORIGIN, headers: str = "content-type,authorization,x-elastic-client-meta"
):
    return exchange(
        port,
        request(
            "OPTIONS", path, b"",
            {"Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": headers},
        ),
    )  # fmt: skip


def test_a_preflight_is_answered_by_es_rerank(proxy, faulty):
    before = len(faulty.requests)
    answer = _preflight(proxy.port, "/ft-docs/_msearch")
    assert answer.status == 200
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    allowed = {h.strip().lower() for h in answer.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "x-elastic-client-meta", "x-rerank-enabled"} <= allowed
    assert {"GET", "POST", "OPTIONS"} <= {m.strip() for m in answer.headers["access-control-allow-methods"].split(",")}
    assert answer.headers["access-control-max-age"] == "1728000"
    assert len(faulty.requests) == before  # never forwarded


def test_a_preflight_is_answered_when_opensearch_is_down(proxy_upstream_down):
    answer = _preflight(proxy_upstream_down.port, "/ft-docs/_search", origin="http://localhost:3000")
    assert answer.status == 200 and answer.headers["access-control-allow-origin"] == "http://localhost:3000"


def test_an_origin_not_allowed_is_refused_403_preflight_and_request(proxy, proxy_upstream_down, faulty):
    before = len(faulty.requests)
    assert _preflight(proxy.port, "/ft-docs/_search", origin="http://evil.example").status == 403
    answer = exchange(
        proxy.port,
        request(
            "POST", "/ft-docs/_search", SEARCH, {"Content-Type": "application/json", "Origin": "http://evil.example"}
        ),
    )
    assert answer.status == 403 and "access-control-allow-origin" not in answer.headers
    assert len(faulty.requests) == before
    # The regex must match the whole origin, as Java's Pattern.matches does.
    assert _preflight(proxy_upstream_down.port, "/x/_search", origin="http://localhost:3000.evil.example").status == 403


def test_a_same_origin_request_is_served(proxy):
    """A page es-rerank serves itself sends its own origin on POST: not cross-origin."""
    origin = f"http://127.0.0.1:{proxy.port}"  # httpx sends Host: 127.0.0.1:<port>
    answer = httpx.post(
        f"{proxy.url}/ft-docs/_search", content=SEARCH, headers={"Content-Type": "application/json", "Origin": origin}
    )
    assert answer.status_code == 200 and answer.headers["x-rerank"] == "reranked"
    assert "access-control-allow-origin" not in answer.headers


def test_a_reranked_search_carries_the_headers(proxy):
    answer = exchange(
        proxy.port, request("POST", "/ft-docs/_search", SEARCH, {"Content-Type": "application/json", "Origin": ORIGIN})
    )
    assert answer.status == 200 and answer.headers["x-rerank"] == "reranked"
    _cors_ok(answer)


@pytest.mark.parametrize(
    "method, path, body, status, type_",
    [
        # es-rerank's own 400: a window past max_window
        ("POST", "/ft-docs/_search", json.dumps({"query": {"match": {"title": "a"}}, "ext": {"rerank": {"window_size": 50}}}).encode(),
         400, "rerank_illegal_argument_exception"),
        ("POST", "/ft-docs/_msearch", b"{}\n{\"query\": {\"match\": {\"title\": \"a\"}}, \"ext\": {\"rerank\": {\"model\": \"nope\"}}}\n",
         200, None),  # an item refused by es-rerank: the answer is es-rerank's own
        ("GET", "/_rerank/nope", b"", 404, "rerank_resource_not_found_exception"),
        ("GET", "/_rerank/health", b"", 200, None),
        ("GET", "/_rerank/metrics", b"", 200, None),
        ("POST", "/ft-docs/_search", b"{" + b" " * 20_000 + b"}", 413, "rerank_content_too_long_exception"),
        ("POST", "/ft-html/_search", SEARCH, 502, "rerank_upstream_bad_response_exception"),
        ("POST", "/ft-hang/_search", SEARCH, 504, "rerank_upstream_timeout_exception"),
    ],
)  # fmt: skip
def test_every_answer_of_es_rerank_carries_the_headers(proxy, method, path, body, status, type_):
    headers = {"Content-Type": "application/x-ndjson" if "msearch" in path else "application/json", "Origin": ORIGIN}
    answer = exchange(proxy.port, request(method, path, body, headers))
    assert answer is not None and answer.status == status, answer
    _cors_ok(answer)
    if type_ is not None:
        assert is_shaped_error(answer) and answer.json()["error"]["type"] == type_


def test_a_502_when_opensearch_is_down_carries_the_headers(proxy_upstream_down):
    origin = "http://localhost:3000"
    answer = exchange(
        proxy_upstream_down.port,
        request("POST", "/ft-docs/_search", SEARCH, {"Content-Type": "application/json", "Origin": origin}),
    )
    assert answer.status == 502 and answer.json()["error"]["type"] == "rerank_upstream_unavailable_exception"
    _cors_ok(answer, origin)
    health = exchange(proxy_upstream_down.port, request("GET", "/_rerank/health", b"", {"Origin": origin}))
    assert health.status == 503
    _cors_ok(health, origin)


def test_off_a_preflight_goes_to_opensearch(faulty, tiny_model_dir, serve_app):
    with serve_app(create_app(_settings(faulty.url, tiny_model_dir, None))) as served:
        before = len(faulty.requests)
        answer = _preflight(served.port, "/ft-docs/_search")
        assert answer.status == 200 and "access-control-allow-origin" not in answer.headers
        assert [r.method for r in faulty.requests[before:]] == ["OPTIONS"]
