"""The proxy in front of a broken upstream (tests/faulty_upstream.py) and hostile clients.

A faulty server stands for an OpenSearch gone wrong; the proxy must answer every
case with a 502/504 in OpenSearch's error shape that names the cause, never a 500,
never reach any other host, and never let one client's request cost another client.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading

import pytest
from faulty_upstream import FaultyUpstream
from rawhttp import connect, exchange, is_shaped_error, read_answer, request

from es_rerank import create_app, settings_from_dict

SEARCH = json.dumps({"query": {"match": {"title": "a title"}}}).encode()
JSON = {"Content-Type": "application/json"}


def _settings(upstream_url: str, model_dir, **server) -> object:
    return settings_from_dict(
        {
            "upstream": {"url": upstream_url, "timeout": 3, "connect_timeout": 3},
            "server": server,
            "models": {"tiny": {"path": str(model_dir)}},
            "indices": [{"pattern": "ft-*", "model": "tiny", "fields": ["title", "text"], "window": 2}],
        },
        env={},
    )


@pytest.fixture(scope="module")
def faulty():
    with FaultyUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def proxy(faulty, tiny_model_dir, serve_app):
    app = create_app(
        _settings(
            faulty.url,
            tiny_model_dir,
            max_content_length=1_000_000,
            header_timeout=0.5,
            idle_timeout=1.0,
            max_connections=40,
        )
    )
    with serve_app(app) as served:
        yield served


@pytest.mark.parametrize(
    "kind, status, cause",
    [
        ("ft-truncated", 502, "not JSON"),
        ("ft-html", 502, "not JSON"),
        ("ft-badgzip", 502, "does not decompress"),
        ("ft-hitsnull", 502, "[hits]"),
        ("ft-hitsstr", 502, "[hits]"),
        ("ft-hitsnum", 502, "[hits]"),
        ("ft-hitshits", 502, "[hits.hits]"),
        ("ft-reset", 502, "OpenSearch at"),
        ("ft-hang", 504, "did not answer"),
    ],
)
def test_a_bad_upstream_answer_is_a_502_or_504_that_names_the_cause(proxy, kind, status, cause):
    answer = exchange(proxy.port, request("POST", f"/{kind}/_search", SEARCH, JSON))
    assert answer is not None and answer.status == status, answer
    assert is_shaped_error(answer)
    assert cause in answer.json()["error"]["reason"]


def test_a_slow_or_compressed_upstream_answer_is_reranked(proxy):
    for kind in ("ft-slow", "ft-gzip"):
        answer = exchange(proxy.port, request("POST", f"/{kind}/_search", SEARCH, JSON))
        assert answer.status == 200 and answer.headers["x-rerank"] == "reranked", (kind, answer)
        assert [h["_id"] for h in answer.json()["hits"]["hits"]] in (["1", "2"], ["2", "1"])


def test_a_refusing_upstream_is_a_502_that_names_its_address(tiny_model_dir, serve_app, caplog):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(_settings(f"http://127.0.0.1:{port}", tiny_model_dir))
    caplog.set_level("INFO", logger="es_rerank.upstream")
    with serve_app(app) as served:
        for target in ("/ft-x/_search", "/_cat/health"):
            answer = exchange(
                served.port,
                request("POST" if "search" in target else "GET", target, SEARCH if "search" in target else b"", JSON),
            )
            assert answer.status == 502 and is_shaped_error(answer)
            assert f"127.0.0.1:{port}" in answer.json()["error"]["reason"]
        health = exchange(served.port, request("GET", "/_rerank/health"))
        assert health.status == 503 and health.json()["upstream"]["reachable"] is False
    # Three failed requests, one line: the log says when the state changes, not each time.
    changes = [r for r in caplog.records if r.name == "es_rerank.upstream"]
    assert len(changes) == 1 and f"127.0.0.1:{port}" in changes[0].getMessage()


def test_the_log_says_when_the_upstream_comes_back(tiny_model_dir, serve_app, caplog):
    """Down, then up: one line each (the upstream here starts after the first failure)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    caplog.set_level("INFO", logger="es_rerank.upstream")
    with serve_app(create_app(_settings(f"http://127.0.0.1:{port}", tiny_model_dir))) as served:
        assert exchange(served.port, request("GET", "/_rerank/health")).status == 503
        upstream = FaultyUpstream(port=port)
        try:
            assert exchange(served.port, request("GET", "/_rerank/health")).status == 200
            assert exchange(served.port, request("GET", "/_rerank/health")).status == 200
        finally:
            upstream.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "es_rerank.upstream"]
    assert len(lines) == 2 and "unavailable" in lines[0] and "reachable" in lines[1]


