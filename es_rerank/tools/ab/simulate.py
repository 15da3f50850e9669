"""``es-rerank ab simulate``: the whole experiment loop on a BEIR data set, with simulated users.

1. The proxy is built in-process from a config of its own (the index's rule, the
   model, two experiments: ``ab`` on the alias ``<index>-sim-ab`` and ``interleave``
   on ``<index>-sim-il``, both aliases of the index, made here) and driven over ASGI,
   so every search runs the serving code: assignment, first stage, scoring,
   interleaving, the UBI recorder writing ``ubi_queries`` in OpenSearch.
2. Simulated users (stable client ids ``sim-<run>-<n>``) send the data set's judged
   queries, one page of ``page_size`` hits each, with ``ext.ubi.client_id`` and
   ``user_query``; the query id comes back in the response's ``ext.ubi``.
3. Clicks come from a cascade click model (Craswell et al. 2008, with DBN-style
   continuation): the user reads down the page; at each hit it clicks with the hit's
   attractiveness (``attract_rel`` for a hit judged relevant in the qrels,
   ``attract_nonrel`` else), is satisfied after a click with ``satisfy_rel`` /
   ``satisfy_nonrel`` and stops, and otherwise reads on with probability ``gamma``
   (so examination decays with rank). Each impression's draws come from its own
   seeded generator: a run is reproducible whatever order the answers arrive in.
4. Clicks are posted as UBI events through ``POST /_rerank/ubi/events``.
5. The report (:mod:`es_rerank.tools.ab.report`) reads both indices back from
   OpenSearch for each experiment.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from ...config import settings_from_dict
from ...errors import RerankError
from ..datasets import load_beir
from .report import build_report, impressions_from, plot_curves, read_ubi, write_report

__all__ = ["ClickModel", "SimulationError", "simulate", "format_summary"]


class SimulationError(RerankError):
    """The simulation cannot run (no index, bad data, OpenSearch unreachable)."""

    type = "ab_simulation_exception"


@dataclass(frozen=True)
class ClickModel:
    attract_rel: float = 0.8
    attract_nonrel: float = 0.1
    satisfy_rel: float = 0.8
    satisfy_nonrel: float = 0.2
    gamma: float = 0.9

    def clicks(self, relevant: Sequence[bool], rng: np.random.Generator) -> list[int]:
        """The ranks clicked on one page, in reading order."""
        out = []
        for rank, rel in enumerate(relevant):
            if rng.random() < (self.attract_rel if rel else self.attract_nonrel):
                out.append(rank)
                if rng.random() < (self.satisfy_rel if rel else self.satisfy_nonrel):
                    break
            if rng.random() >= self.gamma:
                break
        return out


def _rng(*parts: Any) -> np.random.Generator:
    digest = hashlib.sha256("\x00".join(str(p) for p in parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def _config(
    opensearch_url: str, model_dir: Path, index: str, window: int, run: str, seed: int, fields: Sequence[str]
) -> dict:
    arms = [{"name": "bm25", "kind": "bm25"}, {"name": "rerank", "kind": "rerank"}]
    return {
        "upstream": {"url": opensearch_url, "timeout": 120},
        "server": {"rerank_timeout": 600, "shed_overload": False},
        "models": {"sim": {"path": str(model_dir)}},
        "indices": [{"pattern": f"{index}-sim-*", "model": "sim", "window": window, "fields": list(fields)}],
        "experiments": [
            {
                "name": f"sim-ab-{run}",
                "indices": [f"{index}-sim-ab"],
                "mode": "ab",
                "salt": f"ab-seed-{seed}",
                "arms": [{**arms[0], "weight": 50}, {**arms[1], "weight": 50}],
            },
            {
                "name": f"sim-il-{run}",
                "indices": [f"{index}-sim-il"],
                "mode": "interleave",
                "salt": f"il-seed-{seed}",
                "arms": arms,
            },
        ],
        "ubi": {"flush_interval_ms": 100, "queue_size": 100_000},
    }


async def _run_mode(
    client: httpx.AsyncClient,
    alias: str,
    mode: str,
    *,
    queries: list[tuple[str, str]],
    qrels: Mapping[str, Mapping[str, int]],
    users: list[str],
    impressions: int,
    page_size: int,
    clicks: ClickModel,
    seed: int,
    concurrency: int,
    fields: Sequence[str],
    on_done: Callable[[], None],
) -> dict[str, int]:
    """Long on purpose: one mode's whole loop (proxy, users, clicks, events, report) reads in the order it runs."""
    order = _rng(seed, mode, "order")
    plan = [(users[order.integers(len(users))], queries[order.integers(len(queries))]) for _ in range(impressions)]
    pending: list[dict] = []
    counts = {"searches": 0, "clicks": 0, "errors": 0}
    lock = asyncio.Lock()
    work = iter(enumerate(plan))

    async def flush(force: bool = False) -> None:
        async with lock:
            if not pending or (len(pending) < 500 and not force):
                return
            batch = pending[:]
            pending.clear()
        payload = "".join(json.dumps(e) + "\n" for e in batch)
        r = await client.post("/_rerank/ubi/events", content=payload, headers={"content-type": "application/x-ndjson"})
        if r.status_code != 200:
            raise SimulationError(f"events endpoint answered {r.status_code}: {r.text[:300]}")

    async def worker() -> None:
        for i, (user, (qid, text)) in work:
            body = {
                "query": {
                    "multi_match": {"query": text, "fields": list(fields), "type": "best_fields", "tie_breaker": 0.5}
                },
                "size": page_size,
                "_source": False,
                "ext": {"ubi": {"client_id": user, "user_query": text}},
            }
            r = await client.post(f"/{alias}/_search", json=body)
            if r.status_code != 200 or "x-rerank-arm" not in r.headers:
                counts["errors"] += 1
                continue
            data = r.json()
            query_id = data["ext"]["ubi"]["query_id"]
            ids = [h["_id"] for h in data["hits"]["hits"]]
            judged = qrels.get(qid, {})
            ranks = clicks.clicks([judged.get(d, 0) > 0 for d in ids], _rng(seed, mode, i))
            counts["searches"] += 1
            counts["clicks"] += len(ranks)
            for rank in ranks:
                pending.append(
                    {
                        "action_name": "click",
                        "query_id": query_id,
                        "client_id": user,
                        "session_id": f"{user}-s",
                        "event_attributes": {
                            "object": {"object_id": ids[rank], "object_id_field": "_id"},
                            "position": {"ordinal": rank + 1},
                        },
                    }
                )
            await flush()
            on_done()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await flush(force=True)
    return counts


