"""CORS answered by es-rerank itself, with OpenSearch's ``http.cors.*`` semantics.

starlette's :class:`~starlette.middleware.cors.CORSMiddleware` wraps the whole proxy,
so the preflight is answered here (never forwarded) and every answer, es-rerank's own
errors and ``/_rerank/*`` included, carries the headers. What is adjusted so it reads
as OpenSearch's ``CorsHandler``:

- ``allow_origin`` is read as ``http.cors.allow-origin`` is: ``*``, a list (or one
  comma-separated string) of origins, or a regular expression between slashes that
  must match the whole origin;
- an ``Origin`` that is not allowed is refused ``403`` with an empty body, the
  preflight and the request itself (OpenSearch forbids both; starlette would answer
  400 to the one and serve the other without headers);
- a request whose ``Origin`` is the very host it was sent to (a page served by
  es-rerank, such as ``/_rerank/ui/``) is same-origin and always allowed;
- the ``Access-Control-*`` headers of an answer relayed from OpenSearch are dropped:
  one policy answers, es-rerank's.

Off (``server.cors.enabled: false``) nothing wraps the proxy: preflights go to
OpenSearch and its CORS headers are relayed, as before.
"""

from __future__ import annotations

import functools
import re
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .config import CorsSettings

__all__ = ["OpenSearchCors", "with_cors", "origins_from"]


def origins_from(allow_origin: str | list[str]) -> tuple[list[str], str | None]:
    """``http.cors.allow-origin`` as (origins, regex): ``"/re/"`` is a regular expression."""
    if isinstance(allow_origin, str):
        value = allow_origin.strip()
        if len(value) > 1 and value.startswith("/") and value.endswith("/"):
            return [], value[1:-1]
        return [o.strip() for o in value.split(",") if o.strip()], None
    return [o.strip() for o in allow_origin if o.strip()], None


def _same_origin(origin: str, headers: Headers) -> bool:
    """The page that sent it was served from the host it was sent to (OpenSearch's isSameOrigin)."""
    host = headers.get("host")
    if not host:
        return False
    return urlsplit(origin).netloc.lower() == host.lower()


class OpenSearchCors(CORSMiddleware):
    """starlette's CORS middleware with OpenSearch's refusals (see the module's docstring)."""

    def __init__(self, app: ASGIApp, settings: CorsSettings) -> None:
        origins, regex = origins_from(settings.allow_origin)
        super().__init__(
            app,
            allow_origins=origins,
            allow_origin_regex=regex,
            allow_methods=[m.upper() for m in settings.allow_methods],
            allow_headers=settings.allow_headers,
            allow_credentials=settings.allow_credentials,
            expose_headers=settings.expose_headers,
            max_age=settings.max_age,
        )
        self.cors = settings
        if regex is not None:
            # Java's Pattern.matches: the whole origin (starlette's fullmatch, made explicit).
            self.allow_origin_regex = re.compile(regex)

    def __getattr__(self, name: str) -> Any:
        # The proxy's own attributes (settings, rerankers, scorer...) stay reachable on the
        # object create_app returns.
        if name == "app":
            raise AttributeError(name)
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is not None and not self.is_allowed_origin(origin):
            if _same_origin(origin, headers):
                # Same origin: no CORS answer needed; OpenSearch's headers are dropped all the same.
                await self.app(scope, receive, functools.partial(_strip_cors, send=send))
                return
            await _forbidden()(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def send(self, message: Message, send: Send, request_headers: Headers) -> None:
        if message["type"] == "http.response.start":
            _drop_upstream_cors(message)
        await super().send(message, send, request_headers)


def _forbidden() -> Response:
    return Response(b"", status_code=403)


def _drop_upstream_cors(message: Message) -> None:
    message["headers"] = [(k, v) for k, v in message.get("headers", []) if not k.lower().startswith(b"access-control-")]


async def _strip_cors(message: Message, send: Send) -> None:
    if message["type"] == "http.response.start":
        _drop_upstream_cors(message)
    await send(message)


def with_cors(app: Any, settings: CorsSettings) -> Any:
    """``app`` behind es-rerank's CORS when ``settings.enabled``, else ``app`` itself."""
    return OpenSearchCors(app, settings) if settings.enabled else app
