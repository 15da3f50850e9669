"""Offline evaluation on BEIR-format data: first stage vs reranked, and what it costs.

For each window size K, every query is searched twice:

* **first stage**: the index's first-stage query (``first_stage_query``, default
  the BEIR paper's Elasticsearch BM25 baseline: ``multi_match`` over the index's
  fields, ``best_fields``, ``tie_breaker`` 0.5) sent straight to OpenSearch with
  ``size`` K;
* **reranked**: the same query through the proxy with ``size`` 10 and
  ``ext.rerank.window_size`` K. In-process (a config file) the proxy is built with
  :func:`es_rerank.create_app` and driven over ASGI, so every query goes through the
  code the server runs (parse, plan, upstream call, scoring, rebuild); black-box (a
  proxy URL) it is a running deployment.

One query at a time by default (concurrency 1), so the rerank stage's latency, read
from the ``x-rerank-inference-ms`` header, is that of one request alone; the
in-process proxy runs with its score and token caches off, so a K does not reuse
the scores of the K before it. Latency and pairs/s
are taken over the answers the model reranked (``x-rerank: reranked``) only: an
answer that fell back to first-stage order (timeout, overload, model error) costs
what its deadline says, not what scoring costs, so it is counted apart, by
``x-rerank`` / ``x-rerank-reason``. NDCG and the other quality figures take every
answer as the client got it. Metrics come from ir-measures (trec_eval's code
through pytrec_eval), not from hand-written maths."""

from __future__ import annotations

import asyncio
import copy
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from ..config import IndexSettings, Settings
from ..errors import EvaluationError, RerankError
from .datasets import EvalData, load_beir
from .reports import percentile

if TYPE_CHECKING:  # pragma: no cover
    from ..app import RerankProxy


__all__ = [
    "KResult",
    "EvalResult",
    "QUERY_PLACEHOLDER",
    "default_first_stage_query",
    "first_stage_body",
    "parse_ks",
    "rank_metrics",
    "evaluate",
    "evaluate_async",
    "without_caches",
    "format_table",
    "fallback_lines",
    "plot_results",
    "write_outputs",
    "run_eval",
]


QUERY_PLACEHOLDER = "{{query_text}}"


PAGE = 10  # the reranked page: NDCG@10, MRR@10, Recall@10 are read from it


DEFAULT_KS = (10, 20, 50, 100)


PLOT_FILE = "ndcg_latency.png"


RESULTS_FILE = "results.json"


TABLE_FILE = "table.txt"


def parse_ks(text: str | Iterable[int]) -> list[int]:
    """``"10,20,50,100"`` -> ``[10, 20, 50, 100]`` (sorted, without repeats)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    ks: set[int] = set()
    for item in items:
        try:
            k = int(str(item).strip())
        except ValueError:
            raise EvaluationError(f"K must be a comma-separated list of positive integers, got {text!r}") from None
        if k < 1:
            raise EvaluationError(f"K must be positive, got {k}")
        ks.add(k)
    if not ks:
        raise EvaluationError("no K given")
    return sorted(ks)


def default_first_stage_query(fields: Sequence[str] = ("title", "text")) -> dict[str, Any]:
    """The BEIR paper's Elasticsearch BM25 baseline as a query template."""
    return {
        "multi_match": {
            "query": QUERY_PLACEHOLDER,
            "fields": list(fields),
            "type": "best_fields",
            "tie_breaker": 0.5,
        }
    }


def _fill(node: Any, text: str) -> Any:
    if isinstance(node, str):
        return node.replace(QUERY_PLACEHOLDER, text)
    if isinstance(node, list):
        return [_fill(item, text) for item in node]
    if isinstance(node, dict):
        return {key: _fill(value, text) for key, value in node.items()}
    return copy.copy(node)


def _has_placeholder(node: Any) -> bool:
    if isinstance(node, str):
        return QUERY_PLACEHOLDER in node
    if isinstance(node, list):
        return any(_has_placeholder(item) for item in node)
    if isinstance(node, dict):
        return any(_has_placeholder(value) for value in node.values())
    return False


