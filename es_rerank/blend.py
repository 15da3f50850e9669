"""Blending the first-stage score with the model's, per query: a pure function.

Off unless an index's ``blend`` or a request's ``ext.rerank.blend`` asks for it. Both
score lists are first put on one scale per query, then mixed with ``weight`` the
first stage's share (0: the model alone, 1: the first stage alone):

- ``minmax``: each list scaled to [0, 1] over the window (a constant list counts 0);
- ``zscore``: each list less its mean over its standard deviation (a constant list: 0);
- ``rrf``: reciprocal-rank fusion, ``(1 - w) / (k + model rank) + w / (k + first-stage rank)``
  with ranks from 1 and ``k`` = ``rrf_k`` (60, as Cormack et al. and OpenSearch's
  hybrid search use).

The weight is chosen on a judged split with ``es-rerank blend`` (es_rerank/tools/blending.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["BLEND_METHODS", "Blend", "blend_scores", "parse_blend", "first_stage_scores"]

BLEND_METHODS = ("minmax", "zscore", "rrf")
BlendMethod = Literal["minmax", "zscore", "rrf"]


@dataclass(frozen=True)
class Blend:
    """How to mix: a method, the first stage's weight in [0, 1], and RRF's constant."""

    method: BlendMethod = "minmax"
    weight: float = 0.0
    rrf_k: int = 60

    def __post_init__(self) -> None:
        if self.method not in BLEND_METHODS:
            raise ValueError(f"blend method must be one of {', '.join(BLEND_METHODS)}, not {self.method!r}")
        if isinstance(self.weight, bool) or not 0.0 <= float(self.weight) <= 1.0:
            raise ValueError(f"blend weight must be a number from 0 to 1, not {self.weight!r}")
        if isinstance(self.rrf_k, bool) or not isinstance(self.rrf_k, int) or self.rrf_k < 1:
            raise ValueError(f"blend rrf_k must be a positive integer, not {self.rrf_k!r}")


def _minmax(x: np.ndarray) -> np.ndarray:
    span = float(x.max() - x.min()) if x.size else 0.0
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def _zscore(x: np.ndarray) -> np.ndarray:
    std = float(x.std()) if x.size else 0.0
    return (x - x.mean()) / std if std > 0 else np.zeros_like(x)


def _ranks(x: np.ndarray) -> np.ndarray:
    """1 for the highest score; ties keep their input order (as the stable sorts do)."""
    order = np.argsort(-x, kind="stable")
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.arange(1, x.size + 1)
    return ranks


def blend_scores(
    model: Sequence[float] | np.ndarray, first_stage: Sequence[float] | np.ndarray, blend: Blend
) -> np.ndarray:
    """One score per hit: the model's and the first stage's, normalized per query and mixed."""
    m = np.asarray(model, dtype=np.float64)
    f = np.asarray(first_stage, dtype=np.float64)
    if m.shape != f.shape:
        raise ValueError(f"{m.size} model scores for {f.size} first-stage scores")
    w = float(blend.weight)
    if blend.method == "rrf":
        return (1.0 - w) / (blend.rrf_k + _ranks(m)) + w / (blend.rrf_k + _ranks(f))
    norm = _minmax if blend.method == "minmax" else _zscore
    return (1.0 - w) * norm(m) + w * norm(f)


def first_stage_scores(hits: Sequence[Mapping[str, Any]]) -> np.ndarray | None:
    """The hits' ``_score`` values, or None when any is missing (a sorted or scoreless search)."""
    out = []
    for hit in hits:
        score = hit.get("_score")
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            return None
        out.append(float(score))
    return np.asarray(out, dtype=np.float64)


def parse_blend(raw: Any, default: Blend | None) -> Blend | None:
    """A request's ``ext.rerank.blend``: absent -> the index's ``default``; ``false``/``null`` -> off;
    ``true`` -> the index's blend (or ``minmax`` at weight 0.5 when it has none); an object
    ``{"method", "weight", "rrf_k"}`` -> its keys over the index's. Raises ValueError."""
    if raw is None or raw is False:
        return None
    if raw is True:
        return default or Blend(weight=0.5)
    if not isinstance(raw, Mapping):
        raise ValueError("[ext.rerank.blend] must be true, false or an object with method and weight")
    unknown = sorted(set(raw) - {"method", "weight", "rrf_k"})
    if unknown:
        raise ValueError(f"[ext.rerank.blend] unknown option(s) {unknown}; known: ['method', 'rrf_k', 'weight']")
    base = default or Blend()
    weight = raw.get("weight", base.weight if default else None)
    if weight is None:
        raise ValueError("[ext.rerank.blend.weight] is required (a number from 0 to 1)")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ValueError("[ext.rerank.blend.weight] must be a number from 0 to 1")
    return Blend(method=raw.get("method", base.method), weight=float(weight), rrf_k=raw.get("rrf_k", base.rrf_k))
