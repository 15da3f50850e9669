"""The ASGI application: routes requests to the rerank flow or through to OpenSearch."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Mapping
from urllib.parse import parse_qsl, urlencode

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from .admin import Admin
from .bodies import TooDeep, UnreadableBody, check_depth, decode_content, dumps, is_json_media_type, loads_request, loads_response
from .config import IndexSettings, Settings
from .errors import (
    BodyTooDeepError,
    ClientTimeoutError,
    ContentTooLongError,
    MethodNotAllowedError,
    RerankError,
    UpstreamBadResponseError,
)
from .reranker import OnnxReranker, Reranker
from .metrics import Metrics, RequestTimings
from .msearch import MsearchItem, item_target, parse_msearch, serialize_msearch
from .responses import dump_for, error_response, json_response, rebuilt, relay
from .querytext import strip_rerank_ext
from .routing import OPENSEARCH_METHODS, RouteKind, route
from .scoring import SHED_AT, Outcome, Scorer
from .search import SearchPlan, msearch_problem, passthrough_plan, plan_search, response_problem
from .upstream import Upstream, UpstreamResponse, forwardable_headers

__all__ = ["RerankProxy", "create_app", "load_rerankers"]

logger = logging.getLogger("es_rerank")

_OFF = {"false", "0", "off", "no"}
# Answers OpenSearch writes in another format than JSON: passed through, not rebuilt.
_OTHER_FORMATS = ("yaml", "cbor", "smile")
# Headers that describe the client's body, replaced when the proxy sends a body of its own.
_BODY_HEADERS = frozenset({"content-type", "content-encoding", "accept-encoding"})


def _marks(outcome: str, reason: str) -> list[tuple[str, str]]:
    return [("x-rerank", str(outcome)), ("x-rerank-reason", reason)]


def _other_format(params: list[tuple[str, str]], request: Request) -> str | None:
    """Why OpenSearch would answer in a format other than JSON, if it would."""
    fmt = next((v.lower() for k, v in reversed(params) if k == "format"), None)
    if fmt is not None and fmt != "json":
        return "format"
    accept = request.headers.get("accept", "").lower()
    return "accept" if any(f in accept for f in _OTHER_FORMATS) else None


async def read_body(request: Request, *, limit: int, idle_timeout: float) -> bytes:
    """The whole request body, refused past ``limit`` bytes while it is read (OpenSearch's
    http.max_content_length) and when the client stops sending it for ``idle_timeout``."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise ContentTooLongError(f"request body of {length} bytes is larger than the limit of {limit} bytes")
    chunks, total = [], 0
    stream = request.stream()
    while True:
        try:
            chunk = await asyncio.wait_for(anext(stream), idle_timeout)
        except StopAsyncIteration:
            return b"".join(chunks)
        except asyncio.TimeoutError:
            raise ClientTimeoutError(f"no request body bytes for {idle_timeout}s") from None
        total += len(chunk)
        if total > limit:
            raise ContentTooLongError(f"request body is larger than the limit of {limit} bytes")
        chunks.append(chunk)


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
        self.admin = Admin(settings.server.admin, upstream=upstream, rerankers=self.rerankers, metrics=self.metrics)

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
        except ClientDisconnect:
            return  # nobody to answer
        except RerankError as exc:
            # A refused body may still be on its way: close the connection rather than read it.
            closing = [("connection", "close")] if isinstance(exc, (ContentTooLongError, ClientTimeoutError)) else []
            if not isinstance(exc, (ContentTooLongError, ClientTimeoutError, MethodNotAllowedError)):
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
        if request.method not in OPENSEARCH_METHODS:
            raise MethodNotAllowedError(
                f"Incorrect HTTP method for uri [{request.url.path}] and method [{request.method}]"
            )
        raw_path, _ = self._raw_target(request)
        where = route(request.method, raw_path, self.settings)
        request.scope["es_rerank.route"] = str(where.kind)
        server = self.settings.server
        body = await read_body(request, limit=server.max_content_length, idle_timeout=server.idle_timeout)
        await self._check_depth(request, body)
        if where.kind is RouteKind.OWN:
            return await self.admin.handle(request, where.own_path)
        if where.kind is RouteKind.SEARCH:
            # Label by the config rule, not the raw index: bounded cardinality.
            request.scope["es_rerank.index"] = where.spec.pattern if where.spec else ""
            return await self.search(request, where.spec, body)
        if where.kind is RouteKind.MSEARCH:
            return await self.msearch(request, where.target, body)
        return await self.passthrough(request, body)

    # -- pass-through ----------------------------------------------------------

    @staticmethod
    def _raw_target(request: Request) -> tuple[bytes, bytes]:
        scope = request.scope
        raw_path = scope.get("raw_path") or scope["path"].encode()
        return raw_path.split(b"?", 1)[0], scope.get("query_string", b"")

    async def passthrough(self, request: Request, body: bytes, *, extra: list[tuple[str, str]] = ()) -> Response:
        """The client's request as it came (less hop-by-hop headers), OpenSearch's answer as it came."""
        raw_path, query = self._raw_target(request)
        answer = await self.upstream.request(
            request.method,
            raw_path,
            query,
            headers=forwardable_headers(request.headers.items()),
            content=body,
        )
        return relay(answer, extra)

    async def _send_rewritten(
        self, request: Request, method: str, query: bytes, content: bytes, *, decode: bool = False,
        content_type: str | None = None,
    ) -> UpstreamResponse:
        """A body of the proxy's making, with the client's other headers and its Content-Type
        (so OpenSearch judges the media type as it would direct), uncompressed."""
        raw_path, _ = self._raw_target(request)
        headers = forwardable_headers(request.headers.items(), drop=_BODY_HEADERS)
        content_type = content_type or request.headers.get("content-type") or "application/json"
        return await self.upstream.request(
            method, raw_path, query, headers=[*headers, ("content-type", content_type)], content=content, decode=decode
        )

    async def _forward_plan(self, request: Request, body: bytes, parsed: Any, plan: SearchPlan) -> Response:
        """A search not reranked: the client's bytes when nothing of ours was in them,
        else its body less ``ext.rerank``; OpenSearch's answer as it is."""
        marks = _marks(Outcome.SKIPPED, plan.reason)
        if plan.body == parsed:
            return await self.passthrough(request, body, extra=marks)
        _, query = self._raw_target(request)
        answer = await self._send_rewritten(request, request.method, query, dumps(plan.body))
        return relay(answer, marks)

    # -- the rerank flow -------------------------------------------------------

    async def _read_json(self, request: Request, body: bytes) -> tuple[Any, str | None]:
        """The body as OpenSearch would read it, or the reason it is left to OpenSearch."""
        if not body:
            return {}, None
        if not is_json_media_type(request.headers.get("content-type")):
            return None, "content_type"  # OpenSearch answers 406 itself
        try:
            return loads_request(self._decoded(request, body)), None
        except TooDeep as exc:
            raise BodyTooDeepError(str(exc)) from None
        except UnreadableBody:
            return None, "unparsed_body"  # OpenSearch answers with its own error

    async def _check_depth(self, request: Request, body: bytes) -> None:
        """Refuse a body, compressed or not, nested deep enough to bring OpenSearch down."""
        if not body:
            return
        try:
            # Decompressing a large body is CPU work: keep it off the event loop.
            await asyncio.to_thread(self._decoded, request, body) if len(body) > 65536 else self._decoded(request, body)
        except UnreadableBody:
            pass  # not decodable: OpenSearch refuses it itself

    def _decoded(self, request: Request, body: bytes) -> bytes:
        """The body with its Content-Encoding undone, refused when it nests too deep."""
        encodings = request.headers.getlist("content-encoding")
        content = decode_content(body, encodings, limit=self.settings.server.max_content_length) if encodings else body
        try:
            check_depth(content)
        except TooDeep as exc:
            raise BodyTooDeepError(str(exc)) from None
        return content

    async def search(self, request: Request, spec: IndexSettings | None, body_bytes: bytes) -> Response:
        """One ``_search``; ``spec`` None: a target with no rerank config, answered by
        OpenSearch, less the ``ext.rerank`` a client may send to every index."""
        started = time.perf_counter()
        raw_path, query = self._raw_target(request)
        params = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        if spec is None and b"rerank" not in body_bytes and not request.headers.get("content-encoding"):
            return await self.passthrough(request, body_bytes)  # nothing of es-rerank's in it

        body, unread = await self._read_json(request, body_bytes)
        if unread is None and not isinstance(body, dict):
            unread = "unparsed_body"  # null, a list, a number: OpenSearch's parsing_exception
        if unread is not None:
            return await self.passthrough(request, body_bytes, extra=_marks(Outcome.SKIPPED, unread))
        skip = _other_format(params, request)
        if skip is None and any(k in ("source", "source_content_type") for k, _ in params):
            skip = "source_param"
        if skip is None and spec is None:
            skip = "no_configured_index"
        if skip is not None:
            return await self._forward_plan(request, body_bytes, body, passthrough_plan(body, params, skip))

        plan = self._plan(spec, body, params, request)
        if plan.rerank and self._overloaded(plan, spec):
            # The model could not score this in time even if it were first in line after the
            # work queued now: answer OpenSearch's own response, as cheaply as a skip.
            plan = passthrough_plan(body, params, "overloaded")
        if not plan.rerank:
            return await self._forward_plan(request, body_bytes, body, plan)

        t_upstream = time.perf_counter()
        answer = await self._send_rewritten(request, "POST", urlencode(plan.params).encode(), dumps(plan.body), decode=True)
        upstream_ms = (time.perf_counter() - t_upstream) * 1000
        if answer.status == 400:
            # The rewrite may be what OpenSearch refused (`fields` on an index whose _source
            # is disabled, a limit on size): the client gets the answer to its own request.
            return await self._forward_plan(request, body_bytes, body, passthrough_plan(body, params, "rewrite_refused"))
        if answer.status != 200:
            return relay(answer, _marks(Outcome.SKIPPED, "upstream_error"))
        data = _read_answer(answer.content, response_problem)
        reranked, scored, timings = await self._rerank(
            plan, spec, data, started, upstream_ms, client_gone=_disconnect(request)
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
        return relay(rebuilt(request.headers.get("accept-encoding", ""), answer.headers, dump_for(reranked, params)), extra)

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

    async def msearch(self, request: Request, default_target: str | None, body_bytes: bytes) -> Response:
        """Each item planned as a ``_search``; one upstream ``_msearch``; items scored concurrently."""
        started = time.perf_counter()
        raw_path, query = self._raw_target(request)
        params = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        lines: list[MsearchItem] | None = None
        unread = _other_format(params, request)
        if unread is None and not is_json_media_type(request.headers.get("content-type")):
            unread = "content_type"
        if unread is None:
            try:
                content = self._decoded(request, body_bytes)
            except UnreadableBody:
                content = b""
            lines = parse_msearch(content)
            unread = "unparsed_body" if lines is None else None
        if lines is None:
            return await self.passthrough(request, body_bytes, extra=_marks(Outcome.SKIPPED, unread or "unparsed_body"))

        items: list[tuple[IndexSettings, SearchPlan] | RerankError | None] = []
        for line in lines:
            target = item_target(line.header, default_target)
            spec = self.settings.index_for(target) if target else None
            if spec is None or line.body is None:
                items.append(None)  # forwarded as written; OpenSearch answers it
                continue
            try:
                items.append((spec, self._plan(spec, line.body, [], request)))
            except RerankError as exc:
                items.append(exc)
        forward_lines = [(line.header_line, _forwarded(line, item)) for line, item in zip(lines, items)]
        if all(item is None for item in items) and all(body is line.body_line for (_, body), line in zip(forward_lines, lines)):
            return await self.passthrough(request, body_bytes, extra=_marks(Outcome.SKIPPED, "no_configured_index"))

        if all(isinstance(item, RerankError) for item in items):
            body = {"took": 0, "responses": [item.to_body() for item in items]}
            return json_response(body, 200, _marks(Outcome.SKIPPED, "invalid_items"))
        forward = [pair for pair, item in zip(forward_lines, items) if not isinstance(item, RerankError)]
        t_upstream = time.perf_counter()
        answer = await self._send_rewritten(request, request.method, query, serialize_msearch(forward), decode=True)
        upstream_ms = (time.perf_counter() - t_upstream) * 1000
        if answer.status != 200:
            return relay(answer, _marks(Outcome.SKIPPED, "upstream_error"))
        data = _read_answer(answer.content, msearch_problem)
        upstream_items = iter(data["responses"])
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
        return relay(rebuilt(request.headers.get("accept-encoding", ""), answer.headers, dump_for(data, params)), extra)

    async def _score(
        self, reranker: Reranker, plan: SearchPlan, spec: IndexSettings, data: dict, timings: RequestTimings,
        client_gone: Awaitable[None] | None = None,
    ):
        """The window's :class:`~es_rerank.scoring.Scored` (``reranker`` is the search's
        model, ``plan.model``; the degrade steps may use another)."""
        return await self.scorer.score(plan, spec, data, timings, client_gone)


def _forwarded(line: MsearchItem, item: Any) -> Any:
    """What an ``_msearch`` item sends OpenSearch: its rewritten body, its body less
    ``ext.rerank``, or (when nothing of ours is in it) its line as the client wrote it."""
    if isinstance(item, tuple):
        body = item[1].body
    elif line.body is not None:
        body = strip_rerank_ext(line.body)
    else:
        return line.body_line
    return line.body_line if body == line.body else body


def _read_answer(content: bytes, problem) -> dict:
    """OpenSearch's JSON answer, or a 502 that says what was wrong with it."""
    try:
        data = loads_response(content)
    except (ValueError, RecursionError) as exc:
        raise UpstreamBadResponseError(f"OpenSearch's answer is not JSON: {exc}") from None
    reason = problem(data)
    if reason is not None:
        raise UpstreamBadResponseError(f"OpenSearch's answer cannot be reranked: {reason}")
    return data


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
