"""Planning one search, a pure function: rerank it or pass it through, and how to ask OpenSearch.

:func:`plan_search` reads a ``_search`` body and its URL parameters and decides: the
reasons to pass a search through are OpenSearch's own features the model cannot
serve (sorts, scrolls, pages past the window...); a search to rerank is rewritten
to ask for the whole window from offset 0, with the fields the model reads.
No I/O: unit tested on plain bodies.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .blend import Blend, parse_blend
from .config import IndexSettings
from .errors import BadRequestError, UnknownModelError
from .querytext import query_text, rerank_ext, strip_rerank_ext

__all__ = ["SearchPlan", "plan_search", "passthrough_plan", "DEFAULT_SIZE"]

DEFAULT_SIZE = 10  # OpenSearch's default page size
_EXT_KEYS = {"enabled", "window_size", "model", "query_context", "blend"}


@dataclass(frozen=True)
class SearchPlan:
    """What to do with one search request.

    ``rerank`` False means: forward ``body``/``params`` and answer OpenSearch's
    response unchanged; ``reason`` says why (sent in ``x-rerank-reason``).
    """

    rerank: bool
    reason: str
    body: dict[str, Any] | None
    params: list[tuple[str, str]]
    query: str | None = None
    model: str | None = None
    window: int = 0
    from_: int = 0
    size: int = DEFAULT_SIZE
    # Fields added to the request only so the model can read them; removed again.
    added_fields: tuple[str, ...] = field(default_factory=tuple)
    # The first-stage score blended into the model's (index ``blend``, ``ext.rerank.blend``); None: off.
    blend: Blend | None = None


# Java's Integer.parseInt: an optional sign and decimal digits of any script.
_JAVA_INT = re.compile(r"[-+]?\d+")


def _param(params: Sequence[tuple[str, str]], name: str) -> str | None:
    value = None
    for key, val in params:
        if key == name:
            value = val
    return value


def _int_option(name: str, raw: Any) -> int:
    # Mirrors OpenSearch's own parsing closely enough that invalid values are
    # rejected by OpenSearch itself: we only parse what we must to plan.
    if isinstance(raw, bool):
        raise ValueError(name)
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and _JAVA_INT.fullmatch(raw):
        return int(raw)
    raise ValueError(name)


def _is_score_sort(sort: Any) -> bool:
    """True when a sort is by descending score only (what reranking replaces)."""
    items = sort if isinstance(sort, list) else [sort]
    for item in items:
        if item == "_score":
            continue
        if isinstance(item, Mapping) and list(item) == ["_score"]:
            spec = item["_score"]
            order = spec.get("order", "desc") if isinstance(spec, Mapping) else spec
            if order == "desc":
                continue
        return False
    return True


def _pattern_covers(patterns: Sequence[Any], name: str) -> bool:
    for entry in patterns:
        pattern = entry.get("field") if isinstance(entry, Mapping) else entry
        if isinstance(pattern, str) and fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def passthrough_plan(body: Any, params: list[tuple[str, str]], reason: str) -> SearchPlan:
    """A plan that forwards ``body`` (``ext.rerank`` removed) and answers OpenSearch's response as it is."""
    if isinstance(body, dict):
        body = strip_rerank_ext(body)
    return SearchPlan(rerank=False, reason=reason, body=body, params=params)


