"""Capacity planning: which window K, max_tokens and model give the best NDCG@10 within a p95 budget.

Every cell of the grid (each configured model x each ``max_tokens`` x each K) is
evaluated on this machine with :mod:`es_rerank.evaluation`'s own run: the first
stage straight to OpenSearch, the reranked search through the proxy built
in-process (the server's code, models on ONNX Runtime), ``concurrency`` searches
in flight at once, score and token caches off. A cell's latency is the rerank
stage's (``x-rerank-inference-ms``) over its reranked answers; a cell with any
answer not reranked (timeout, overload) is not counted as within the budget,
whatever its p95 says. The Pareto frontier is the cells no other cell beats on
both NDCG@10 and p95."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import IndexSettings, Settings
from ..errors import EvaluationError, RerankError
from .datasets import EvalData
from .evaluation import DEFAULT_KS, evaluate_async, parse_ks, without_caches

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "PlanCell",
    "PlanResult",
    "plan",
    "plan_async",
    "limit_queries",
    "pareto_frontier",
    "best_within",
    "config_block",
    "format_plan_table",
    "plot_plan",
    "write_plan_outputs",
]


DEFAULT_MAX_TOKENS = (128, 192, 256)


PLOT_FILE = "plan.png"


RESULTS_FILE = "plan.json"


TABLE_FILE = "table.txt"


CONFIG_FILE = "config.yaml"


@dataclass(frozen=True)
class PlanCell:
    """One (model, max_tokens, K) measured."""

    model: str
    max_tokens: int
    k: int
    ndcg10: float  # reranked NDCG@10, every answer as the client got it
    first_stage_ndcg10: float
    recall_k: float  # first stage Recall@K: the most the reranker can bring into the top 10
    p50_ms: float  # rerank stage, reranked answers only
    p95_ms: float
    pairs_per_s: float
    pairs: int  # (query, passage) pairs the model ran for the reranked answers (no cache: every one)
    reranked: int  # answers the model reranked
    not_reranked: int  # answers that fell back (timeout, overload, ...)
    outcomes: dict[str, int] = field(default_factory=dict)

    def within(self, budget_ms: float) -> bool:
        """Every answer reranked, and the p95 inside the budget."""
        return self.not_reranked == 0 and not math.isnan(self.p95_ms) and self.p95_ms <= budget_ms


@dataclass(frozen=True)
class PlanResult:
    """The grid, its Pareto frontier and the best cell within the budget (None: none fits)."""

    index: str
    pattern: str  # the config's index rule the plan is for
    budget_p95_ms: float
    concurrency: int
    queries: int
    rerank_timeout: float
    cells: list[PlanCell]
    frontier: list[PlanCell]
    best: PlanCell | None
    fallback: PlanCell | None  # a cheaper model at the best cell's K and max_tokens, for degrade
    skipped: list[str] = field(default_factory=list)  # cells not run, and why
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["frontier"] = [_key(c) for c in self.frontier]
        out["best"] = _key(self.best) if self.best else None
        out["fallback"] = _key(self.fallback) if self.fallback else None
        out["config"] = config_block(self) if self.best else None
        return out


def _key(cell: PlanCell) -> dict[str, Any]:
    return {"model": cell.model, "max_tokens": cell.max_tokens, "k": cell.k}


def pareto_frontier(cells: Sequence[PlanCell]) -> list[PlanCell]:
    """The cells no other cell beats on both NDCG@10 (higher) and p95 (lower), by p95.

    Cells without a p95 (nothing reranked) are left out.
    """
    timed = sorted((c for c in cells if not math.isnan(c.p95_ms)), key=lambda c: (c.p95_ms, -c.ndcg10))
    frontier: list[PlanCell] = []
    for cell in timed:
        if not frontier or cell.ndcg10 > frontier[-1].ndcg10:
            frontier.append(cell)
    return frontier


def best_within(cells: Sequence[PlanCell], budget_ms: float) -> PlanCell | None:
    """The highest NDCG@10 within the budget; ties go to the lower p95."""
    fits = [c for c in cells if c.within(budget_ms)]
    return max(fits, key=lambda c: (c.ndcg10, -c.p95_ms), default=None)


def _fallback_for(best: PlanCell | None, cells: Sequence[PlanCell]) -> PlanCell | None:
    """Another model at the same K and max_tokens that answers faster: the one with the best NDCG@10."""
    if best is None:
        return None
    cheaper = [
        c
        for c in cells
        if c.model != best.model
        and c.k == best.k
        and c.max_tokens == best.max_tokens
        and c.not_reranked == 0
        and c.p95_ms < best.p95_ms
    ]
    return max(cheaper, key=lambda c: c.ndcg10, default=None)


def config_block(result: PlanResult) -> str:
    """The ``indices`` entry (YAML) for the best cell, with comments on where its figures come from."""
    import yaml

    best = result.best
    if best is None:
        raise EvaluationError(f"no configuration meets p95 <= {result.budget_p95_ms:g} ms")
    entry: dict[str, Any] = {
        "pattern": result.pattern,
        "model": best.model,
        "window": best.k,
        "max_tokens": best.max_tokens,
    }
    steps = ["shrink_window", "first_stage"]
    if result.fallback is not None:
        entry["fallback_model"] = result.fallback.model
        steps.insert(0, "fallback_model")
    if "degrade" in IndexSettings.model_fields:
        entry["degrade"] = steps
    head = [
        f"# es-rerank plan: best NDCG@10 within rerank p95 <= {result.budget_p95_ms:g} ms "
        f"at {result.concurrency} concurrent search(es), {result.queries} queries",
        f"# model {best.model}, K = {best.k}, max_tokens {best.max_tokens}: NDCG@10 {best.ndcg10:.4f} "
        f"(first stage {best.first_stage_ndcg10:.4f}), p50 {best.p50_ms:.0f} ms, p95 {best.p95_ms:.0f} ms",
    ]
    if result.fallback is not None:
        f = result.fallback
        head.append(f"# fallback {f.model} at the same K: NDCG@10 {f.ndcg10:.4f}, p95 {f.p95_ms:.0f} ms")
    if "degrade" not in IndexSettings.model_fields:
        head.append(f"# degrade (under load): {', '.join(steps)}")
    body = yaml.safe_dump({"indices": [entry]}, sort_keys=False, default_flow_style=False)
    return "\n".join(head) + "\n" + body.rstrip("\n")


def limit_queries(data: EvalData, limit: int | None) -> EvalData:
    """The first ``limit`` judged queries (in file order) and their judgements."""
    if limit is None or limit >= len(data.queries):
        return data
    if limit < 1:
        raise EvaluationError(f"limit must be at least 1, got {limit}")
    queries = dict(list(data.queries.items())[:limit])
    return replace(data, queries=queries, qrels={qid: data.qrels[qid] for qid in queries})


def _cell_settings(settings: Settings, spec: IndexSettings, model: str, max_tokens: int, max_k: int) -> Settings:
    """The config with the index's rule pinned to one model and max_tokens, K up to ``max_k`` allowed."""
    update: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "max_window": max(spec.max_window, max_k)}
    if "degrade" in IndexSettings.model_fields:
        # Measure the model itself: no fallback model or shrunk window standing in for it.
        update.update(degrade=["first_stage"], fallback_model=None)
    pinned = spec.model_copy(update=update)
    indices = [pinned if rule is spec else rule for rule in settings.indices]
    return settings.model_copy(update={"indices": indices})


