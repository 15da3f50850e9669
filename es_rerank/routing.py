"""Which flow a request takes: (method, raw path, settings) -> :class:`Route`. Pure.

Routing reads the path as sent, segment by segment, each segment decoded on its
own: ``/_rerank%2Fhealth`` is one segment, as OpenSearch reads it, so it never
reaches es-rerank's own endpoints.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from urllib.parse import unquote

from .config import IndexSettings, Settings

__all__ = ["RouteKind", "Route", "route", "OPENSEARCH_METHODS"]

# The methods OpenSearch's REST layer knows (RestRequest.Method) and answers; others
# it drops without an answer. CONNECT it answers 405 on every path, and an HTTP client
# would send it in authority form: the proxy answers it 405 itself.
OPENSEARCH_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE"})


class RouteKind(enum.StrEnum):
    OWN = "own"
    SEARCH = "search"
    MSEARCH = "msearch"
    PASSTHROUGH = "passthrough"
    RERANK_API = "rerank_api"  # /v1/rerank, /v2/rerank (Cohere), /rerank (TEI): es_rerank/rerank_api.py


@dataclass(frozen=True, slots=True)
class Route:
    kind: RouteKind
    spec: IndexSettings | None = None  # SEARCH: the index's settings (None: not configured)
    target: str | None = None  # MSEARCH: the path's index expression, if any
    own_path: str = ""  # OWN: e.g. "health"
    api: str = ""  # RERANK_API: cohere_v1, cohere_v2 or tei


# The rerank API's paths (POST): none is an OpenSearch endpoint for POST.
_RERANK_API = {("v1", "rerank"): "cohere_v1", ("v2", "rerank"): "cohere_v2", ("rerank",): "tei"}


def route(method: str, raw_path: bytes, settings: Settings) -> Route:
    segments = [unquote(s) for s in raw_path.decode("latin-1").split("?", 1)[0].split("/") if s]
    if len(segments) == 2 and segments[0] == "_rerank":
        return Route(RouteKind.OWN, own_path=segments[1])
    if len(segments) >= 3 and segments[:2] == ["_rerank", "ui"]:  # the compare page's files
        return Route(RouteKind.OWN, own_path="/".join(segments[1:]))
    if segments == ["_rerank", "ubi", "events"]:  # experiments: UBI events posted by clients
        return Route(RouteKind.OWN, own_path="ubi/events")
    if method not in ("GET", "POST"):
        return Route(RouteKind.PASSTHROUGH)
    if method == "POST" and settings.rerank_api.enabled and settings.models:
        api = _RERANK_API.get(tuple(segments))
        if api is not None:
            return Route(RouteKind.RERANK_API, api=api)
    if segments and segments[-1] == "_search":
        if len(segments) == 2 and not segments[0].startswith("_"):
            return Route(RouteKind.SEARCH, spec=settings.index_for(segments[0]))
        if len(segments) == 1:
            return Route(RouteKind.SEARCH)  # every index: never reranked, ext.rerank removed
    if segments and segments[-1] == "_msearch":
        if len(segments) == 1:
            return Route(RouteKind.MSEARCH)
        if len(segments) == 2 and not segments[0].startswith("_"):
            return Route(RouteKind.MSEARCH, target=segments[0])
    return Route(RouteKind.PASSTHROUGH)
