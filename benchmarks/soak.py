"""Soak: minutes of mixed pass-through and reranked searches through ``es-rerank serve``.

8 to 32 closed-loop clients (the number rises and falls in two waves over the run)
send searches to ``es-rerank serve`` (its own process, the demo model, K = 20) in
front of a real OpenSearch; a share of them (``--rerank-share``) are reranked, the
rest carry ``x-rerank-enabled: false`` and pass through. Queries are drawn at random
from the dev set, so some repeat and meet the score cache, as a site's popular
queries do; the server runs with es-rerank's defaults (``rerank_timeout`` 10 s,
overload shedding on). Every few seconds it prints progress (clients, requests,
errors, the main model's p95, answers not reranked, the proxy's RSS). At the end:
requests and errors, outcomes by ``x-rerank`` / ``x-rerank-reason`` / model
(reranked by the main model, by a fallback model, partly, or first-stage order) with
their p50/p95, p50/p95 per kind, and the
proxy's RSS at start, end and max with its slope over the second half (a leak shows
as a slope that does not flatten). Writes ``results.json`` and ``soak.png`` (clients
and throughput, latency, RSS over time). Loopback only; every loop ends at the
deadline.

The 10-minute run:

    python benchmarks/soak.py --opensearch-url http://127.0.0.1:9200 --minutes 10

A quick check of the script itself: ``--minutes 1``. With the default caches the dev
queries soon all meet the score cache (a site's steady state); ``--cache-size 0`` makes
every reranked search cost the model its whole window (the admission rules' test).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from proxy_latency import ROOT, _free_port, _queries, _search_body, ensure_index, start_proxy

MAIN_MODEL = "bench"  # the model's name in start_proxy's config


def rss_mb(pid: int) -> float:
    """Resident set size of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


def clients_at(t: float, total: float, low: int, high: int) -> int:
    """Clients wanted at ``t`` seconds: from ``low`` up to ``high`` and back, twice over the run."""
    wave = 0.5 - 0.5 * math.cos(4 * math.pi * t / total)
    return low + int(round((high - low) * wave))


def outcome_of(kind: str, headers: httpx.Headers) -> str:
    """What a client got, by the proxy's headers."""
    status, reason, model = (
        headers.get("x-rerank", ""),
        headers.get("x-rerank-reason", ""),
        headers.get("x-rerank-model", ""),
    )
    if kind == "pass-through":
        return f"pass-through ({status}/{reason})"
    if status == "reranked":
        if "partial" in reason or "shrink" in reason:
            return f"reranked partly ({reason}, model {model})"
        if model and model != MAIN_MODEL:
            return f"reranked by fallback model {model} ({reason})"
        return "reranked by main model"
    return f"first stage ({status}/{reason})"


