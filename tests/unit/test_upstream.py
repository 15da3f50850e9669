"""es_rerank.upstream: which headers are forwarded to OpenSearch and which are answered to the client."""

from __future__ import annotations

from es_rerank.upstream import HOP_BY_HOP, forwardable_headers, response_headers


def names(headers):
    return [k for k, _ in headers]


def test_request_headers_lose_hop_by_hop_host_length_and_expect():
    sent = [
        ("Host", "proxy:8000"),
        ("Content-Length", "12"),
        ("Content-Type", "application/json"),
        ("Authorization", "Basic eDp5"),
        ("Connection", "keep-alive"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Expect", "100-continue"),
        ("TE", "trailers"),
        ("X-Opaque-Id", "abc"),
    ]
    assert names(forwardable_headers(sent)) == ["Content-Type", "Authorization", "X-Opaque-Id"]


def test_headers_named_by_connection_are_dropped_too():
    sent = [("Connection", "close, X-Private"), ("x-private", "1"), ("Accept", "*/*")]
    assert forwardable_headers(sent) == [("Accept", "*/*")]
    assert response_headers(sent) == [("Accept", "*/*")]


def test_extra_names_can_be_dropped():
    sent = [("x-rerank-enabled", "false"), ("accept-encoding", "gzip")]
    assert forwardable_headers(sent, drop=frozenset({"x-rerank-enabled"})) == [("accept-encoding", "gzip")]


def test_response_headers_keep_content_length_and_repeated_headers():
    got = [
        ("content-type", "application/json"),
        ("content-length", "42"),
        ("transfer-encoding", "chunked"),
        ("warning", "299 a"),
        ("warning", "299 b"),
    ]
    assert response_headers(got) == [
        ("content-type", "application/json"),
        ("content-length", "42"),
        ("warning", "299 a"),
        ("warning", "299 b"),
    ]


def test_hop_by_hop_is_rfc_9110s_list():
    assert {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"} <= HOP_BY_HOP
    assert "content-length" not in HOP_BY_HOP