async def plan_async(
    data: EvalData,
    *,
    settings: Settings,
    index: str,
    budget_p95_ms: float,
    ks: Sequence[int] = DEFAULT_KS,
    max_tokens: Sequence[int] = DEFAULT_MAX_TOKENS,
    models: Sequence[str] | None = None,
    concurrency: int = 1,
    rerank_timeout: float | None = None,
    progress: bool = False,
    echo: Callable[[str], None] | None = None,
) -> PlanResult:
    """:func:`plan` inside a running event loop.

    Long on purpose: the grid's cells, the frontier and the chosen config read as one run.
    """
    import time

    from tqdm import tqdm

    from ..app import create_app, load_rerankers

    ks = parse_ks(ks)
    token_grid = parse_ks(max_tokens)
    if budget_p95_ms <= 0:
        raise EvaluationError(f"the p95 budget must be positive, got {budget_p95_ms:g} ms")
    spec = settings.index_for(index)
    if spec is None:
        raise EvaluationError(f"index [{index}] matches no `indices` entry of the config: it would not be reranked")
    if not spec.rerank:
        raise EvaluationError(f"index [{index}] has rerank: false in the config")
    names = list(models) if models else list(settings.models)
    unknown = [m for m in names if m not in settings.models]
    if unknown:
        raise EvaluationError(
            f"model(s) {', '.join(unknown)} not in the config's models ({', '.join(settings.models)})"
        )
    # A hopeless cell is cut off at a few times the budget rather than left to run.
    timeout = rerank_timeout if rerank_timeout is not None else max(3 * budget_p95_ms / 1000, 1.0)
    server = settings.server.model_copy(update={"rerank_timeout": timeout})
    quiet = without_caches(settings)  # every cell pays for its own scores
    base = quiet.model_copy(update={"server": server, "models": {m: quiet.models[m] for m in names}})
    started = time.perf_counter()
    try:
        rerankers = load_rerankers(base)
    except RerankError:
        raise
    except Exception as exc:  # onnxruntime's own errors on a bad model file
        raise EvaluationError(f"cannot load the model: {exc}") from None

    cells: list[PlanCell] = []
    skipped: list[str] = []
    grid: list[tuple[str, int]] = []
    for name in names:
        limit = int(rerankers[name].info().get("max_length", 0)) or max(token_grid)
        for tokens in token_grid:
            if tokens > limit:
                skipped.append(f"model {name}: max_tokens {tokens} is above its max_length {limit}")
            else:
                grid.append((name, tokens))
    for line in skipped:
        if echo is not None:
            echo(f"skipped: {line}")
    bar = tqdm(
        total=len(grid) * len(ks) * len(data.queries),
        desc="plan",
        unit="q",
        disable=not progress,
        mininterval=1.0,
        file=sys.stderr,
    )
    try:
        for name, tokens in grid:
            bar.set_description(f"{name} max_tokens {tokens}")
            cell_settings = _cell_settings(base, spec, name, tokens, max(ks))
            app = create_app(cell_settings, rerankers={name: rerankers[name]})
            try:
                # One search first, not measured: a cell's first call pays for thread
                # pools and allocations at this width, which is no cost of the setting.
                await evaluate_async(limit_queries(data, 1), index=index, ks=[min(ks)], settings=cell_settings, app=app)
                result = await evaluate_async(
                    data,
                    index=index,
                    ks=ks,
                    settings=cell_settings,
                    app=app,
                    concurrency=concurrency,
                    on_query=lambda: bar.update(1),
                )
            finally:
                await app.upstream.aclose()
            for r in result.results:
                cells.append(
                    PlanCell(
                        model=name,
                        max_tokens=tokens,
                        k=r.k,
                        ndcg10=r.reranked["ndcg@10"],
                        first_stage_ndcg10=r.first_stage["ndcg@10"],
                        recall_k=r.first_stage[f"recall@{r.k}"],
                        p50_ms=r.rerank_p50_ms,
                        p95_ms=r.rerank_p95_ms,
                        pairs_per_s=r.pairs_per_s,
                        pairs=r.pairs,
                        reranked=r.reranked_count,
                        not_reranked=r.fallbacks,
                        outcomes=dict(r.outcomes),
                    )
                )
    finally:
        bar.close()
        for reranker in rerankers.values():
            close = getattr(reranker, "close", None)
            if close is not None:
                close()
    best = best_within(cells, budget_p95_ms)
    return PlanResult(
        index=index,
        pattern=spec.pattern,
        budget_p95_ms=budget_p95_ms,
        concurrency=concurrency,
        queries=len(data.queries),
        rerank_timeout=timeout,
        cells=cells,
        frontier=pareto_frontier(cells),
        best=best,
        fallback=_fallback_for(best, cells),
        skipped=skipped,
        seconds=time.perf_counter() - started,
    )