def plan_search(
    spec: IndexSettings,
    body: Any,
    params: Sequence[tuple[str, str]],
    *,
    models: Sequence[str],
    default_model: str,
    disabled_by_header: bool = False,
) -> SearchPlan:
    """Decide and rewrite one ``_search`` on an index configured by ``spec``.

    Raises :class:`BadRequestError` for a malformed ``ext.rerank``.

    Kept whole on purpose: the pass-through rules read top to bottom in the order they are checked, one ``if`` each.
    """
    params = list(params)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        return SearchPlan(rerank=False, reason="unparsed_body", body=body, params=params)

    if not spec.rerank:
        return passthrough_plan(body, params, "index_not_reranked")
    ext = rerank_ext(body)
    unknown = sorted(set(ext) - _EXT_KEYS)
    if unknown:
        raise BadRequestError(f"[ext.rerank] unknown option(s) {unknown}; known: {sorted(_EXT_KEYS)}")
    enabled = ext.get("enabled", True)
    if not isinstance(enabled, bool):
        raise BadRequestError("[ext.rerank.enabled] must be true or false")
    window = ext.get("window_size", spec.window)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise BadRequestError("[ext.rerank.window_size] must be a positive integer")
    if window > spec.max_window:
        raise BadRequestError(f"[ext.rerank.window_size] {window} is larger than the maximum of {spec.max_window}")
    model = ext.get("model", default_model)
    if model not in models:
        raise UnknownModelError(f"[ext.rerank.model] unknown model [{model}]; known: {sorted(models)}")
    index_blend = spec.blend.to_blend() if spec.blend is not None else None
    try:
        blend = parse_blend(ext["blend"], index_blend) if "blend" in ext else index_blend
    except ValueError as exc:
        raise BadRequestError(str(exc)) from None

    if not enabled or disabled_by_header:
        return passthrough_plan(body, params, "disabled")
    if _param(params, "scroll") is not None:
        return passthrough_plan(body, params, "scroll")
    if _param(params, "filter_path") is not None:
        return passthrough_plan(body, params, "filter_path")
    stored = _param(params, "stored_fields") or body.get("stored_fields")
    if stored == "_none_" or stored == ["_none_"]:
        # No _id and no fields come back, and OpenSearch refuses `fields` with it.
        return passthrough_plan(body, params, "stored_fields_none")
    for key in ("search_after", "pit", "slice"):
        if key in body:
            return passthrough_plan(body, params, key)
    url_sort = _param(params, "sort")
    if url_sort is not None and url_sort not in ("_score", "_score:desc"):
        return passthrough_plan(body, params, "sort")
    if "sort" in body and not _is_score_sort(body["sort"]):
        return passthrough_plan(body, params, "sort")

    try:
        # A URL parameter wins over the body, even when empty (OpenSearch then refuses it).
        url_size, url_from = _param(params, "size"), _param(params, "from")
        size = _int_option("size", url_size if url_size is not None else body.get("size", DEFAULT_SIZE))
        from_ = _int_option("from", url_from if url_from is not None else body.get("from", 0))
    except ValueError:
        # Let OpenSearch answer the invalid value with its own error.
        return passthrough_plan(body, params, "invalid_paging")
    if size <= 0 or from_ < 0:
        return passthrough_plan(body, params, "size_0" if size == 0 else "invalid_paging")
    if from_ >= window:
        return passthrough_plan(body, params, "beyond_window")

    for key in ("fields", "docvalue_fields"):
        if key in body and not isinstance(body[key], list):
            return passthrough_plan(body, params, f"invalid_{key}")  # OpenSearch rejects it

    text = query_text(body, dict(params), query_text_path=spec.query_text_path)
    if not text or not text.strip():
        return passthrough_plan(body, params, "no_query_text")

    rewritten = strip_rerank_ext(body)
    rewritten["from"] = 0
    rewritten["size"] = max(window, from_ + size)
    fwd_params = [(k, v) for k, v in params if k not in ("from", "size")]

    # Ask for the model's fields with the `fields` option: OpenSearch returns them
    # whatever the client's _source filtering says, so _source stays untouched.
    client_fields = list(rewritten.get("fields") or [])
    covered = client_fields + list(rewritten.get("docvalue_fields") or [])
    added = tuple(f for f in spec.fields if not _pattern_covers(covered, f))
    if added:
        rewritten["fields"] = client_fields + list(added)

    return SearchPlan(
        rerank=True,
        reason="reranked",
        body=rewritten,
        params=fwd_params,
        query=text.strip(),
        model=model,
        window=window,
        from_=from_,
        size=size,
        added_fields=added,
        blend=blend,
    )
