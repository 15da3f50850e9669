"""The ASGI application: routes requests to the rerank flow or through to OpenSearch."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import time
from typing import Any, Awaitable, Mapping
from urllib.parse import parse_qsl, urlencode

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from .config import IndexSettings, Settings
from .errors import RerankError, error_body
from .reranker import OnnxReranker, Reranker
from .metrics import CONTENT_TYPE_LATEST, Metrics, RequestTimings
from .msearch import item_target, parse_msearch, serialize_msearch
from .scoring import Outcome, Scorer
from .search import SearchPlan, passthrough_plan, plan_search
from .upstream import Upstream, UpstreamResponse, forwardable_headers, response_headers

__all__ = ["RerankProxy", "create_app", "load_rerankers"]

logger = logging.getLogger("es_rerank")

_JSON_TYPES = ("application/json", "application/x-ndjson", "text/plain")
_OFF = {"false", "0", "off", "no"}


def _json_response(body: Any, status: int, headers: list[tuple[str, str]] | None = None) -> Response:
    content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    response = Response(content, status_code=status, media_type="application/json; charset=UTF-8")
    for key, value in headers or []:
        response.headers.append(key, value)
    return response


def _dumps(body: Any, params) -> bytes:
    pretty = any(k == "pretty" and v.lower() != "false" for k, v in params)
    if pretty:
        return json.dumps(body, indent=2, ensure_ascii=False).encode()
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _no_encoding(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    # The proxy parses what it asks for: no compression on that leg.
    return [(k, v) for k, v in headers if k.lower() != "accept-encoding"]


def _rebuilt(request: Request, answer_headers: list[tuple[str, str]], content: bytes) -> UpstreamResponse:
    """A body es-rerank wrote itself, framed as OpenSearch frames its own: with a
    length, and gzip-compressed when the client accepts it (as http.compression does)."""
    headers = [(k, v) for k, v in answer_headers if k.lower() not in ("content-length", "content-encoding")]
    if "gzip" in request.headers.get("accept-encoding", "").lower():
        content = gzip.compress(content, compresslevel=3)
        headers.append(("content-encoding", "gzip"))
    headers.append(("content-length", str(len(content))))
    return UpstreamResponse(200, headers, content)


def error_response(exc: RerankError) -> Response:
    return _json_response(exc.to_body(), exc.status)


def load_rerankers(settings: Settings) -> dict[str, Reranker]:
    """One ONNX Runtime session per configured model."""
    return {name: OnnxReranker.from_settings(name, spec) for name, spec in settings.models.items()}


class RerankProxy:
    """The proxy. ``upstream`` and ``rerankers`` are passed in, so tests and
    embedders choose the transport and the models."""

    def __init__(
        self,
        settings: Settings,
        *,
        upstream: Upstream,
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

    async def __call__(self, scope, receive, send) -> None:
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
        except RerankError as exc:
            response = error_response(exc)
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

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.upstream.aclose()
                for reranker in self.rerankers.values():
                    close = getattr(reranker, "close", None)
                    if close is not None:
                        close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- routing ---------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        path = request.url.path
        if path.startswith("/_rerank/"):
            request.scope["es_rerank.route"] = "own"
            return await self._own_endpoint(request, path)
        parts = path.strip("/").split("/")
        if (
            len(parts) == 2
            and parts[1] == "_search"
            and request.method in ("GET", "POST")
            and parts[0]
            and not parts[0].startswith("_")
        ):
            spec = self.settings.index_for(parts[0])
            if spec is not None:
                # Label by the config rule, not the raw index: bounded cardinality.
                request.scope.update({"es_rerank.route": "search", "es_rerank.index": spec.pattern})
                return await self.search(request, spec)
        if parts[-1] == "_msearch" and len(parts) <= 2 and request.method in ("GET", "POST"):
            target = parts[0] if len(parts) == 2 and not parts[0].startswith("_") else None
            if len(parts) == 1 or target is not None:
                request.scope["es_rerank.route"] = "msearch"
                return await self.msearch(request, target)
        return await self.passthrough(request)

    async def _own_endpoint(self, request: Request, path: str) -> Response:
        if path == "/_rerank/health" and request.method in ("GET", "HEAD"):
            models = {name: {**r.info(), "queue_wait_s": r.queue_wait_s()} for name, r in self.rerankers.items()}
            return _json_response({"status": "ok", "models": models}, 200)
        if path == "/_rerank/metrics" and request.method == "GET":
            return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)
        return _json_response(
            error_body("rerank_resource_not_found_exception", f"no es-rerank endpoint [{path}]", 404),
            404,
        )

    # -- pass-through ----------------------------------------------------------

    @staticmethod
    def _raw_target(request: Request) -> tuple[bytes, bytes]:
        scope = request.scope
        raw_path = scope.get("raw_path") or scope["path"].encode()
        return raw_path.split(b"?", 1)[0], scope.get("query_string", b"")

    async def passthrough(self, request: Request, *, extra: list[tuple[str, str]] = ()) -> Response:
        raw_path, query = self._raw_target(request)
        body = await request.body()
        answer = await self.upstream.request(
            request.method,
            raw_path,
            query,
            headers=forwardable_headers(request.headers.items()),
            content=body,
        )
        return self._relay(answer, extra)

    @staticmethod
    def _relay(answer: UpstreamResponse, extra=()) -> Response:
        response = Response(answer.content, status_code=answer.status)
        response.raw_headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in [*response_headers(answer.headers), *extra]
        ]
        return response

    # -- the rerank flow -------------------------------------------------------

    async def search(self, request: Request, spec: IndexSettings) -> Response:
        started = time.perf_counter()
        raw_path, query = self._raw_target(request)
        body_bytes = await request.body()
        content_type = request.headers.get("content-type", "application/json").lower()
        params = parse_qsl(query.decode("latin-1"), keep_blank_values=True)

        body: Any = None
        if body_bytes.strip():
            if not content_type.startswith(_JSON_TYPES):
                return await self.passthrough(request, extra=[("x-rerank", "skipped"), ("x-rerank-reason", "content_type")])
            try:
                body = json.loads(body_bytes)
            except ValueError:
                # OpenSearch answers malformed JSON with its own error: let it.
                return await self.passthrough(request, extra=[("x-rerank", "skipped"), ("x-rerank-reason", "unparsed_body")])
        if any(k in ("source", "source_content_type") for k, _ in params):
            return await self.passthrough(request, extra=[("x-rerank", "skipped"), ("x-rerank-reason", "source_param")])

        plan = self._plan(spec, body, params, request)
        if plan.rerank and self._overloaded(plan, spec):
            # The model could not score this in time even if it were first in line after the
            # work queued now: answer OpenSearch's own response, as cheaply as a skip.
            plan = passthrough_plan(body, params, "overloaded")
        headers = forwardable_headers(request.headers.items(), drop=frozenset({"content-type"}))
        marks = [("x-rerank", "reranked" if plan.rerank else "skipped"), ("x-rerank-reason", plan.reason)]
        if not plan.rerank:
            if plan.body == body:  # nothing of ours to strip: send the bytes as they came
                return await self.passthrough(request, extra=marks)
            answer = await self.upstream.request(
                request.method,
                raw_path,
                query,
                headers=[*headers, ("content-type", "application/json")],
                content=json.dumps(plan.body).encode(),
            )
            return self._relay(answer, marks)

        t_upstream = time.perf_counter()
        answer = await self.upstream.request(
            "POST",
            raw_path,
            urlencode(plan.params).encode(),
            headers=[*_no_encoding(headers), ("content-type", "application/json")],
            content=json.dumps(plan.body).encode(),
            decode=True,
        )
        upstream_ms = (time.perf_counter() - t_upstream) * 1000
        if answer.status != 200:
            return self._relay(answer, [("x-rerank", "skipped"), ("x-rerank-reason", "upstream_error")])
        rebuilt, scored, timings = await self._rerank(
            plan, spec, json.loads(answer.content), started, upstream_ms, client_gone=_disconnect(request)
        )
        extra = [
            ("x-rerank", scored.outcome),
            ("x-rerank-reason", scored.reason),
            ("x-rerank-model", scored.model),
            ("x-rerank-provider", str(self.rerankers[scored.model].info().get("provider", ""))),
            ("x-rerank-window", str(scored.window)),
            *timings.headers(),
            ("x-rerank-total-ms", f"{(time.perf_counter() - started) * 1000:.1f}"),
        ]
        return self._relay(_rebuilt(request, answer.headers, _dumps(rebuilt, params)), extra)

    def _overloaded(self, plan: SearchPlan, spec: IndexSettings) -> bool:
        """Every model the search could use has a queue that alone outlasts the budget."""
        return self.scorer.overloaded(plan, spec)

    def _plan(self, spec: IndexSettings, body: Any, params, request: Request) -> SearchPlan:
        return plan_search(
            spec,
            body,
            params,
            models=list(self.rerankers),
            default_model=self.settings.model_for(spec),
            disabled_by_header=request.headers.get("x-rerank-enabled", "").lower() in _OFF,
        )

    async def _rerank(
        self, plan: SearchPlan, spec: IndexSettings, data: dict, started: float, upstream_ms: float,
        client_gone: Awaitable[None] | None = None,
    ):
        """Score (degrading as the index says), reorder and rebuild one search response
        (:mod:`es_rerank.scoring`): ``(rebuilt, Scored, RequestTimings)``."""
        return await self.scorer.rerank(plan, spec, data, started, upstream_ms, client_gone)

    async def msearch(self, request: Request, default_target: str | None) -> Response:
        """Each item planned as a ``_search``; one upstream ``_msearch``; items scored concurrently."""
        started = time.perf_counter()
        raw_path, query = self._raw_target(request)
        pairs = parse_msearch(await request.body())
        if pairs is None:
            return await self.passthrough(request, extra=[("x-rerank", "skipped"), ("x-rerank-reason", "unparsed_body")])
        items: list[tuple[IndexSettings, SearchPlan] | RerankError | None] = []
        for header, body in pairs:
            target = item_target(header, default_target)
            spec = self.settings.index_for(target) if target else None
            if spec is None:
                items.append(None)
                continue
            try:
                items.append((spec, self._plan(spec, body, [], request)))
            except RerankError as exc:
                items.append(exc)
        if all(item is None for item in items):
            return await self.passthrough(request, extra=[("x-rerank", "skipped"), ("x-rerank-reason", "no_configured_index")])

        if all(isinstance(item, RerankError) for item in items):
            body = {"took": 0, "responses": [item.to_body() for item in items]}
            return _json_response(body, 200, [("x-rerank", "skipped"), ("x-rerank-reason", "invalid_items")])
        forward = [
            (header, item[1].body if isinstance(item, tuple) else body)
            for (header, body), item in zip(pairs, items)
            if not isinstance(item, RerankError)
        ]
        headers = forwardable_headers(request.headers.items(), drop=frozenset({"content-type"}))
        t_upstream = time.perf_counter()
        answer = await self.upstream.request(
            request.method,
            raw_path,
            query,
            headers=[*_no_encoding(headers), ("content-type", "application/x-ndjson")],
            content=serialize_msearch(forward),
            decode=True,
        )
        upstream_ms = (time.perf_counter() - t_upstream) * 1000
        if answer.status != 200:
            return self._relay(answer, [("x-rerank", "skipped"), ("x-rerank-reason", "upstream_error")])
        data = json.loads(answer.content)
        upstream_items = iter(data.get("responses", []))
        # Items es-rerank refused never went upstream: pair the rest in order.
        paired = [(item, None if isinstance(item, RerankError) else next(upstream_items, None)) for item in items]

        async def one(item, result) -> tuple[Any, Outcome]:
            if isinstance(item, RerankError):
                return item.to_body(), Outcome.ERROR
            if not isinstance(result, dict) or "error" in result:
                return result, Outcome.ERROR
            if item is None or not item[1].rerank:
                return result, Outcome.SKIPPED
            rebuilt, scored, _ = await self._rerank(item[1], item[0], result, started, upstream_ms)
            return rebuilt, scored.outcome  # fallback items say so, as a _search does

        done = await asyncio.gather(*(one(i, r) for i, r in paired))
        data["responses"] = [body for body, _ in done]
        counts = {outcome: sum(1 for _, o in done if o is outcome) for outcome in Outcome}
        n = counts[Outcome.RERANKED]
        overall = Outcome.RERANKED if n else Outcome.FALLBACK if counts[Outcome.FALLBACK] else Outcome.SKIPPED
        extra = [
            ("x-rerank", overall),
            ("x-rerank-reason", "msearch_items"),  # a fixed reason: metrics labels stay bounded
            ("x-rerank-items", f"{n}/{len(items)}"),  # reranked of all items, then each outcome's count
            ("x-rerank-item-outcomes", ",".join(f"{outcome}={count}" for outcome, count in counts.items())),
        ]
        return self._relay(_rebuilt(request, answer.headers, _dumps(data, parse_qsl(query.decode("latin-1")))), extra)

    async def _score(
        self, reranker: Reranker, plan: SearchPlan, spec: IndexSettings, data: dict, timings: RequestTimings,
        client_gone: Awaitable[None] | None = None,
    ):
        """The window's :class:`~es_rerank.scoring.Scored` (``reranker`` is the search's
        model, ``plan.model``; the degrade steps may use another)."""
        return await self.scorer.score(plan, spec, data, timings, client_gone)


async def _disconnect(request: Request) -> None:
    """Return when the client has closed the connection (its body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(
    settings: Settings,
    *,
    rerankers: Mapping[str, Reranker] | None = None,
    upstream: Upstream | None = None,
) -> RerankProxy:
    """Build the proxy; models are loaded now (so a bad model fails at start)."""
    if rerankers is None:
        rerankers = load_rerankers(settings)
    if upstream is None:
        upstream = Upstream(settings.upstream)
    return RerankProxy(settings, upstream=upstream, rerankers=rerankers)