def plan(data: EvalData, **options: Any) -> PlanResult:
    """Evaluate the grid and choose; see :func:`plan_async` for the options.

    ``settings`` is the config (its upstream, its index rule for ``index``, its
    models); ``budget_p95_ms`` the rerank stage's p95 budget; ``ks``, ``max_tokens``
    and ``models`` the grid; ``rerank_timeout`` cuts a cell's searches off (default
    three times the budget, at least a second).
    """
    return asyncio.run(plan_async(data, **options))


def _fmt(value: float, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def format_plan_table(result: PlanResult) -> str:
    """One row per cell; ``*`` marks the frontier, ``ok`` the cells within the budget, ``best`` the choice."""
    frontier = {id(c) for c in result.frontier}
    head = ["model", "max_tokens", "K", "NDCG@10", "Recall@K", "p50 ms", "p95 ms", "pairs/s", "not reranked", ""]
    rows = []
    for c in sorted(result.cells, key=lambda c: (c.model, c.max_tokens, c.k)):
        marks = []
        if id(c) in frontier:
            marks.append("*")
        if c is result.best:
            marks.append("best")
        elif c.within(result.budget_p95_ms):
            marks.append("ok")
        rows.append(
            [
                c.model,
                str(c.max_tokens),
                str(c.k),
                _fmt(c.ndcg10, 4),
                _fmt(c.recall_k, 4),
                _fmt(c.p50_ms, 1),
                _fmt(c.p95_ms, 1),
                _fmt(c.pairs_per_s, 1),
                str(c.not_reranked),
                " ".join(marks),
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i in (0, len(head) - 1) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths))
        ).rstrip()

    first_stage = result.cells[0].first_stage_ndcg10 if result.cells else math.nan
    out = [
        f"index [{result.index}], {result.queries} queries, {result.concurrency} concurrent, "
        f"budget rerank p95 <= {result.budget_p95_ms:g} ms (first stage NDCG@10 {_fmt(first_stage, 4)})",
        line(head),
        "-" * len(line(head)),
        *(line(r) for r in rows),
        "* Pareto frontier (NDCG@10 vs p95); ok: within the budget, every answer reranked",
    ]
    out += [f"skipped: {s}" for s in result.skipped]
    return "\n".join(out)


