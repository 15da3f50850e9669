"""The ASGI application: reads each request once, routes it, and answers every failure
in OpenSearch's error shape. The flows live in their own modules, in the order a
search passes through them: :mod:`routing`, :mod:`search` (or :mod:`msearch`),
:mod:`plan`, :mod:`forwarding` and :mod:`upstream`, :mod:`scoring`, :mod:`rebuild`,
:mod:`responses`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from .admin import Admin
from .bodies import UnreadableBody
from .config import Settings
from .cors import with_cors
from .errors import ClientTimeoutError, ContentTooLongError, MethodNotAllowedError, RerankError
from .experiments.events import EventsEndpoint
from .experiments.flow import ExperimentFlow
from .experiments.record import Recorder
from .forwarding import ClientRequest, Forwarder
from .metrics import Metrics
from .msearch import MsearchFlow
from .rerank_api import RerankApi
from .reranker import OnnxReranker, Reranker
from .responses import error_response
from .routing import OPENSEARCH_METHODS, RouteKind, route
from .scoring import Scorer
from .search import SearchFlow
from .upstream import Transport, Upstream

__all__ = ["RerankProxy", "create_app", "load_rerankers", "read_body"]

logger = logging.getLogger("es_rerank")

# Refusals that leave the rest of a body unread: the connection is closed after them.
_CLOSING = (ContentTooLongError, ClientTimeoutError)


async def read_body(request: Request, *, limit: int, idle_timeout: float) -> bytes:
    """The whole request body, refused past ``limit`` bytes while it is read (OpenSearch's
    http.max_content_length) and when the client stops sending it for ``idle_timeout``."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise ContentTooLongError(f"request body of {length} bytes is larger than the limit of {limit} bytes")
    chunks: list[bytes] = []
    total = 0
    stream = request.stream()
    while True:
        try:
            chunk = await asyncio.wait_for(anext(stream), idle_timeout)
        except StopAsyncIteration:
            return b"".join(chunks)
        except TimeoutError:
            raise ClientTimeoutError(f"no request body bytes for {idle_timeout}s") from None
        total += len(chunk)
        if total > limit:
            raise ContentTooLongError(f"request body is larger than the limit of {limit} bytes")
        chunks.append(chunk)


def load_rerankers(settings: Settings) -> dict[str, Reranker]:
    """One ONNX Runtime session per configured model; with ``shared_cache``, their score
    caches backed by Redis (es_rerank/reranker/_shared_cache.py)."""
    from .reranker._remote import RemoteReranker

    rerankers: dict[str, Reranker] = {
        name: RemoteReranker.from_settings(name, spec)
        if spec.remote is not None
        else OnnxReranker.from_settings(name, spec)
        for name, spec in settings.models.items()
    }
    if settings.shared_cache is not None:
        from .reranker._shared_cache import attach_shared_cache

        attach_shared_cache(rerankers, settings.shared_cache)
    return rerankers


