"""Answers the proxy writes itself, framed as OpenSearch frames its own.

A rebuilt search body is JSON laid out as OpenSearch lays it out (compact, or
``?pretty``), with a length, gzip-compressed when the client accepts it (as
``http.compression`` does). An answer relayed from OpenSearch keeps its bytes and
headers, less the hop-by-hop ones.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Sequence
from typing import Any

from starlette.responses import Response

from .bodies import dumps, dumps_pretty
from .errors import RerankError
from .upstream import UpstreamResponse, response_headers

__all__ = ["json_response", "error_response", "dump_for", "rebuilt", "relay", "wants_pretty", "marks"]

Headers = Sequence[tuple[str, str]]


def marks(outcome: str, reason: str) -> list[tuple[str, str]]:
    """The ``x-rerank`` and ``x-rerank-reason`` headers of an answer."""
    return [("x-rerank", str(outcome)), ("x-rerank-reason", str(reason))]


def json_response(body: Any, status: int, headers: Headers = ()) -> Response:
    response = Response(dumps(body), status_code=status, media_type="application/json; charset=UTF-8")
    for key, value in headers:
        response.headers.append(key, value)
    return response


def error_response(exc: RerankError, headers: Headers = ()) -> Response:
    return json_response(exc.to_body(), exc.status, headers)


def wants_pretty(params: Iterable[tuple[str, str]]) -> bool:
    """OpenSearch's ``?pretty``: present and not ``false``."""
    return any(k == "pretty" and v.lower() != "false" for k, v in params)


def dump_for(body: Any, params: Iterable[tuple[str, str]]) -> bytes:
    return dumps_pretty(body) if wants_pretty(params) else dumps(body)


def rebuilt(accept_encoding: str, upstream_headers: Headers, content: bytes) -> UpstreamResponse:
    """A body es-rerank wrote itself, with OpenSearch's headers, a fresh length and
    gzip when the client accepts it."""
    headers = [(k, v) for k, v in upstream_headers if k.lower() not in ("content-length", "content-encoding")]
    if "gzip" in accept_encoding.lower():
        content = gzip.compress(content, compresslevel=3)
        headers.append(("content-encoding", "gzip"))
    headers.append(("content-length", str(len(content))))
    return UpstreamResponse(200, headers, content)


def relay(answer: UpstreamResponse, extra: Headers = ()) -> Response:
    """OpenSearch's answer as it came (less hop-by-hop headers), plus ``extra`` headers."""
    response = Response(answer.content, status_code=answer.status)
    response.raw_headers = [
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in [*response_headers(answer.headers), *extra]
    ]
    return response