def first_stage_body(template: Mapping[str, Any], text: str, *, size: int) -> dict[str, Any]:
    """A ``_search`` body: the template with the query text in place, ``size`` hits, no ``_source``.

    ``template`` is a query clause (what goes under ``query``) or, when it has a
    top-level ``query`` key, a whole search body. The text is put in as a value,
    so no escaping is needed; the template is not mutated.
    """
    if not _has_placeholder(template):
        raise EvaluationError(
            f"first_stage_query has no {QUERY_PLACEHOLDER} for the query text: {json.dumps(template)}"
        )
    filled = _fill(dict(template), text)
    body = filled if "query" in filled else {"query": filled}
    body["size"] = size
    body.setdefault("_source", False)
    return body


def _measures(recall_at: int):
    import ir_measures
    from ir_measures import RR, R, nDCG

    return ir_measures, {"ndcg@10": nDCG @ 10, "mrr@10": RR @ 10, f"recall@{recall_at}": R @ recall_at}


def rank_metrics(
    qrels: Mapping[str, Mapping[str, int]],
    rankings: Mapping[str, Sequence[str]],
    *,
    recall_at: int,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """NDCG@10, MRR@10 and Recall@``recall_at`` of ranked lists of doc ids.

    Returns the means over every query of ``rankings`` (a query with no hits counts
    0) and the per-query values. The order of each list is the ranking: scores are
    made from ranks, so trec_eval's tie-breaking (by doc id) never reorders it.
    """
    ir_measures, named = _measures(recall_at)
    run = {qid: {did: float(len(ids) - i) for i, did in enumerate(dict.fromkeys(ids))} for qid, ids in rankings.items()}
    judged = {qid: dict(qrels.get(qid, {})) for qid in rankings}
    per_query = {qid: {name: 0.0 for name in named} for qid in rankings}
    by_measure = {measure: name for name, measure in named.items()}
    for metric in ir_measures.iter_calc(list(named.values()), judged, run):
        per_query[metric.query_id][by_measure[metric.measure]] = float(metric.value)
    n = max(len(per_query), 1)
    means = {name: sum(q[name] for q in per_query.values()) / n for name in named}
    return means, per_query


@dataclass(frozen=True)
class KResult:
    """Everything measured for one window size K."""

    k: int
    first_stage: dict[str, float]  # ndcg@10, mrr@10, recall@K
    reranked: dict[str, float]  # ndcg@10, mrr@10, recall@10
    rerank_ms: list[float] = field(repr=False)  # x-rerank-inference-ms of each reranked answer
    total_ms: list[float] = field(repr=False)  # the proxy request as the client saw it, reranked answers
    pairs: int  # (query, passage) pairs the model scored for the reranked answers
    fallbacks: int  # answers the model did not rerank (x-rerank other than "reranked")
    per_query: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    outcomes: dict[str, int] = field(default_factory=dict)  # "x-rerank/x-rerank-reason" -> answers
    concurrency: int = 1  # searches in flight at once
    wall_s: float = 0.0  # wall-clock time of this K's searches

    @property
    def reranked_count(self) -> int:
        return len(self.rerank_ms)

    @property
    def rerank_p50_ms(self) -> float:
        return percentile(self.rerank_ms, 50)

    @property
    def rerank_p95_ms(self) -> float:
        return percentile(self.rerank_ms, 95)

    @property
    def pairs_per_s(self) -> float:
        # One search at a time: the rerank stages' own time. Concurrent searches
        # overlap, so there it is the pairs over the wall-clock time.
        seconds = sum(self.rerank_ms) / 1000 if self.concurrency == 1 else self.wall_s
        return self.pairs / seconds if seconds > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "first_stage": self.first_stage,
            "reranked": self.reranked,
            "latency": {
                "rerank_p50_ms": self.rerank_p50_ms,
                "rerank_p95_ms": self.rerank_p95_ms,
                "rerank_mean_ms": sum(self.rerank_ms) / len(self.rerank_ms) if self.rerank_ms else math.nan,
                "request_p50_ms": percentile(self.total_ms, 50),
                "request_p95_ms": percentile(self.total_ms, 95),
                "pairs": self.pairs,
                "pairs_per_s": self.pairs_per_s,
                "over": "reranked answers only",
                "reranked_answers": self.reranked_count,
            },
            "fallbacks": self.fallbacks,
            "outcomes": self.outcomes,
            "per_query": self.per_query,
        }


@dataclass(frozen=True)
class EvalResult:
    """One evaluation: a :class:`KResult` per K, and what was evaluated."""

    index: str
    mode: str  # "in-process" or "black-box"
    target: str  # the config file or proxy URL
    upstream: str
    first_stage_query: dict[str, Any]
    queries: int
    unjudged: int
    results: list[KResult]
    model: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "results"}
        out["results"] = [r.to_dict() for r in self.results]
        return out