async def simulate_async(
    *,
    opensearch_url: str,
    model_dir: Path,
    queries_file: Path,
    qrels_file: Path,
    index: str = "scifact",
    window: int = 20,
    users: int = 1000,
    impressions_ab: int = 16000,
    impressions_il: int = 6000,
    page_size: int = 10,
    clicks: ClickModel = ClickModel(),
    seed: int = 1,
    concurrency: int = 4,
    fields: Sequence[str] = ("title", "text"),
    k: int = 5,
    metric: str = "rr",
    out_dir: Path | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Long on purpose: the simulation's set-up (index aliases, experiments config, proxy) and both modes, in the order they run."""
    from tqdm import tqdm

    from ...app import create_app

    data = load_beir(queries_file, qrels_file)
    queries = sorted(data.queries.items())
    run = uuid.uuid4().hex[:8]
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
    aliases = {"ab": f"{index}-sim-ab", "interleave": f"{index}-sim-il"}
    async with httpx.AsyncClient(base_url=opensearch_url.rstrip("/"), timeout=60) as direct:
        try:
            r = await direct.get(f"/{index}/_count")
        except httpx.TransportError as exc:
            raise SimulationError(f"cannot reach OpenSearch at {opensearch_url}: {exc}") from None
        if r.status_code != 200 or r.json().get("count", 0) == 0:
            raise SimulationError(
                f"index [{index}] is missing or empty at {opensearch_url}: index the corpus first (es-rerank index)"
            )
        actions = [{"add": {"index": index, "alias": a}} for a in aliases.values()]
        r = await direct.post("/_aliases", json={"actions": actions})
        if r.status_code != 200:
            raise SimulationError(f"cannot add the aliases {sorted(aliases.values())}: {r.text[:300]}")
    settings = settings_from_dict(_config(opensearch_url, model_dir, index, window, run, seed, fields), env={})
    app = create_app(settings)
    await app.startup()
    user_ids = [f"sim-{seed}-{n}" for n in range(users)]  # with the salts from the seed: a run is reproducible
    counts = {}
    t0 = time.perf_counter()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://es-rerank", timeout=900
        ) as client:
            for mode, n in (("ab", impressions_ab), ("interleave", impressions_il)):
                bar = tqdm(total=n, desc=f"simulate {mode}", unit="search", disable=not progress, mininterval=2.0)
                counts[mode] = await _run_mode(
                    client,
                    aliases[mode],
                    mode,
                    queries=queries,
                    qrels=data.qrels,
                    users=user_ids,
                    impressions=n,
                    page_size=page_size,
                    clicks=clicks,
                    seed=seed,
                    concurrency=concurrency,
                    fields=fields,
                    on_done=functools.partial(bar.update, 1),
                )
                bar.close()
                echo(
                    f"{mode}: {counts[mode]['searches']} searches, {counts[mode]['clicks']} clicks, {counts[mode]['errors']} errors"
                )
    finally:
        await app.recorder.stop(timeout=60)
        dropped = {k: v for k, v in _ubi_counts(app).items() if k != "written"}
        await app.upstream.aclose()
        for reranker in app.rerankers.values():
            reranker.close()
    seconds = time.perf_counter() - t0
    reports = {}
    for mode, exp in (("ab", f"sim-ab-{run}"), ("interleave", f"sim-il-{run}")):
        queries_docs, events = read_ubi(opensearch_url, exp, since=started)
        imps, skipped = impressions_from(queries_docs, events)
        reports[mode] = build_report(imps, skipped, experiment=exp, k=k, metric=metric)
        if out_dir is not None:
            write_report(reports[mode], Path(out_dir) / mode)
    summary = {
        "run": run,
        "index": index,
        "window": window,
        "users": users,
        "page_size": page_size,
        "seed": seed,
        "click_model": clicks.__dict__,
        "seconds": round(seconds, 1),
        "searches": counts,
        "ubi_dropped": dropped,
        "modes": {m: _mode_summary(r) for m, r in reports.items()},
    }
    if out_dir is not None:
        out = Path(out_dir)
        (out / "simulation.json").write_text(json.dumps(summary, indent=2) + "\n")
        plot_curves(
            {
                f"A/B: rerank - bm25, {reports['ab']['metric']}": reports["ab"]["curve"],
                "interleaving: preference for rerank": reports["interleave"]["curve"],
            },
            out / "simulation.png",
            title=f"{index}, window {window}: effect and 95% CI as impressions accumulate",
        )
    summary["reports"] = reports
    return summary


