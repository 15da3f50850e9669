"""Rebuilding OpenSearch's answer with the model's order, a pure function.

:func:`rebuild_response` reorders the window by the model's scores, slices the
client's page and removes the fields fetched only for the model; everything else is
OpenSearch's own. :func:`response_problem` says why an answer is not one that can be
rebuilt (the proxy then answers 502). No I/O: unit tested on recorded responses.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np

from .plan import SearchPlan

__all__ = ["window_hits", "rebuild_response", "response_problem", "msearch_problem"]


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