class Soak:
    """The clients, the samples and the results of one run."""

    def __init__(
        self,
        url: str,
        index: str,
        queries: list[str],
        *,
        seconds: float,
        low: int,
        high: int,
        k: int,
        rerank_share: float,
        proxy_pid: int,
    ) -> None:
        self.url, self.index, self.queries = url, index, queries
        self.seconds, self.low, self.high, self.k = seconds, low, high, k
        self.rerank_share, self.proxy_pid = rerank_share, proxy_pid
        self.lock = threading.Lock()
        self.records: list[tuple[float, str, str, float]] = []  # (t, kind, outcome, ms)
        self.errors: collections.Counter[str] = collections.Counter()
        self.samples: list[dict] = []
        self.started = 0.0

    def client(self, n: int) -> None:
        rng = np.random.default_rng(n)
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        with httpx.Client(base_url=self.url, timeout=120, limits=limits) as c:
            while (t := time.perf_counter() - self.started) < self.seconds:
                if n >= clients_at(t, self.seconds, self.low, self.high):
                    time.sleep(0.1)  # not this client's turn in the wave
                    continue
                text = self.queries[int(rng.integers(len(self.queries)))]
                reranked = rng.random() < self.rerank_share
                kind = "reranked" if reranked else "pass-through"
                body = _search_body(text)
                headers = {}
                if reranked:
                    body["ext"] = {"rerank": {"window_size": self.k}}
                else:
                    headers["x-rerank-enabled"] = "false"
                t0 = time.perf_counter()
                try:
                    r = c.post(f"/{self.index}/_search", json=body, headers=headers)
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.errors[f"{kind}: {type(exc).__name__}"] += 1
                    continue
                ms = (time.perf_counter() - t0) * 1000
                with self.lock:
                    if r.status_code != 200:
                        self.errors[f"{kind}: HTTP {r.status_code}"] += 1
                    else:
                        self.records.append((t0 - self.started, kind, outcome_of(kind, r.headers), ms))

    def monitor(self, every: float) -> None:
        last_n, last_t = 0, 0.0
        while (t := time.perf_counter() - self.started) < self.seconds:
            with self.lock:
                n, errors = len(self.records), sum(self.errors.values())
                interval = self.records[last_n:]
            recent = [ms for (_, _, outcome, ms) in interval if outcome == "reranked by main model"]
            not_reranked = sum(
                kind == "reranked" and outcome != "reranked by main model" for (_, kind, outcome, _) in interval
            )
            sample = {
                "t": t,
                "clients": clients_at(t, self.seconds, self.low, self.high),
                "requests": n,
                "errors": errors,
                "rss_mb": rss_mb(self.proxy_pid),
                "rps": (n - last_n) / max(t - last_t, 1e-9),
                "not_reranked": not_reranked,
                "reranked_p50_ms": float(np.percentile(recent, 50)) if recent else math.nan,
                "reranked_p95_ms": float(np.percentile(recent, 95)) if recent else math.nan,
            }
            self.samples.append(sample)
            print(
                f"[soak] {t:6.0f} s  clients {sample['clients']:2d}  requests {n:6d} ({sample['rps']:5.1f}/s)  "
                f"errors {errors}  main-model p95 {sample['reranked_p95_ms']:6.0f} ms, {not_reranked:4d} not reranked  "
                f"proxy RSS {sample['rss_mb']:6.1f} MB",
                flush=True,
            )
            last_n, last_t = n, t
            time.sleep(max(0.0, min(every, self.seconds - (time.perf_counter() - self.started))))

    def run(self, every: float) -> None:
        self.samples.append(
            {
                "t": 0.0,
                "clients": self.low,
                "requests": 0,
                "errors": 0,
                "rss_mb": rss_mb(self.proxy_pid),
                "rps": 0.0,
                "not_reranked": 0,
                "reranked_p50_ms": math.nan,
                "reranked_p95_ms": math.nan,
            }
        )
        self.started = time.perf_counter()
        threads = [threading.Thread(target=self.client, args=(n,), daemon=True) for n in range(self.high)]
        for thread in threads:
            thread.start()
        self.monitor(every)
        for thread in threads:  # each finishes its request in flight (httpx timeout bounds it)
            thread.join(150)
        self.samples.append(
            {**self.samples[-1], "t": time.perf_counter() - self.started, "rss_mb": rss_mb(self.proxy_pid)}
        )


def _latency(ms: list[float]) -> dict:
    return {"n": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95))}


def summary(soak: Soak) -> dict:
    by_kind: dict[str, list[float]] = collections.defaultdict(list)
    by_outcome: dict[str, list[float]] = collections.defaultdict(list)
    for _, kind, outcome, ms in soak.records:
        by_kind[kind].append(ms)
        by_outcome[outcome].append(ms)
    rss = [(s["t"], s["rss_mb"]) for s in soak.samples if not math.isnan(s["rss_mb"])]
    half = [(t, m) for t, m in rss if t >= soak.seconds / 2]
    slope = float(np.polyfit([t for t, _ in half], [m for _, m in half], 1)[0]) * 60 if len(half) >= 3 else math.nan
    return {
        "seconds": soak.seconds,
        "clients": [soak.low, soak.high],
        "k": soak.k,
        "rerank_share": soak.rerank_share,
        "requests": len(soak.records) + sum(soak.errors.values()),
        "answered": len(soak.records),
        "errors": dict(soak.errors),
        "outcomes": {o: _latency(v) for o, v in sorted(by_outcome.items(), key=lambda item: -len(item[1]))},
        "latency": {kind: _latency(v) for kind, v in sorted(by_kind.items())},
        "rss_mb": {
            "start": rss[0][1],
            "end": rss[-1][1],
            "max": max(m for _, m in rss),
            "slope_second_half_mb_per_min": slope,
        },
        "samples": soak.samples,
    }