def _ubi_counts(app) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric in app.metrics.registry.collect():
        if metric.name == "es_rerank_ubi_documents":
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    out[sample.labels["outcome"]] = out.get(sample.labels["outcome"], 0) + sample.value
    return out


def _mode_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    if report["mode"] == "ab":
        comp = next(iter(report["comparisons"].values()))[report["metric"]]
        effect, ci, p = comp["difference"], comp["ci95"], comp["p_value"]
    else:
        effect, ci, p = report["preference"]["value"], report["preference"]["ci95"], report["per_query"]["p_value"]
    return {
        "impressions": report["impressions_total"],
        "metric": report["metric"],
        "effect": effect,
        "ci95": ci,
        "p_value": p,
        "first_p05": report["impressions_first_p05"],
        "p05_for_good": report["impressions_to_p05"],
        "p01_for_good": report["impressions_to_p01"],
    }


def format_summary(summary: Mapping[str, Any]) -> str:
    lines = [
        "| mode | impressions | effect (rerank vs bm25) | 95% CI | p | impressions when p first < 0.05 | p < 0.05 for good from | p < 0.01 for good from |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, s in summary["modes"].items():
        label = f"{mode} ({s['metric']})"
        p = s["p_value"]
        lines.append(
            f"| {label} | {s['impressions']} | {s['effect']:+.4f} | [{s['ci95'][0]:+.4f}, {s['ci95'][1]:+.4f}] | "
            f"{p:.2e} | {s['first_p05'] or 'not reached'} | {s['p05_for_good'] or 'not reached'} | {s['p01_for_good'] or 'not reached'} |"
        )
    return "\n".join(lines)


def simulate(**options: Any) -> dict[str, Any]:
    return asyncio.run(simulate_async(**options))