def _fmt(value: float, digits: int = 4) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_table(result: EvalResult) -> str:
    """A plain-text table: one row per K, first stage then reranked then cost."""
    head = [
        ("", "K"),
        ("first stage", "NDCG@10"),
        ("", "MRR@10"),
        ("", "Recall@K"),
        ("reranked", "NDCG@10"),
        ("", "MRR@10"),
        ("", "Recall@10"),
        ("rerank ms", "p50"),
        ("", "p95"),
        ("", "pairs/s"),
    ]
    rows = []
    for r in result.results:
        rows.append(
            [
                str(r.k),
                _fmt(r.first_stage["ndcg@10"]),
                _fmt(r.first_stage["mrr@10"]),
                _fmt(r.first_stage[f"recall@{r.k}"]),
                _fmt(r.reranked["ndcg@10"]),
                _fmt(r.reranked["mrr@10"]),
                _fmt(r.reranked["recall@10"]),
                _fmt(r.rerank_p50_ms, 1),
                _fmt(r.rerank_p95_ms, 1),
                _fmt(r.pairs_per_s, 1),
            ]
        )
    widths = [max(len(h[1]), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    sep = " | "
    groups = [(0, 1), (1, 4), (4, 7), (7, 9), (9, 10)]
    for a, b in groups:  # a group's title fits over its columns
        short = len(head[a][0]) - (sum(widths[a:b]) + b - a - 1)
        if short > 0:
            widths[a] += short

    def line(cells: list[str]) -> str:
        return sep.join(" ".join(cells[i].rjust(widths[i]) for i in range(a, b)) for a, b in groups)

    def group_line() -> str:
        parts = []
        for a, b in groups:
            span = sum(widths[a:b]) + (b - a - 1)
            parts.append(head[a][0].center(span) if b - a > 1 else head[a][0].rjust(span))
        return sep.join(parts)

    title = f"index [{result.index}], {result.queries} queries ({result.mode}: {result.target})" + (
        f", model {result.model}" if result.model else ""
    )
    rule = "-" * len(line(rows[0] if rows else [""] * len(head)))
    out = [title, group_line(), line([h[1] for h in head]), rule]
    out += [line(row) for row in rows]
    out += fallback_lines(result.results)
    return "\n".join(out)


def fallback_lines(results: Sequence[KResult]) -> list[str]:
    """One warning per K whose answers were not all reranked, with the outcomes by reason."""
    lines = []
    for r in results:
        if not r.fallbacks:
            continue
        others = ", ".join(f"{name} {n}" for name, n in sorted(r.outcomes.items()) if not name.startswith("reranked/"))
        lines.append(
            f"warning: K = {r.k}: {r.fallbacks} of {r.fallbacks + r.reranked_count} answer(s) not reranked ({others}); "
            f"latency and pairs/s are over the {r.reranked_count} reranked, NDCG over all"
        )
    return lines


def plot_results(result: EvalResult, path: str | Path) -> Path:
    """A PNG of NDCG@10 (first stage and reranked) and the rerank stage's p95 latency against K."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise EvaluationError("the plot needs matplotlib: pip install matplotlib") from None
    ks = [r.k for r in result.results]
    fig = Figure(figsize=(7, 4.2), dpi=120)
    ax = fig.add_subplot()
    ax.plot(ks, [r.reranked["ndcg@10"] for r in result.results], "o-", color="tab:blue", label="reranked NDCG@10")
    ax.plot(
        ks, [r.first_stage["ndcg@10"] for r in result.results], "s--", color="tab:gray", label="first stage NDCG@10"
    )
    ax.set_xlabel("K (first-stage hits reranked)")
    ax.set_ylabel("NDCG@10")
    if len(ks) > 1 and ks[-1] / ks[0] >= 4:
        from matplotlib.ticker import NullLocator

        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.grid(True, alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(ks, [r.rerank_p95_ms for r in result.results], "^:", color="tab:red", label="rerank p95 ms")
    ax2.set_ylabel("rerank stage p95 latency (ms)")
    ax2.set_ylim(bottom=0)
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [str(ln.get_label()) for ln in lines], loc="upper left", fontsize=8)
    ax.set_title(
        f"[{result.index}] {result.queries} queries" + (f", model {result.model}" if result.model else ""), fontsize=10
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def write_outputs(result: EvalResult, out_dir: str | Path) -> dict[str, Path]:
    """``results.json``, ``table.txt`` and the plot in ``out_dir`` (created)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths = {"results": out / RESULTS_FILE, "table": out / TABLE_FILE, "plot": out / PLOT_FILE}
        paths["results"].write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
        paths["table"].write_text(format_table(result) + "\n", encoding="utf-8")
    except OSError as exc:
        raise EvaluationError(f"cannot write to {out}: {exc.strerror}") from None
    plot_results(result, paths["plot"])
    return paths


def _hits(response: httpx.Response, where: str) -> list[str]:
    if response.status_code != 200:
        reason = response.text[:300]
        try:
            error = response.json().get("error", {})
            reason = f"{error.get('type')}: {error.get('reason')}" if isinstance(error, dict) else str(error)
        except ValueError:
            pass
        raise EvaluationError(f"{where} answered {response.status_code}: {reason}")
    return [hit["_id"] for hit in response.json()["hits"]["hits"]]


async def _post(client: httpx.AsyncClient, path: str, body: dict, where: str) -> httpx.Response:
    try:
        return await client.post(path, json=body)
    except httpx.TimeoutException:
        raise EvaluationError(f"{where} did not answer within {client.timeout.read}s") from None
    except httpx.TransportError as exc:
        raise EvaluationError(f"cannot reach {where}: {exc}") from None


async def evaluate_async(
    data: EvalData,
    *,
    index: str,
    ks: Sequence[int] = DEFAULT_KS,
    settings: Settings | None = None,
    proxy_url: str | None = None,
    upstream_url: str | None = None,
    first_stage_query: Mapping[str, Any] | None = None,
    fields: Sequence[str] = ("title", "text"),
    app: RerankProxy | None = None,
    timeout: float = 300.0,
    progress: bool = False,
    target_name: str | None = None,
    concurrency: int = 1,
    on_query: Callable[[], None] | None = None,
) -> EvalResult:
    """:func:`evaluate` inside a running event loop.

    ``concurrency`` searches are in flight at once (1: one request alone);
    ``on_query`` is called after each answered query (progress of a caller's own).

    Long on purpose: the first stage, every K and the proxy's lifetime read as one run.
    """
    ks = parse_ks(ks)
    if concurrency < 1:
        raise EvaluationError(f"concurrency must be at least 1, got {concurrency}")
    if (settings is None) == (proxy_url is None):
        raise EvaluationError("evaluate either in-process (settings) or a running proxy (proxy_url), not both")
    model: str | None = None
    auth: tuple[str, str] | None = None
    verify = True
    if settings is not None:
        spec: IndexSettings | None = settings.index_for(index)
        if spec is None:
            raise EvaluationError(f"index [{index}] matches no `indices` entry of the config: it would not be reranked")
        if not spec.rerank:
            raise EvaluationError(f"index [{index}] has rerank: false in the config")
        too_large = [k for k in ks if k > spec.max_window]
        if too_large:
            raise EvaluationError(
                f"K = {', '.join(map(str, too_large))} is larger than the index's max_window ({spec.max_window}); "
                f"lower K or raise max_window for [{spec.pattern}]"
            )
        template = first_stage_query or spec.first_stage_query or default_first_stage_query(spec.fields)
        upstream = upstream_url or settings.upstream.url
        model = settings.model_for(spec)
        up = settings.upstream
        auth = (up.username, up.password or "") if up.username else None
        verify = up.verify_certs
        mode, target = "in-process", target_name or "config"
    else:
        if not upstream_url or not proxy_url:
            raise EvaluationError("black-box evaluation needs the upstream URL (the first stage goes there)")
        upstream = upstream_url
        template = first_stage_query or default_first_stage_query(fields)
        mode, target = "black-box", target_name or proxy_url
    first_stage_body(template, "probe", size=1)  # a template without its placeholder fails now

    own_app = None
    if settings is not None:
        if app is None:
            from ..app import create_app

            try:
                own_app = app = create_app(without_caches(settings))
            except RerankError:
                raise
            except Exception as exc:  # onnxruntime's own errors on a bad model file
                raise EvaluationError(f"cannot load the model: {exc}") from None
        transport: httpx.AsyncBaseTransport = httpx.ASGITransport(app=app)
        proxy_base = "http://es-rerank"
    else:
        transport = httpx.AsyncHTTPTransport(verify=verify)
        proxy_base = str(proxy_url).rstrip("/")
    path = f"/{quote(index, safe='')}/_search"
    limits = httpx.Timeout(timeout, connect=10.0)
    started = time.perf_counter()
    results: list[KResult] = []
    async with (
        httpx.AsyncClient(base_url=upstream.rstrip("/"), auth=auth, verify=verify, timeout=limits) as direct,
        httpx.AsyncClient(transport=transport, base_url=proxy_base, auth=auth, timeout=limits) as proxy,
    ):
        try:
            await _preflight(direct, proxy, path, template, data, ks, upstream, proxy_url or "the proxy")
            for k in ks:
                results.append(await _run_k(direct, proxy, path, template, data, k, progress, concurrency, on_query))
        finally:
            if own_app is not None:
                await own_app.upstream.aclose()
                for reranker in own_app.rerankers.values():
                    close = getattr(reranker, "close", None)
                    if close is not None:
                        close()
    return EvalResult(
        index=index,
        mode=mode,
        target=target,
        upstream=upstream,
        first_stage_query=dict(template),
        queries=len(data.queries),
        unjudged=data.unjudged,
        results=results,
        model=model,
        seconds=time.perf_counter() - started,
    )


def without_caches(settings: Settings) -> Settings:
    """``settings`` with every model's score and token caches off.

    Each K asks the same queries again: with the caches on, K = 20 would find the
    scores of its first 10 passages from the K = 10 run and look cheaper than it is.
    """
    models = {
        name: spec.model_copy(update={"cache_size": 0, "token_cache_size": 0}) for name, spec in settings.models.items()
    }
    return settings.model_copy(update={"models": models})


async def _preflight(direct, proxy, path, template, data: EvalData, ks, upstream_url: str, proxy_name: str) -> None:
    """Fail before the long run: index reachable, and every K accepted by the proxy.

    ``size: 0`` makes the proxy validate ``ext.rerank`` (window_size against
    max_window) and then pass the search through, so nothing is scored.
    """
    text = next(iter(data.queries.values()))
    _hits(
        await _post(direct, path, first_stage_body(template, text, size=1), f"OpenSearch at {upstream_url}"),
        f"OpenSearch at {upstream_url}",
    )
    for k in ks:
        body = first_stage_body(template, text, size=0)
        body["ext"] = {"rerank": {"window_size": k}}
        _hits(await _post(proxy, path, body, proxy_name), f"{proxy_name} (K = {k})")


async def _run_k(
    direct,
    proxy,
    path,
    template,
    data: EvalData,
    k: int,
    progress: bool,
    concurrency: int = 1,
    on_query: Callable[[], None] | None = None,
) -> KResult:
    """Long on purpose: one K's searches, their outcomes and the metrics, in the order they are taken."""
    from tqdm import tqdm

    first: dict[str, list[str]] = {}
    reranked: dict[str, list[str]] = {}
    rerank_ms: list[float] = []
    total_ms: list[float] = []
    pairs = 0
    outcomes: Counter[str] = Counter()
    per_query_ms: dict[str, float] = {}
    per_query_outcome: dict[str, str] = {}
    bar = tqdm(total=len(data.queries), desc=f"K={k}", unit="q", disable=not progress, mininterval=2.0, leave=True)
    slots = asyncio.Semaphore(concurrency)

    async def one(qid: str, text: str) -> None:
        nonlocal pairs
        async with slots:
            body = first_stage_body(template, text, size=k)
            first[qid] = _hits(await _post(direct, path, body, "OpenSearch"), "OpenSearch")

            body = first_stage_body(template, text, size=PAGE)
            body["ext"] = {"rerank": {"window_size": k}}
            t0 = time.perf_counter()
            response = await _post(proxy, path, body, "the proxy")
            elapsed_ms = (time.perf_counter() - t0) * 1000
        reranked[qid] = _hits(response, "the proxy")
        status = response.headers.get("x-rerank", "")
        if status == "skipped":
            raise EvaluationError(
                f"the proxy did not rerank query {qid!r} (x-rerank-reason: {response.headers.get('x-rerank-reason')}); "
                "is the index configured for reranking there, and does the first-stage query carry the text?"
            )
        outcome = f"{status or 'none'}/{response.headers.get('x-rerank-reason', '')}"
        outcomes[outcome] += 1
        per_query_outcome[qid] = outcome
        ms = float(response.headers.get("x-rerank-inference-ms", "nan"))
        per_query_ms[qid] = ms
        if status == "reranked":  # a fallback's time is its deadline's, not the model's
            rerank_ms.append(ms)
            total_ms.append(elapsed_ms)
            window = min(int(response.headers.get("x-rerank-window", k)), len(first[qid]))
            pairs += int(response.headers.get("x-rerank-pairs", window))
        bar.update(1)
        if progress:
            not_reranked = sum(outcomes.values()) - len(rerank_ms)
            bar.set_postfix(p50_ms=f"{percentile(rerank_ms, 50):.0f}", not_reranked=not_reranked, refresh=False)
        if on_query is not None:
            on_query()

    t_start = time.perf_counter()
    tasks = [asyncio.ensure_future(one(qid, text)) for qid, text in data.queries.items()]
    try:
        await asyncio.gather(*tasks)
    finally:  # one failed query stops the others
        for task in tasks:
            task.cancel()
        bar.close()
    wall_s = time.perf_counter() - t_start
    fs_means, fs_per_query = rank_metrics(data.qrels, first, recall_at=k)
    rr_means, rr_per_query = rank_metrics(data.qrels, reranked, recall_at=PAGE)
    per_query = {
        qid: {
            **{f"first_stage_{m}": v for m, v in fs_per_query[qid].items()},
            **{f"reranked_{m}": v for m, v in rr_per_query[qid].items()},
            "rerank_ms": per_query_ms[qid],
            "outcome": per_query_outcome[qid],
        }
        for qid in data.queries
    }
    return KResult(
        k=k,
        first_stage=fs_means,
        reranked=rr_means,
        rerank_ms=rerank_ms,
        total_ms=total_ms,
        pairs=pairs,
        fallbacks=sum(outcomes.values()) - len(rerank_ms),
        per_query=per_query,
        outcomes=dict(outcomes),
        concurrency=concurrency,
        wall_s=wall_s,
    )


def evaluate(data: EvalData, **options: Any) -> EvalResult:
    """Evaluate first stage vs reranked for each K; see :func:`evaluate_async` for the options.

    In-process: ``settings`` (the proxy is built from them with
    :func:`~es_rerank.create_app`, or ``app`` is used). Black-box: ``proxy_url`` and
    ``upstream_url``. ``first_stage_query`` overrides the index's template.
    """
    return asyncio.run(evaluate_async(data, **options))


def run_eval(
    *,
    index: str,
    queries_file: Path,
    qrels_file: Path,
    settings: Settings | None = None,
    settings_name: str | None = None,
    proxy_url: str | None = None,
    upstream_url: str | None = None,
    ks: str | Iterable[int] = DEFAULT_KS,
    fields: Sequence[str] = ("title", "text"),
    rerank_timeout: float | None = None,
    out_dir: str | Path = "out/eval",
    progress: bool = True,
    note: Callable[[str], None] = lambda line: None,
) -> tuple[EvalResult, dict[str, Path]]:
    """``es-rerank eval``: in-process with ``settings`` or black-box with ``proxy_url`` and
    ``upstream_url``; evaluates, writes results.json, table.txt and the plot under ``out_dir``.

    ``rerank_timeout`` overrides ``server.rerank_timeout`` in-process, so a slow CPU is
    measured rather than cut off; ``note`` hears what was skipped.
    """
    if (settings is None) == (proxy_url is None):
        raise EvaluationError("give either --config FILE (in-process) or --proxy URL with --upstream URL (black-box)")
    if proxy_url is not None and not upstream_url:
        raise EvaluationError("--proxy needs --upstream URL: the first stage is sent to OpenSearch directly")
    k_list = parse_ks(ks)
    data = load_beir(queries_file, qrels_file)
    options: dict[str, Any] = {"index": index, "ks": k_list, "progress": progress}
    if settings is not None:
        if rerank_timeout is not None:
            server = settings.server.model_copy(update={"rerank_timeout": rerank_timeout})
            settings = settings.model_copy(update={"server": server})
        options.update(settings=settings, upstream_url=upstream_url, target_name=settings_name)
    else:
        options.update(proxy_url=proxy_url, upstream_url=upstream_url, fields=list(fields))
    if data.unjudged:
        note(f"note: {data.unjudged} queries without judgements skipped")
    result = evaluate(data, **options)
    return result, write_outputs(result, out_dir)