def plot_plan(result: PlanResult, path: str | Path) -> Path:
    """A PNG: NDCG@10 against rerank p95 per cell, the frontier, the budget and the first stage."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise EvaluationError("the plot needs matplotlib: pip install matplotlib") from None
    fig = Figure(figsize=(7.5, 4.5), dpi=120)
    ax = fig.add_subplot()
    markers = "osD^vP*X"
    models = sorted({c.model for c in result.cells})
    tokens = sorted({c.max_tokens for c in result.cells})
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink"]
    for c in result.cells:
        if math.isnan(c.p95_ms):
            continue
        ax.scatter(
            c.p95_ms,
            c.ndcg10,
            marker=markers[models.index(c.model) % len(markers)],
            color=colours[tokens.index(c.max_tokens) % len(colours)],
            s=36,
            zorder=3,
        )
        ax.annotate(f"K={c.k}", (c.p95_ms, c.ndcg10), textcoords="offset points", xytext=(4, 3), fontsize=7)
    if result.frontier:
        ax.plot(
            [c.p95_ms for c in result.frontier],
            [c.ndcg10 for c in result.frontier],
            "-",
            color="black",
            alpha=0.5,
            label="Pareto frontier",
            zorder=2,
        )
    ax.axvline(result.budget_p95_ms, color="tab:red", linestyle=":", label=f"budget p95 {result.budget_p95_ms:g} ms")
    if result.cells:
        ax.axhline(result.cells[0].first_stage_ndcg10, color="tab:gray", linestyle="--", label="first stage NDCG@10")
    if result.best is not None:
        ax.scatter(
            result.best.p95_ms,
            result.best.ndcg10,
            s=160,
            facecolors="none",
            edgecolors="tab:red",
            label="best within budget",
            zorder=4,
        )
    for i, t in enumerate(tokens):  # legend entries for the colours and markers
        ax.scatter([], [], color=colours[i % len(colours)], marker="o", label=f"max_tokens {t}")
    if len(models) > 1:
        for i, m in enumerate(models):
            ax.scatter([], [], color="black", marker=markers[i % len(markers)], label=f"model {m}")
    ax.set_xlabel(f"rerank stage p95 (ms), {result.concurrency} concurrent")
    ax.set_ylabel("NDCG@10")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: never over a cell
    ax.set_title(f"[{result.index}] {result.queries} queries: NDCG@10 against p95", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def write_plan_outputs(result: PlanResult, out_dir: str | Path) -> dict[str, Path]:
    """``plan.json``, ``table.txt``, ``plan.png`` and (when a cell fits) ``config.yaml`` in ``out_dir``."""
    out = Path(out_dir)
    paths = {"results": out / RESULTS_FILE, "table": out / TABLE_FILE, "plot": out / PLOT_FILE}
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths["results"].write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
        paths["table"].write_text(format_plan_table(result) + "\n", encoding="utf-8")
        if result.best is not None:
            paths["config"] = out / CONFIG_FILE
            paths["config"].write_text(config_block(result) + "\n", encoding="utf-8")
    except OSError as exc:
        raise EvaluationError(f"cannot write to {out}: {exc.strerror}") from None
    plot_plan(result, paths["plot"])
    return paths
