"""The HTTP/1.1 server side: uvicorn's httptools protocol with OpenSearch's limits.

uvicorn answers a request it cannot parse with a plain-text 400, keeps a connection
that never finishes its headers open for ever, buffers a header of any size and
rejects request targets OpenSearch serves (``GET *``, raw UTF-8 in a query string).
:class:`ProxyHttpProtocol` closes those gaps where they arise, in the protocol,
before any application code runs:

- the request line and the header block are limited as OpenSearch limits them
  (``http.max_initial_line_length`` 4 kB, ``http.max_header_size`` 8 kB) and refused
  with OpenSearch's own 400 bodies;
- a request target is always made origin-form (``*`` -> ``/*``, ``_cat/health`` ->
  ``/_cat/health``), as OpenSearch reads it, and bytes outside ASCII are percent-encoded,
  so nothing in a target can name another host;
- a connection must finish its headers within ``header_timeout`` of its first byte and
  is closed after ``idle_timeout`` without a request;
- at most ``max_connections`` are open at once; one more is answered 503 and closed;
- every answer made here is in OpenSearch's error shape and closes the connection.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any

import httptools
import simplejson
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .errors import error_body

__all__ = ["Limits", "ProxyHttpProtocol", "uvicorn_config", "limits_from"]

logger = logging.getLogger("es_rerank.http")

_NOT_VISIBLE_ASCII = re.compile(rb"[^\x21-\x7e]")


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client may cost the proxy (OpenSearch's defaults where it has one)."""

    max_initial_line: int = 4096
    max_header_size: int = 8192
    header_timeout: float = 30.0
    idle_timeout: float = 60.0
    max_connections: int = 1000


def limits_from(server: Any) -> Limits:
    """The limits a :class:`~es_rerank.config.ServerSettings` names."""
    return Limits(
        max_initial_line=server.max_initial_line_length,
        max_header_size=server.max_header_size,
        header_timeout=server.header_timeout,
        idle_timeout=server.idle_timeout,
        max_connections=server.max_connections,
    )


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing; the answer is already chosen."""


def _as_opensearch_reads_it(match: re.Match) -> bytes:
    # OpenSearch reads a raw byte of a target as the ISO-8859-1 character it codes;
    # percent-encoding that character's UTF-8 hands OpenSearch (and the proxy's own
    # parsing) the very same character.
    return "".join(f"%{b:02X}" for b in chr(match.group()[0]).encode()).encode()


def origin_form(target: bytes) -> bytes:
    """A request target as OpenSearch reads it: a path from the root, ASCII only."""
    target = _NOT_VISIBLE_ASCII.sub(_as_opensearch_reads_it, target)
    return target if target.startswith(b"/") else b"/" + target


def _origin_form_line(line: bytes) -> bytes:
    """A request line with its target made origin-form (the parser refuses the others)."""
    parts = line.split(b" ")
    if len(parts) < 3:
        return line  # not a request line: the parser judges it
    return b" ".join([parts[0], origin_form(b" ".join(parts[1:-1])), parts[-1]])


def shaped_answer(status: int, type_: str, reason: str) -> bytes:
    """A whole HTTP answer in OpenSearch's error shape that closes the connection."""
    body = simplejson.dumps(error_body(type_, reason, status), separators=(",", ":")).encode()
    return b"".join(
        [
            STATUS_LINE[status],
            b"content-type: application/json; charset=UTF-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class ProxyHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above; ``limits`` is set by :func:`uvicorn_config`."""

    limits: Limits = Limits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = int(max(1, self.limits.idle_timeout))
        self._in_head = False
        self._in_message = False
        self._line = b""  # the start of a request line, until it ends
        self._head_bytes = 0
        self._header_bytes = 0
        self._refusal: tuple[int, str, str] | None = None
        self._header_timer: asyncio.TimerHandle | None = None

    # -- connection --------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            logger.warning("refusing a connection: %d open (server.max_connections)", len(self.connections) - 1)
            self._refuse(
                503,
                "rerank_too_many_connections_exception",
                f"es-rerank holds its maximum of {self.limits.max_connections} connections",
            )
            return
        # An idle new connection is closed like an idle kept-alive one.
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        if not self.transport.is_closing():
            logger.info("closing a connection that sent no complete header block in %.0f s", self.limits.header_timeout)
            self.transport.close()

    def _refuse(self, status: int, type_: str, reason: str) -> None:
        self._cancel_header_timer()
        self._unset_keepalive_if_required()
        if not self.transport.is_closing():
            self.transport.write(shaped_answer(status, type_, reason))
            self.transport.close()

    # -- parsing -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if not self._in_message:
            # A new request: its line is rewritten before the parser sees it, which
            # refuses raw UTF-8 and targets that are not origin-form that OpenSearch serves.
            data, self._line = self._line + data, b""
            if self._header_timer is None:  # the request's headers are due from its first byte
                self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timeout)
            end = data.find(b"\n")
            if end < 0:
                if len(data) > self.limits.max_initial_line:
                    self._refuse(400, "too_long_http_line_exception", self._line_too_long())
                else:
                    self._line = data
                return
            data = _origin_form_line(data[:end]) + data[end:]
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # OpenSearch upgrades nothing: the request is served as HTTP/1.1
        except httptools.HttpParserError as exc:
            refusal = self._refusal or (400, "rerank_http_parse_exception", f"invalid HTTP request: {exc}")
            logger.info("refused a request: %s", refusal[2])
            self._refuse(*refusal)
            return
        # httptools holds a header value until it ends: bound what it may hold.
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_initial_line + self.limits.max_header_size + 4:
                self._refuse(*self._too_long_header())

    def _line_too_long(self) -> str:
        return f"An HTTP line is larger than {self.limits.max_initial_line} bytes."

    def _too_long_header(self) -> tuple[int, str, str]:
        return 400, "too_long_http_header_exception", f"HTTP header is larger than {self.limits.max_header_size} bytes."

    def _stop(self, status: int, type_: str, reason: str) -> None:
        self._refusal = (status, type_, reason)
        raise _Refused(reason)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_message = True
        self._in_head = True
        self._head_bytes = 0
        self._header_bytes = 0
        self._refusal = None
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timeout)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) + 16 > self.limits.max_initial_line:
            self._stop(400, "too_long_http_line_exception", self._line_too_long())

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.limits.max_header_size:
            self._stop(*self._too_long_header())
        super().on_header(name, value)

    def on_message_complete(self) -> None:
        self._in_message = False
        super().on_message_complete()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_header_timer()
        self.url = origin_form(self.url)
        super().on_headers_complete()


def uvicorn_config(
    app: Any, *, host: str, port: int, limits: Limits = Limits(), log_level: str = "info", **kwargs: Any
) -> uvicorn.Config:
    """uvicorn's config for the proxy: its protocol and limits, and no headers OpenSearch does not send."""
    protocol = type("ProxyHttpProtocol", (ProxyHttpProtocol,), {"limits": limits})
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        log_level=log_level,
        timeout_keep_alive=int(max(1, limits.idle_timeout)),
        server_header=False,
        date_header=False,
        **kwargs,
    )
