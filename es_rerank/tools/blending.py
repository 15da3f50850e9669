"""``es-rerank blend``: choose how much of the first-stage score to blend into the model's.

Each query of a judged split goes once through the proxy built in-process (the server's
own code, ``eval``'s way: the first stage from OpenSearch, the model's scores for the whole
window K with blending off, caches off). Every hit comes back with the model's score and
its first-stage score (``_rerank.first_stage_score``), so every (method, weight) of the
grid is then ranked and measured without running the model again. NDCG@10 comes from
ir-measures (``evaluation.rank_metrics``).

The weight is chosen on one split (``--queries``/``--qrels``, e.g. SciFact's train
queries) and, with ``--report-queries``/``--report-qrels``, measured on another (e.g.
dev) beside the model alone and the first stage: the choice never sees the split it is
reported on. It prints the ``blend`` entry for the index's config.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from ..blend import BLEND_METHODS, Blend, blend_scores
from ..config import Settings
from ..errors import EvaluationError
from .datasets import EvalData
from .evaluation import default_first_stage_query, first_stage_body, rank_metrics, without_caches

__all__ = ["Window", "collect_windows", "sweep", "BlendReport", "choose_blend", "format_report"]

DEFAULT_WEIGHTS = tuple(round(0.05 * i, 2) for i in range(0, 11))  # 0 .. 0.5


@dataclass
class Window:
    """One query's window: doc ids in first-stage order, their first-stage and model scores."""

    ids: list[str]
    first_stage: np.ndarray
    model: np.ndarray


async def collect_windows(
    settings: Settings,
    index: str,
    data: EvalData,
    *,
    k: int,
    timeout: float = 600.0,
    on_query: Callable[[int, int], None] | None = None,
) -> dict[str, Window]:
    """The model's and the first stage's scores for every query's top ``k``, through the proxy."""
    from ..app import create_app

    spec = settings.index_for(index)
    if spec is None or not spec.rerank:
        raise EvaluationError(f"index [{index}] is not reranked by this config")
    if k > spec.max_window:
        raise EvaluationError(f"K = {k} is larger than the index's max_window ({spec.max_window})")
    template = spec.first_stage_query or default_first_stage_query(spec.fields)
    app = create_app(without_caches(settings))
    path = f"/{quote(index, safe='')}/_search"
    out: dict[str, Window] = {}
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://es-rerank",
            timeout=httpx.Timeout(timeout, connect=10.0),
        ) as proxy:
            for n, (qid, text) in enumerate(data.queries.items(), 1):
                body = first_stage_body(template, text, size=k)
                body["ext"] = {"rerank": {"window_size": k, "blend": False}}
                r = await proxy.post(path, json=body)
                if r.status_code != 200:
                    raise EvaluationError(f"query {qid}: the proxy answered {r.status_code}: {r.text[:300]}")
                if r.headers.get("x-rerank") != "reranked" or r.headers.get("x-rerank-reason") not in (
                    None,
                    "reranked",
                ):
                    raise EvaluationError(
                        f"query {qid}: not reranked whole (x-rerank {r.headers.get('x-rerank')}, reason "
                        f"{r.headers.get('x-rerank-reason')}); raise --rerank-timeout"
                    )
                hits = r.json()["hits"]["hits"]
                rows = sorted(
                    (h["_rerank"]["first_stage_rank"], h["_id"], h["_rerank"]["first_stage_score"], h["_score"])
                    for h in hits
                )
                out[qid] = Window(
                    ids=[row[1] for row in rows],
                    first_stage=np.array([row[2] for row in rows], dtype=np.float64),
                    model=np.array([row[3] for row in rows], dtype=np.float64),
                )
                if on_query is not None:
                    on_query(n, len(data.queries))
    finally:
        await app.upstream.aclose()
        for reranker in app.rerankers.values():
            close = getattr(reranker, "close", None)
            if close is not None:
                close()
    return out


def _ranking(window: Window, blend: Blend | None, *, first_stage: bool = False) -> list[str]:
    if first_stage:
        return list(window.ids)
    scores = window.model if blend is None else blend_scores(window.model, window.first_stage, blend)
    order = np.argsort(-scores, kind="stable")
    return [window.ids[i] for i in order]


def ndcg10(
    windows: Mapping[str, Window],
    qrels: Mapping[str, Mapping[str, int]],
    blend: Blend | None,
    *,
    first_stage: bool = False,
) -> float:
    """Mean NDCG@10 over ``windows`` of the model's order blended by ``blend`` (None: the model alone)."""
    rankings = {qid: _ranking(w, blend, first_stage=first_stage) for qid, w in windows.items()}
    means, _ = rank_metrics(qrels, rankings, recall_at=10)
    return means["ndcg@10"]


def sweep(
    windows: Mapping[str, Window],
    qrels: Mapping[str, Mapping[str, int]],
    methods: Sequence[str],
    weights: Sequence[float],
) -> dict[tuple[str, float], float]:
    """NDCG@10 for every (method, weight)."""
    return {(m, w): ndcg10(windows, qrels, Blend(m, w)) for m in methods for w in weights}  # type: ignore[arg-type]


