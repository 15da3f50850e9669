"""A broken HTTP server on loopback, standing for an OpenSearch gone wrong.

Each request's behaviour is chosen by the first path segment (``/ft-hang/_search``
hangs, ``/ft-html/_search`` answers a 200 web page, ...). Every request and
connection is recorded, so tests can assert what reached it and how.
"""

from __future__ import annotations

import gzip
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

HIT = {"_index": "ft", "_id": "1", "_score": 1.0, "_source": {"title": "a title", "text": "some text"}}


def search_answer(hits: object = None) -> dict:
    hits = (
        {"total": {"value": 2, "relation": "eq"}, "max_score": 1.0, "hits": [HIT, {**HIT, "_id": "2"}]}
        if hits is None
        else hits
    )
    return {
        "took": 1,
        "timed_out": False,
        "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
        "hits": hits,
    }


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    connection: int


@dataclass
class FaultyUpstream:
    """Serves in threads until closed; ``url`` is where it listens."""

    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    seen: threading.Event = field(default_factory=threading.Event)

    port: int = 0

    def __post_init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        for conn in self._held:
            try:
                conn.close()
            except OSError:
                pass

    def __enter__(self) -> FaultyUpstream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
            self._held.append(conn)
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _read_request(self, conn: socket.socket, buf: bytes) -> tuple[Seen | None, bytes]:
        while b"\r\n\r\n" not in buf:
            chunk = conn.recv(65536)
            if not chunk:
                return None, b""
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if headers.get("expect", "").lower() == "100-continue" and not rest:
            # Never send 100 Continue: a client that waits for it stalls.
            return Seen(method, target, headers, b"", 0), b""
        while len(rest) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            rest += chunk
        return Seen(method, target, headers, rest[:length], 0), rest[length:]

    def _serve(self, conn: socket.socket, number: int) -> None:
        buf = b""
        try:
            while True:
                seen, buf = self._read_request(conn, buf)
                if seen is None:
                    return
                seen.connection = number
                self.requests.append(seen)
                self.seen.set()
                if not self._answer(conn, seen):
                    return
        except OSError:
            return

    @staticmethod
    def _send(conn: socket.socket, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        head = [f"HTTP/1.1 {status} X", f"content-length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in (headers or {"content-type": "application/json; charset=UTF-8"}).items()]
        conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)

    def _answer(self, conn: socket.socket, seen: Seen) -> bool:
        """Answer one request; False: stop serving this connection (it stays open, unread)."""
        kind = seen.target.lstrip("/").split("/", 1)[0].split("?", 1)[0]
        json_type = {"content-type": "application/json; charset=UTF-8"}
        if kind == "ft-hang":
            return False
        if kind == "ft-reset":
            conn.sendall(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{"took"')
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            return False
        if kind == "ft-truncated":
            body = json.dumps(search_answer()).encode()[:-20]
            self._send(conn, 200, body, json_type)
        elif kind == "ft-html":
            self._send(conn, 200, b"<html><body>maintenance</body></html>", {"content-type": "text/html"})
        elif kind == "ft-badgzip":
            self._send(conn, 200, b"\x1f\x8b\x08\x00garbage", {**json_type, "content-encoding": "gzip"})
        elif kind in ("ft-hitsnull", "ft-hitsstr", "ft-hitsnum", "ft-hitshits"):
            hits = {"ft-hitsnull": None, "ft-hitsstr": "x", "ft-hitsnum": 3, "ft-hitshits": {"hits": {"a": 1}}}[kind]
            self._send(conn, 200, json.dumps({**search_answer(), "hits": hits}).encode(), json_type)
        elif kind == "ft-slow":
            time.sleep(0.3)
            self._send(conn, 200, json.dumps(search_answer()).encode(), json_type)
        elif kind == "ft-gzip":
            self._send(
                conn,
                200,
                gzip.compress(json.dumps(search_answer()).encode()),
                {**json_type, "content-encoding": "gzip"},
            )
        elif kind == "ft-poison":
            # A decoder left mid-frame: a 400, then the connection never answers again.
            self._send(conn, 400, b'{"error":"bad frame","status":400}', json_type)
            return False
        else:
            self._send(conn, 200, json.dumps(search_answer()).encode(), json_type)
        return True