def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["samples"][1:-1] or result["samples"]
    t = [x["t"] / 60 for x in s]
    fig, (a, b, c) = plt.subplots(3, 1, figsize=(8, 7.5), sharex=True)
    a.plot(t, [x["rps"] for x in s], label="requests/s")
    a.plot(
        t,
        [x["not_reranked"] / max(x["t"] - p["t"], 1e-9) for p, x in zip(result["samples"], s)],
        label="not reranked/s",
    )
    a2 = a.twinx()
    a2.step(t, [x["clients"] for x in s], color="tab:gray", where="post", label="clients")
    a.set_ylabel("requests/s")
    a2.set_ylabel("clients")
    a.legend(loc="upper left", fontsize=8)
    a2.legend(loc="upper right", fontsize=8)
    b.plot(t, [x["reranked_p50_ms"] for x in s], label="reranked by the main model, p50")
    b.plot(t, [x["reranked_p95_ms"] for x in s], label="p95")
    b.set_ylabel("ms (each interval)")
    b.legend(fontsize=8)
    rss = [x["rss_mb"] for x in result["samples"]]
    c.plot([x["t"] / 60 for x in result["samples"]], rss, color="tab:red")
    c.set_ylabel("proxy RSS (MB)")
    c.set_xlabel("minutes")
    for ax in (a, b, c):
        ax.grid(True, alpha=0.3)
    r = result["rss_mb"]
    fig.suptitle(
        f"soak: {result['clients'][0]}-{result['clients'][1]} clients, K={result['k']}, "
        f"RSS {r['start']:.0f} -> {r['end']:.0f} MB (max {r['max']:.0f}), "
        f"second half {r['slope_second_half_mb_per_min']:+.2f} MB/min",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--opensearch-url", default=os.environ.get("ES_RERANK_UPSTREAM_URL", "http://127.0.0.1:9200"))
    ap.add_argument("--index", default="scifact", help="an index holding the SciFact corpus (indexed if missing)")
    ap.add_argument("--model", type=Path, default=ROOT / "demo" / "model")
    ap.add_argument("--queries", type=Path, default=ROOT / "demo" / "scifact" / "queries-dev.jsonl")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients-min", type=int, default=8)
    ap.add_argument("--clients-max", type=int, default=32)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--rerank-share", type=float, default=0.5, help="share of searches reranked; the rest pass through")
    ap.add_argument(
        "--rerank-timeout", type=float, default=10.0, help="server.rerank_timeout (es-rerank's default: 10)"
    )
    ap.add_argument(
        "--cache-size",
        type=int,
        default=None,
        help="the model's score and token caches (default: es-rerank's); 0: every search costs the model its window",
    )
    ap.add_argument("--every", type=float, default=10.0, help="seconds between progress lines and RSS samples")
    ap.add_argument("--out", type=Path, default=Path("out/soak"))
    args = ap.parse_args()
    if not 1 <= args.clients_min <= args.clients_max:
        ap.error("need 1 <= --clients-min <= --clients-max")

    ensure_index(args.opensearch_url, args.index)
    queries = _queries(args.queries, 10_000)
    port = _free_port()
    # The server's own defaults (start_proxy's 120 s is for benchmarks that measure the model alone).
    model_settings = (
        {} if args.cache_size is None else {"cache_size": args.cache_size, "token_cache_size": args.cache_size}
    )
    proc = start_proxy(
        args.opensearch_url,
        args.model,
        port,
        args.index,
        server={"rerank_timeout": args.rerank_timeout},
        model_settings=model_settings,
    )
    try:
        print(
            f"[soak] es-rerank serve (pid {proc.pid}) on :{port}, model {args.model}, K={args.k}, "
            f"{args.clients_min}-{args.clients_max} clients, {args.rerank_share:.0%} reranked, {args.minutes:g} min",
            flush=True,
        )
        soak = Soak(
            f"http://127.0.0.1:{port}",
            args.index,
            queries,
            seconds=args.minutes * 60,
            low=args.clients_min,
            high=args.clients_max,
            k=args.k,
            rerank_share=args.rerank_share,
            proxy_pid=proc.pid,
        )
        soak.run(args.every)
        result = summary(soak)
    finally:
        proc.terminate()
        proc.wait(30)

    print(
        f"\n{result['requests']} requests in {args.minutes:g} min ({result['answered']} answered, "
        f"{sum(result['errors'].values())} errors), {os.cpu_count()} CPUs"
    )
    for error, n in sorted(result["errors"].items()):
        print(f"  error {error}: {n}")
    print(f"  {'outcome (x-rerank / x-rerank-reason / model)':<50} {'n':>7} {'p50 ms':>9} {'p95 ms':>9}")
    for outcome, v in result["outcomes"].items():
        print(f"  {outcome:<50} {v['n']:>7} {v['p50_ms']:9.1f} {v['p95_ms']:9.1f}")
    for kind, v in result["latency"].items():
        print(f"  {'all ' + kind + ' requests':<50} {v['n']:>7} {v['p50_ms']:9.1f} {v['p95_ms']:9.1f}")
    r = result["rss_mb"]
    print(
        f"proxy RSS: start {r['start']:.1f} MB, end {r['end']:.1f} MB, max {r['max']:.1f} MB, "
        f"second half {r['slope_second_half_mb_per_min']:+.2f} MB/min"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / "soak.png")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'soak.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