def test_a_100_mb_body_with_the_default_limits_costs_other_clients_nothing(faulty, tiny_model_dir, serve_app):
    app = create_app(_settings(faulty.url, tiny_model_dir))  # max_content_length: 100 MB
    with serve_app(app) as served:
        outcome = {}

        def upload() -> None:
            with connect(served.port, timeout=120) as sock:
                sock.sendall(request("POST", "/ft-ok/_bulk", b"", {**JSON, "Transfer-Encoding": "chunked"}))
                chunk = b"x" * (1 << 20)
                try:
                    for _ in range(101):
                        sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sock.sendall(b"0\r\n\r\n")
                except OSError:
                    pass  # refused mid-way: the answer is waiting
                outcome["big"] = read_answer(sock)

        worker = threading.Thread(target=upload)
        worker.start()
        assert _served_by(served.port)
        worker.join(120)
        assert outcome["big"].status == 413 and is_shaped_error(outcome["big"])


# -- nobody reaches past the upstream --------------------------------------------


class Listener:
    """A TCP port that must never be connected to."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.0)
        self.port = self.sock.getsockname()[1]

    def accepted(self) -> int:
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, OSError):
                return count
            conn.close()
            count += 1


@pytest.mark.parametrize("method", ["GET", "POST", "OPTIONS", "CONNECT", "PUT"])
def test_no_request_target_or_header_reaches_another_host(proxy, faulty, method):
    listener = Listener()
    here = f"127.0.0.1:{listener.port}"
    targets = [
        f"*@{here}/_ssrf",
        f"*@{here}",
        f"http://{here}/_ssrf",
        f"http://user:pw@{here}/_ssrf",
        f"//{here}/_ssrf",
        f"{here}",
        f"@{here}/x",
        f"/ft-x/_search/../../@{here}/",
        "*",
    ]
    for target in targets:
        for headers in ({"Host": here}, {"X-Forwarded-Host": here, "Forwarded": f"host={here}"}):
            data = request(method, target, SEARCH if method == "POST" else b"", {**headers, **JSON})
            data = data.replace(b"Host: 127.0.0.1\r\n", b"", 1) if "Host" in headers else data
            answer = exchange(proxy.port, data)
            assert answer is None or answer.status < 500 or answer.status in (502, 504), (target, answer)
    assert listener.accepted() == 0
    # Whatever went upstream went to the configured upstream, as an origin-form path.
    assert faulty.requests and all(seen.target.startswith("/") for seen in faulty.requests)


def test_an_upstream_connection_that_answered_a_400_is_not_reused(proxy, faulty):
    """A decoder left mid-frame (the 400, then silence) must not stall the next client."""
    answer = exchange(proxy.port, request("GET", "/ft-poison/x"))
    assert answer.status == 400
    poisoned = faulty.requests[-1].connection
    victim = exchange(proxy.port, request("POST", "/ft-ok/_search", SEARCH, JSON))
    assert victim.status == 200 and victim.headers["x-rerank"] == "reranked"
    assert faulty.requests[-1].connection != poisoned


def test_expect_100_continue_is_not_forwarded(proxy, faulty):
    with connect(proxy.port) as sock:
        head = request(
            "POST", "/ft-ok/_search", b"", {**JSON, "Content-Length": str(len(SEARCH)), "Expect": "100-continue"}
        )
        sock.sendall(head)
        interim = sock.recv(64)  # the proxy itself invites the body
        assert interim.startswith(b"HTTP/1.1 100")
        sock.sendall(SEARCH)
        answer = read_answer(sock)
    assert answer.status == 200 and answer.headers["x-rerank"] == "reranked"
    assert "expect" not in faulty.requests[-1].headers


# -- one client cannot cost another ------------------------------------------------


def _served_by(port: int) -> bool:
    answer = exchange(port, request("POST", "/ft-ok/_search", SEARCH, JSON))
    return answer is not None and answer.status == 200


def test_an_oversized_header_is_refused_as_opensearch_refuses_it_and_costs_others_nothing(proxy, faulty):
    before = len(faulty.requests)
    answer = exchange(proxy.port, request("GET", "/", b"", {"X-Big": "a" * 16_000}))
    assert answer.status == 400 and is_shaped_error(answer)
    assert answer.json()["error"]["type"] == "too_long_http_header_exception"
    line = exchange(proxy.port, request("GET", "/" + "a" * 5000))
    assert line.status == 400 and line.json()["error"]["type"] == "too_long_http_line_exception"
    assert len(faulty.requests) == before  # neither reached the upstream
    assert _served_by(proxy.port)


def test_a_slow_client_is_closed_after_header_timeout_and_others_are_served_meanwhile(proxy):
    with connect(proxy.port) as slow:
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and never finishes
        assert _served_by(proxy.port)
        assert slow.recv(100) == b""  # closed by the proxy (header_timeout 0.5 s)


def test_an_idle_connection_is_closed_after_idle_timeout(proxy):
    with connect(proxy.port) as idle:
        assert idle.recv(100) == b""  # idle_timeout 1 s


def test_a_body_past_the_limit_is_refused_while_it_is_read(proxy, faulty):
    before = len(faulty.requests)
    declared = exchange(proxy.port, request("POST", "/ft-ok/_search", b"", {**JSON, "Content-Length": "101000000"}))
    assert declared.status == 413 and is_shaped_error(declared)
    assert declared.headers.get("connection") == "close"
    with connect(proxy.port) as sock:
        sock.sendall(request("POST", "/ft-ok/_search", b"", {**JSON, "Transfer-Encoding": "chunked"}))
        chunk = b"x" * 65536
        answer = None
        for _ in range(40):  # 2.6 MB offered against a 1 MB limit
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                break
        answer = read_answer(sock)
    assert answer.status == 413 and is_shaped_error(answer)
    assert len(faulty.requests) == before
    assert _served_by(proxy.port)


def test_a_compressed_body_that_inflates_past_the_limit_is_not_read(proxy, faulty):
    bomb = gzip.compress(b'{"query":{"match":{"title":"' + b"a" * 2_000_000 + b'"}}}')
    answer = exchange(proxy.port, request("POST", "/ft-ok/_search", bomb, {**JSON, "Content-Encoding": "gzip"}))
    # Not parsed by the proxy: passed to the upstream as it came, for it to judge.
    assert answer.status == 200 and answer.headers["x-rerank"] == "skipped"
    assert answer.headers["x-rerank-reason"] == "unparsed_body"


def test_connections_past_the_cap_are_refused_and_the_rest_keep_working(tiny_model_dir, faulty, serve_app):
    app = create_app(_settings(faulty.url, tiny_model_dir, max_connections=4, idle_timeout=30))
    with serve_app(app) as served:
        held = [connect(served.port) for _ in range(4)]
        try:
            # Each held connection is registered once it has sent a request.
            for sock in held:
                sock.sendall(request("GET", "/ft-ok/x"))
                assert read_answer(sock).status == 200
            refused = exchange(served.port, request("GET", "/ft-ok/x"))
            assert refused.status == 503 and is_shaped_error(refused)
        finally:
            for sock in held:
                sock.close()
        # Closed ones make room again (the server notices the close, then accepts).
        done = threading.Event()

        def retry() -> None:
            for _ in range(200):
                answer = exchange(served.port, request("GET", "/ft-ok/x"))
                if answer is not None and answer.status == 200:
                    done.set()
                    return

        worker = threading.Thread(target=retry)
        worker.start()
        worker.join(60)
        assert done.is_set()


@pytest.mark.parametrize(
    "data",
    [
        b"GET /_search?q=caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"get / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"FOO / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PROPFIND / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /ft-ok/_search HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    ],
)
def test_every_answer_of_the_proxys_own_making_is_opensearch_shaped(proxy, data):
    answer = exchange(proxy.port, data)
    assert answer is not None
    if answer.status >= 400:
        assert is_shaped_error(answer), answer
    assert answer.status < 500, answer
