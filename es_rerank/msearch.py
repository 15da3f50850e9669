"""``_msearch``: the NDJSON body read as OpenSearch reads it, and the per-item flow.

Each item is planned as a ``_search`` (:class:`~es_rerank.search.SearchFlow`), the
items go to OpenSearch in one ``_msearch``, and the items to rerank are scored
concurrently, each with the same outcomes as a ``_search``.

Each line is kept as the client wrote it; only the body of an item the proxy
reranks is rewritten. A header line OpenSearch accepts but that is not an object
(``null``, ``[]``, ``"x"``) stays as it is and searches the path's index; a body
line the proxy cannot read (duplicate keys, too deep) goes to OpenSearch as it is,
so OpenSearch answers that item with its own error and the others are served.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

from .bodies import UnreadableBody, dumps, is_json_media_type, loads_request
from .config import IndexSettings
from .errors import RerankError
from .experiments.flow import Trial
from .forwarding import ClientRequest
from .plan import SearchPlan
from .querytext import strip_rerank_ext
from .rebuild import msearch_problem
from .responses import dump_for, json_response, marks, rebuilt, relay
from .scoring import Outcome
from .search import SearchFlow, read_answer
from .supersession import Claim

__all__ = ["MsearchItem", "MsearchFlow", "parse_msearch", "serialize_msearch", "item_target"]

# One item's plan: (its index settings, its plan, its experiment trial or None), refused
# (an error), or None (forwarded).
Planned = tuple[IndexSettings, SearchPlan, Trial | None] | RerankError | None


@dataclass(frozen=True, slots=True)
class MsearchItem:
    header_line: bytes
    body_line: bytes
    header: dict[str, Any]
    body: dict[str, Any] | None  # None: not read; forwarded as written


def _read(line: bytes) -> Any:
    try:
        return loads_request(line)
    except UnreadableBody:
        return UnreadableBody


def parse_msearch(content: bytes) -> list[MsearchItem] | None:
    """The items of an ``_msearch`` body, or None when OpenSearch should judge the
    whole body itself (no final newline, an odd number of lines, a header line
    that is not JSON)."""
    if not content.endswith(b"\n"):
        return None  # OpenSearch: "The msearch request must be terminated by a newline"
    lines = [line for line in content.split(b"\n") if line.strip()]
    if not lines or len(lines) % 2:
        return None
    items = []
    for header_line, body_line in zip(lines[::2], lines[1::2]):
        header = _read(header_line)
        if header is UnreadableBody:
            return None
        body = _read(body_line)
        items.append(
            MsearchItem(
                header_line=header_line,
                body_line=body_line,
                header=header if isinstance(header, dict) else {},
                body=body if isinstance(body, dict) else None,
            )
        )
    return items


def serialize_msearch(lines: list[tuple[bytes, Any]]) -> bytes:
    """NDJSON from (header line as written, body): a body given as bytes goes as it is."""
    out = []
    for header_line, body in lines:
        out.append(header_line)
        out.append(body if isinstance(body, bytes) else dumps(body))
    return b"\n".join(out) + b"\n"


def item_target(header: dict[str, Any], default: str | None) -> str | None:
    """The index expression an item searches: its header's ``index`` or the path's."""
    index = header.get("index", default)
    if isinstance(index, list):
        index = ",".join(str(i) for i in index)
    return index if isinstance(index, str) and index else None


def forwarded(line: MsearchItem, item: Planned) -> Any:
    """What an item sends OpenSearch: its rewritten body, its body less ``ext.rerank``,
    or (when nothing of ours is in it) its line as the client wrote it."""
    if isinstance(item, tuple):
        body = item[1].body
    elif line.body is not None:
        body = strip_rerank_ext(line.body)
    else:
        return line.body_line
    return line.body_line if body == line.body else body


class MsearchFlow:
    """Serves ``_msearch`` requests, planning and scoring each item as ``search`` does."""

    def __init__(self, search: SearchFlow) -> None:
        self.search = search
        self.settings = search.settings
        self.forwarder = search.forwarder

    def _lines(self, request: ClientRequest) -> tuple[list[MsearchItem] | None, str]:
        reason = request.other_format()
        if reason is None and not is_json_media_type(request.header("content-type")):
            reason = "content_type"
        if reason is not None:
            return None, reason
        try:
            content = request.decoded_body(self.settings.server.max_content_length)
        except UnreadableBody:
            return None, "unparsed_body"
        lines = parse_msearch(content)
        return lines, "unparsed_body"

    def _plan(self, request: ClientRequest, line: MsearchItem, default_target: str | None) -> Planned:
        target = item_target(line.header, default_target)
        spec = self.settings.index_for(target) if target else None
        if target is None or spec is None or line.body is None:
            return None  # forwarded; OpenSearch answers it
        try:
            experiments = self.search.experiments  # A/B and interleaving: the arm's settings, ext.ubi recorded
            trial = experiments.begin(request.headers, spec, line.body, target) if experiments else None
            if trial is not None:
                return trial.spec, self.search.plan(trial.spec, trial.body, [], request), trial
            return spec, self.search.plan(spec, line.body, [], request), None
        except RerankError as exc:
            return exc

    async def __call__(self, request: ClientRequest, default_target: str | None) -> Response:
        started = time.perf_counter()
        lines, unread = self._lines(request)
        if lines is None:
            return await self.forwarder.passthrough(request, marks(Outcome.SKIPPED, unread))
        items = [self._plan(request, line, default_target) for line in lines]
        forward = [(line.header_line, forwarded(line, item)) for line, item in zip(lines, items)]
        if all(item is None for item in items) and all(
            body is line.body_line for (_, body), line in zip(forward, lines)
        ):
            return await self.forwarder.passthrough(request, marks(Outcome.SKIPPED, "no_configured_index"))
        if all(isinstance(item, RerankError) for item in items):
            body = {"took": 0, "responses": [item.to_body() for item in items if isinstance(item, RerankError)]}
            return json_response(body, 200, marks(Outcome.SKIPPED, "invalid_items"))
        # One claim for the request: its items never supersede each other.
        reranked = [item for item in items if isinstance(item, tuple) and item[1].rerank]
        claim = None
        if reranked:
            key = self.search.client_key(
                request, [line.body for line in lines], [spec.pattern for spec, _, _ in reranked]
            )
            claim = await self.search.scorer.claim(key)
        try:
            return await self._planned(request, items, forward, started, claim)
        finally:
            self.search.scorer.release(claim)

    async def _planned(
        self,
        request: ClientRequest,
        items: list[Planned],
        forward: list[tuple[bytes, Any]],
        started: float,
        claim: Claim | None,
    ) -> Response:
        # Items es-rerank refused never go upstream.
        sent = [pair for pair, item in zip(forward, items) if not isinstance(item, RerankError)]
        t_upstream = time.perf_counter()
        answer = await self.forwarder.send(request, request.method, request.query, serialize_msearch(sent), decode=True)
        upstream_ms = (time.perf_counter() - t_upstream) * 1000
        if answer.status != 200:
            return relay(answer, marks(Outcome.SKIPPED, "upstream_error"))
        data = read_answer(answer.content, msearch_problem)
        upstream_items = iter(data["responses"])
        paired = [(item, None if isinstance(item, RerankError) else next(upstream_items, None)) for item in items]

        # One watch of the connection for every item: a client that leaves stops them all.
        gone = asyncio.ensure_future(request.disconnected()) if request.disconnected is not None else None

        def watch() -> Any:
            return asyncio.shield(gone) if gone is not None else None

        async def one(item: Planned, result: Any) -> tuple[Any, Outcome]:
            if isinstance(item, RerankError):
                return item.to_body(), Outcome.ERROR
            if not isinstance(result, dict) or "error" in result:
                return result, Outcome.ERROR
            if item is None or not item[1].rerank:
                return result, Outcome.SKIPPED
            if item[2] is not None:  # experiments: the arm's order, recorded as served
                served, scored, _ = await item[2].serve(
                    self.search.scorer, item[1], result, started, upstream_ms, watch(), claim
                )
                return served, Outcome.SKIPPED if scored is None else scored.outcome
            reranked, scored, _ = await self.search.scorer.rerank(
                item[1], item[0], result, started, upstream_ms, watch(), claim
            )
            return reranked, scored.outcome  # fallback items say so, as a _search does

        try:
            done = await asyncio.gather(*(one(i, r) for i, r in paired))
        finally:
            if gone is not None:
                gone.cancel()
        data["responses"] = [body for body, _ in done]
        counts = {outcome: sum(1 for _, o in done if o is outcome) for outcome in Outcome}
        n = counts[Outcome.RERANKED]
        overall = Outcome.RERANKED if n else Outcome.FALLBACK if counts[Outcome.FALLBACK] else Outcome.SKIPPED
        headers = [
            *marks(overall, "msearch_items"),  # a fixed reason: metrics labels stay bounded
            ("x-rerank-items", f"{n}/{len(items)}"),  # reranked of all items, then each outcome's count
            ("x-rerank-item-outcomes", ",".join(f"{outcome}={count}" for outcome, count in counts.items())),
        ]
        trials = [
            item[2] if isinstance(item, tuple) and item[2] is not None and item[2].served else None for item in items
        ]
        if any(trials):  # experiments: each item's arm and query id, "-" for items in none
            headers.append(("x-rerank-arm", ",".join(t.assignment.label if t else "-" for t in trials)))
            headers.append(("x-rerank-query-id", ",".join(t.assignment.query_id if t else "-" for t in trials)))
        content = dump_for(data, request.params)
        return relay(rebuilt(request.header("accept-encoding"), answer.headers, content), headers)
