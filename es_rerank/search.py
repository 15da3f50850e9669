"""The rerank flow for one search, as pure functions.

:func:`plan_search` decides whether a request is reranked and how it is rewritten
for OpenSearch; :func:`rebuild_response` turns OpenSearch's answer and the model's
scores into the response the client gets. Neither does I/O, so both are unit
tested on recorded responses; :mod:`es_rerank.app` runs them around the calls.
"""

from __future__ import annotations

import copy
import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .config import IndexSettings
from .errors import BadRequestError, UnknownModelError
from .querytext import query_text, rerank_ext, strip_rerank_ext

__all__ = [
    "SearchPlan",
    "plan_search",
    "passthrough_plan",
    "rebuild_response",
    "response_problem",
    "msearch_problem",
    "DEFAULT_SIZE",
]

DEFAULT_SIZE = 10  # OpenSearch's default page size
_EXT_KEYS = {"enabled", "window_size", "model", "query_context"}


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
        raise BadRequestError(
            f"[ext.rerank] unknown option(s) {unknown}; known: {sorted(_EXT_KEYS)}"
        )
    enabled = ext.get("enabled", True)
    if not isinstance(enabled, bool):
        raise BadRequestError("[ext.rerank.enabled] must be true or false")
    window = ext.get("window_size", spec.window)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise BadRequestError("[ext.rerank.window_size] must be a positive integer")
    if window > spec.max_window:
        raise BadRequestError(
            f"[ext.rerank.window_size] {window} is larger than the maximum of {spec.max_window}"
        )
    model = ext.get("model", default_model)
    if model not in models:
        raise UnknownModelError(f"[ext.rerank.model] unknown model [{model}]; known: {sorted(models)}")

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
    )


def window_hits(plan: SearchPlan, response: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The hits the model scores: the first ``window`` of OpenSearch's answer."""
    return list(response.get("hits", {}).get("hits", []))[: plan.window]


def rebuild_response(
    plan: SearchPlan,
    response: Mapping[str, Any],
    scores: np.ndarray | None,
    *,
    proxy_ms: int = 0,
    expose_first_stage: bool = True,
) -> dict[str, Any]:
    """The client's response: window reordered by ``scores`` and sliced to its page.

    ``scores`` None means the model could not score (fallback): first-stage order,
    same paging. Everything but ``hits.hits``, ``hits.max_score`` and ``took`` is
    OpenSearch's own. The input is not mutated.
    """
    out = dict(response)
    hits_obj = dict(out.get("hits") or {})
    hits = [copy.copy(h) for h in hits_obj.get("hits", [])]
    k = min(plan.window, len(hits))

    if scores is not None and len(scores) != k:
        raise ValueError(f"{len(scores)} scores for {k} hits")
    if scores is not None and k:
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        reranked = []
        for idx in order:
            hit = hits[idx]
            if expose_first_stage:
                hit["_rerank"] = {"first_stage_score": hit.get("_score"), "first_stage_rank": int(idx) + 1}
            hit["_score"] = float(scores[idx])
            reranked.append(hit)
        hits = reranked + hits[k:]
        hits_obj["max_score"] = float(np.max(scores))

    if plan.added_fields:
        for i, hit in enumerate(hits):
            fields = hit.get("fields")
            if not isinstance(fields, dict):
                continue
            fields = {n: v for n, v in fields.items() if n not in plan.added_fields}
            hit = dict(hit)
            if fields:
                hit["fields"] = fields
            else:  # OpenSearch leaves out an empty `fields`
                hit.pop("fields")
            hits[i] = hit

    hits_obj["hits"] = hits[plan.from_ : plan.from_ + plan.size]
    out["hits"] = hits_obj
    if isinstance(out.get("took"), int):
        out["took"] = out["took"] + proxy_ms
    return out


def response_problem(data: Any) -> str | None:
    """Why a search answer cannot be reranked (its shape is not OpenSearch's), or None."""
    if not isinstance(data, Mapping):
        return f"the answer is a {type(data).__name__}, not an object"
    hits = data.get("hits")
    if not isinstance(hits, Mapping):
        return f"[hits] is {type(hits).__name__}, not an object"
    if not isinstance(hits.get("hits"), list) or not all(isinstance(h, Mapping) for h in hits["hits"]):
        return "[hits.hits] is not a list of hits"
    return None


def msearch_problem(data: Any) -> str | None:
    """Why an ``_msearch`` answer cannot be reranked, or None (items with an error are fine)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("responses"), list):
        return "[responses] is not a list"
    for i, item in enumerate(data["responses"]):
        if isinstance(item, Mapping) and "error" in item:
            continue
        problem = response_problem(item)
        if problem is not None:
            return f"item {i}: {problem}"
    return None
