"""Raw HTTP/1.1 over a socket: for requests no client library would send."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def read_answer(sock: socket.socket, *, head: bool = False) -> Answer | None:
    """One answer from ``sock``, or None when the server closed without one."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
    raw_head, _, body = buf.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if status == 100:  # an interim answer: the real one follows
        rest = socket_with_buffer(sock, body)
        return read_answer(rest, head=head)
    if head:
        return Answer(status, headers, b"")
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while not body.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        body = _unchunk(body)
    return Answer(status, headers, body)


class socket_with_buffer:  # noqa: N801 - a socket look-alike
    def __init__(self, sock: socket.socket, buffered: bytes) -> None:
        self.sock, self.buffered = sock, buffered

    def recv(self, n: int) -> bytes:
        if self.buffered:
            out, self.buffered = self.buffered[:n], self.buffered[n:]
            return out
        return self.sock.recv(n)


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out


def connect(port: int, timeout: float = 30) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def exchange(port: int, data: bytes, *, timeout: float = 30, head: bool = False) -> Answer | None:
    """Send ``data`` on a new connection and read one answer (None: closed without one)."""
    with connect(port, timeout) as sock:
        sock.sendall(data)
        try:
            return read_answer(sock, head=head)
        except ConnectionResetError:
            return None


def request(method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    headers = dict(headers or {})
    if body and "content-length" not in {k.lower() for k in headers}:
        headers["Content-Length"] = str(len(body))
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def is_shaped_error(answer: Answer) -> bool:
    """OpenSearch's error shape: {"error": {"root_cause": [...], "type", "reason"}, "status"}."""
    try:
        body = answer.json()
    except ValueError:
        return False
    error = body.get("error") if isinstance(body, dict) else None
    return (
        isinstance(error, dict)
        and isinstance(error.get("root_cause"), list)
        and isinstance(error.get("type"), str)
        and isinstance(error.get("reason"), str)
        and body.get("status") == answer.status
    )