async def _disconnected(request: Request) -> None:
    """Return when the client has closed the connection (its body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class RerankProxy:
    """The proxy. ``upstream`` and ``rerankers`` are passed in, so tests and
    embedders choose the transport and the models."""

    def __init__(
        self,
        settings: Settings,
        *,
        upstream: Transport,
        rerankers: Mapping[str, Reranker],
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self.rerankers = dict(rerankers)
        self.metrics = metrics or Metrics()
        for name, reranker in self.rerankers.items():
            self.metrics.watch_queue(name, reranker.queue_wait_s)
        self.scorer = Scorer(settings.server, self.rerankers, self.metrics)
        self.forwarder = Forwarder(upstream)
        # Experiments: served pages and posted events written to UBI's indices.
        self.recorder = Recorder(upstream, settings.ubi, self.metrics, credentials=settings.upstream)
        self.experiments = ExperimentFlow(settings, self.recorder, self.metrics) if settings.experiments else None
        self.events = EventsEndpoint(settings.ubi, self.recorder)
        self.search = SearchFlow(
            settings,
            forwarder=self.forwarder,
            scorer=self.scorer,
            rerankers=self.rerankers,
            experiments=self.experiments,
        )
        self.msearch = MsearchFlow(self.search)
        self.rerank_api = RerankApi(settings, scorer=self.scorer, rerankers=self.rerankers)  # /v1/rerank, /rerank
        self.admin = Admin(
            settings.server.admin,
            upstream=upstream,
            credentials=settings.upstream,
            rerankers=self.rerankers,
            metrics=self.metrics,
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        started = time.perf_counter()
        try:
            response = await self.handle(request)
            outcome = response.headers.get("x-rerank", "passthrough")
            reason = response.headers.get("x-rerank-reason", "")
        except ClientDisconnect:
            return  # nobody to answer
        except RerankError as exc:
            # A refused body may still be on its way: close the connection rather than read it.
            closing = [("connection", "close")] if isinstance(exc, _CLOSING) else []
            if not isinstance(exc, (*_CLOSING, MethodNotAllowedError)):
                logger.warning("%s %s: %s", request.method, request.url.path, exc.reason)
            response = error_response(exc, closing)
            outcome, reason = "error", exc.type
        except Exception:  # never a stack trace in a response; it goes to the log
            logger.exception("unexpected error on %s %s", request.method, request.url.path)
            response = error_response(RerankError("internal error in es-rerank (see its log)"))
            outcome, reason = "error", "internal"
        await response(scope, receive, send)
        self.metrics.observe_request(
            scope.get("es_rerank.route", "passthrough"),
            scope.get("es_rerank.index", ""),
            outcome,
            reason,
            time.perf_counter() - started,
        )

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.recorder.stop()  # what is queued is written first
                await self.upstream.aclose()
                for reranker in self.rerankers.values():
                    reranker.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        """Start what runs beside the requests: the UBI recorder, when experiments are configured."""
        if self.experiments is not None:
            await self.recorder.start()

    async def _client_request(self, request: Request) -> ClientRequest:
        """The request read once: target as sent, headers, the whole body within the limits."""
        scope = request.scope
        raw_path = (scope.get("raw_path") or scope["path"].encode()).split(b"?", 1)[0]
        query = scope.get("query_string", b"")
        server = self.settings.server
        body = await read_body(request, limit=server.max_content_length, idle_timeout=server.idle_timeout)
        client = ClientRequest(
            method=request.method,
            raw_path=raw_path,
            query=query,
            headers=list(request.headers.items()),
            body=body,
            params=parse_qsl(query.decode("latin-1"), keep_blank_values=True),
            disconnected=lambda: _disconnected(request),
            address=request.client.host if request.client else None,
        )
        if body:
            # Refuse a body, compressed or not, nested deep enough to bring OpenSearch down;
            # inflating a large one is CPU work, kept off the event loop.
            check = lambda: _depth_checked(client, server.max_content_length)  # noqa: E731
            await asyncio.to_thread(check) if len(body) > 65536 else check()
        return client

    async def handle(self, request: Request) -> Response:
        if request.method not in OPENSEARCH_METHODS:
            raise MethodNotAllowedError(
                f"Incorrect HTTP method for uri [{request.url.path}] and method [{request.method}]"
            )
        client = await self._client_request(request)
        where = route(client.method, client.raw_path, self.settings)
        request.scope["es_rerank.route"] = str(where.kind)
        if where.kind is RouteKind.OWN:
            if where.own_path == "ubi/events":  # experiments: UBI events from clients
                return await self.events.handle(client)
            return await self.admin.handle(request, where.own_path)
        if where.kind is RouteKind.SEARCH:
            # Label by the config rule, not the raw index: bounded cardinality.
            request.scope["es_rerank.index"] = where.spec.pattern if where.spec else ""
            return await self.search(client, where.spec)
        if where.kind is RouteKind.RERANK_API:
            return await self.rerank_api(client, where.api)
        if where.kind is RouteKind.MSEARCH:
            return await self.msearch(client, where.target)
        return await self.forwarder.passthrough(client)


def _depth_checked(client: ClientRequest, limit: int) -> None:
    try:
        client.decoded_body(limit)
    except UnreadableBody:
        pass  # not decodable: OpenSearch refuses it itself


def create_app(
    settings: Settings,
    *,
    rerankers: Mapping[str, Reranker] | None = None,
    upstream: Transport | None = None,
) -> RerankProxy:
    """Build the proxy; models are loaded now (so a bad model fails at start)."""
    if rerankers is None:
        rerankers = load_rerankers(settings)
    if upstream is None:
        upstream = Upstream(settings.upstream)
    # With server.cors on, es-rerank answers preflights and every answer carries the headers.
    return with_cors(RerankProxy(settings, upstream=upstream, rerankers=rerankers), settings.server.cors)