@dataclass
class BlendReport:
    k: int
    choose_queries: int
    grid: dict[tuple[str, float], float]
    chosen: Blend
    choose_model_alone: float
    choose_first_stage: float
    report_queries: int = 0
    report: dict[str, float] = field(default_factory=dict)  # first_stage, model, blended (and the grid)
    report_grid: dict[tuple[str, float], float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "choose_queries": self.choose_queries,
            "grid": [{"method": m, "weight": w, "ndcg@10": v} for (m, w), v in self.grid.items()],
            "chosen": {"method": self.chosen.method, "weight": self.chosen.weight, "rrf_k": self.chosen.rrf_k},
            "choose_model_alone": self.choose_model_alone,
            "choose_first_stage": self.choose_first_stage,
            "report_queries": self.report_queries,
            "report": self.report,
            "report_grid": [{"method": m, "weight": w, "ndcg@10": v} for (m, w), v in self.report_grid.items()],
            "seconds": self.seconds,
        }


def choose_blend(
    choose: Mapping[str, Window],
    choose_qrels: Mapping[str, Mapping[str, int]],
    *,
    k: int,
    methods: Sequence[str] = BLEND_METHODS,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    report: Mapping[str, Window] | None = None,
    report_qrels: Mapping[str, Mapping[str, int]] | None = None,
) -> BlendReport:
    """The (method, weight) with the best NDCG@10 on ``choose`` (the model alone on ties), and
    its NDCG@10 on ``report`` beside the model alone and the first stage."""
    grid = sweep(choose, choose_qrels, methods, weights)
    alone = ndcg10(choose, choose_qrels, None)
    best = max(grid.items(), key=lambda kv: (round(kv[1], 6), -kv[0][1]))  # ties: the smaller weight
    (method, weight), value = best
    chosen = Blend(method, weight) if value > alone else Blend(method, 0.0)  # type: ignore[arg-type]
    out = BlendReport(
        k=k, choose_queries=len(choose), grid=grid, chosen=chosen, choose_model_alone=alone,
        choose_first_stage=ndcg10(choose, choose_qrels, None, first_stage=True),
    )  # fmt: skip
    if report is not None and report_qrels is not None:
        out.report_queries = len(report)
        out.report = {
            "first_stage": ndcg10(report, report_qrels, None, first_stage=True),
            "model": ndcg10(report, report_qrels, None),
            "blended": ndcg10(report, report_qrels, chosen),
        }
        out.report_grid = sweep(report, report_qrels, methods, weights)
    return out


def format_report(r: BlendReport, index: str) -> str:
    methods = sorted({m for m, _ in r.grid}, key=BLEND_METHODS.index)
    weights = sorted({w for _, w in r.grid})
    lines = [f"NDCG@10 at K = {r.k}, choosing split ({r.choose_queries} queries); weight = the first stage's share"]
    lines.append(
        "weight  "
        + "  ".join(f"{m:>7}" for m in methods)
        + ("  | report: " + "  ".join(f"{m:>7}" for m in methods) if r.report_grid else "")
    )
    for w in weights:
        row = f"{w:6.2f}  " + "  ".join(f"{r.grid[(m, w)]:7.4f}" for m in methods)
        if r.report_grid:
            row += "  |         " + "  ".join(f"{r.report_grid[(m, w)]:7.4f}" for m in methods)
        lines.append(row)
    lines.append("")
    chosen_value = r.grid.get((r.chosen.method, r.chosen.weight), r.choose_model_alone)
    lines.append(
        f"choosing split: first stage {r.choose_first_stage:.4f}, model alone {r.choose_model_alone:.4f}, "
        f"chosen {r.chosen.method} weight {r.chosen.weight:.2f}: {chosen_value:.4f}"
    )
    if r.report:
        lines.append(
            f"report split ({r.report_queries} queries): first stage {r.report['first_stage']:.4f}, model alone "
            f"{r.report['model']:.4f}, blended ({r.chosen.method}, {r.chosen.weight:.2f}) {r.report['blended']:.4f} "
            f"({r.report['blended'] - r.report['model']:+.4f})"
        )
    lines.append("")
    if r.chosen.weight > 0:
        lines.append(f"config (indices entry for [{index}]):")
        lines.append(f"    blend: {{method: {r.chosen.method}, weight: {r.chosen.weight}}}")
    else:
        lines.append("no weight above 0 beat the model alone on the choosing split: leave blend off")
    return "\n".join(lines)


def write_report(r: BlendReport, out_dir: str | Path, text: str) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "blend.json").write_text(json.dumps(r.to_dict(), indent=1), encoding="utf-8")
    (out / "table.txt").write_text(text + "\n", encoding="utf-8")
    return out


def run_blend(
    settings: Settings,
    index: str,
    choose: EvalData,
    *,
    k: int,
    report: EvalData | None = None,
    methods: Sequence[str] = BLEND_METHODS,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    progress: Callable[[str], None] | None = None,
) -> BlendReport:
    """Collect both splits' windows and choose; see the module docstring."""
    started = time.perf_counter()
    say = progress or (lambda message: None)

    def tick(name: str) -> Callable[[int, int], None]:
        def on_query(n: int, total: int) -> None:
            if n == total or n % 20 == 0:
                say(f"{name}: {n}/{total} queries")

        return on_query

    choose_w = asyncio.run(collect_windows(settings, index, choose, k=k, on_query=tick("choosing split")))
    report_w = (
        asyncio.run(collect_windows(settings, index, report, k=k, on_query=tick("report split"))) if report else None
    )
    r = choose_blend(
        choose_w, choose.qrels, k=k, methods=methods, weights=weights, report=report_w,
        report_qrels=report.qrels if report else None,
    )  # fmt: skip
    r.seconds = time.perf_counter() - started
    return r
