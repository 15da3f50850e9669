"""A reranking proxy past its capacity, with and without overload shedding.

Searches arrive at a fixed rate (Poisson, K = 100) through ``es-rerank serve``, more
than the model can score. Once with ``shed_overload: true``
(the default: a search the queue cannot score in time is answered at once in
first-stage order) and once with ``false`` (it waits out the timeout, then gets
first-stage order). Prints, per mode, how many searches were reranked, how many fell
back and why, the latency of each kind, and writes a plot.

    python benchmarks/overload.py --opensearch-url http://127.0.0.1:9200 --model DIR [--int8-onnx-file model.int8.onnx] [--rate 2]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from proxy_latency import ROOT, SHARED, _free_port, _queries, _search_body, ensure_index, start_proxy
from tqdm import tqdm


def open_loop(url: str, index: str, queries: list[str], rate: float, seconds: float, k: int) -> list[tuple[str, float]]:
    """(x-rerank-reason, latency ms) of searches arriving at ``rate`` a second (Poisson) for ``seconds``.

    Arrivals do not wait for answers, as a site's users do not: a fast answer brings no
    extra search (a closed loop would turn every quick fallback into more load)."""
    results: list[tuple[str, float]] = []
    lock = threading.Lock()
    arrivals = np.cumsum(np.random.default_rng(0).exponential(1 / rate, int(rate * seconds * 2)))
    arrivals = arrivals[arrivals < seconds]
    limits = httpx.Limits(max_connections=len(arrivals), max_keepalive_connections=64)

    with httpx.Client(base_url=url, timeout=300, limits=limits) as c, ThreadPoolExecutor(len(arrivals) or 1) as pool:

        def one(i: int) -> None:
            body = {**_search_body(queries[i % len(queries)]), "ext": {"rerank": {"window_size": k}}}
            t0 = time.perf_counter()
            r = c.post(f"/{index}/_search", json=body)
            ms = (time.perf_counter() - t0) * 1000
            assert r.status_code == 200 and len(r.json()["hits"]["hits"]) == 10, r.text[:300]
            with lock:
                results.append((r.headers["x-rerank-reason"], ms))

        started = time.perf_counter()
        futures = []
        for i, at in enumerate(tqdm(arrivals, desc="arrivals", unit="search")):
            time.sleep(max(0.0, started + at - time.perf_counter()))
            futures.append(pool.submit(one, i))
        for f in futures:
            f.result()
    return results


def summarize(mode: str, results: list[tuple[str, float]], seconds: float) -> dict:
    by = collections.defaultdict(list)
    for reason, ms in results:
        by[reason].append(ms)
    return {
        "mode": mode,
        "searches": len(results),
        "reranked_per_s": len(by.get("reranked", [])) / seconds,
        "kinds": {
            r: {"n": len(v), "p50_ms": float(np.percentile(v, 50)), "p95_ms": float(np.percentile(v, 95))}
            for r, v in sorted(by.items())
        },
    }


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    labels, p50, p95 = [], [], []
    for row in rows:
        for reason, kind in row["kinds"].items():
            labels.append(f"{row['mode']}\n{reason} ({kind['n']})")
            p50.append(kind["p50_ms"])
            p95.append(kind["p95_ms"])
    x = np.arange(len(labels))
    ax.bar(x - 0.2, p50, 0.4, label="p50")
    ax.bar(x + 0.2, p95, 0.4, label="p95")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("search latency (ms)")
    ax.set_yscale("log")
    ax.set_title("past capacity: answers by kind, with and without overload shedding")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--opensearch-url", default=os.environ.get("ES_RERANK_UPSTREAM_URL", "http://127.0.0.1:9200"))
    ap.add_argument("--index", default="scifact", help="an index holding the SciFact corpus")
    ap.add_argument("--model", type=Path, default=SHARED / "models" / "scifact-minilm-l6-ce")
    ap.add_argument("--int8-onnx-file", default=None, help="the model's int8 file, used on CPU")
    ap.add_argument("--queries", type=Path, default=ROOT / "demo" / "scifact" / "queries-dev.jsonl")
    ap.add_argument("--rate", type=float, default=2.0, help="searches a second")
    ap.add_argument("--seconds", type=float, default=60.0, help="of arrivals, per mode")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--rerank-timeout", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=Path("out/bench-overload"))
    args = ap.parse_args()

    ensure_index(args.opensearch_url, args.index)
    queries = _queries(args.queries, 300)
    # No score cache: a repeated query would be answered from it, and this measures the model's queue.
    model_settings = {"cache_size": 0, **({"int8_onnx_file": args.int8_onnx_file} if args.int8_onnx_file else {})}
    rows = []
    for shed in (True, False):
        mode = "shed_overload: " + str(shed).lower()
        port = _free_port()
        proc = start_proxy(args.opensearch_url, args.model, port, args.index, model_settings=model_settings,
                           server={"rerank_timeout": args.rerank_timeout, "shed_overload": shed})  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            for q in queries[-2:]:  # searches alone first: the model's rate is known after them
                httpx.post(
                    f"{url}/{args.index}/_search",
                    json={**_search_body(q), "ext": {"rerank": {"window_size": args.k}}},
                    timeout=300,
                )
            print(
                f"[overload] {mode}: {args.rate:g} searches a second for {args.seconds:.0f} s, K={args.k}", flush=True
            )
            rows.append(
                summarize(mode, open_loop(url, args.index, queries, args.rate, args.seconds, args.k), args.seconds)
            )
        finally:
            proc.terminate()
            proc.wait(30)

    print(f"\nmodel {args.model} ({args.int8_onnx_file or 'model.onnx'}), {os.cpu_count()} CPUs, rerank_timeout {args.rerank_timeout:g} s, "
          f"{args.rate:g} searches a second for {args.seconds:g} s, K={args.k}")  # fmt: skip
    print(f"  {'mode':<22} {'searches':>8} {'reranked/s':>10}  {'answer':<15} {'n':>5} {'p50 ms':>8} {'p95 ms':>8}")
    for row in rows:
        for i, (reason, kind) in enumerate(row["kinds"].items()):
            head = f"  {row['mode']:<22} {row['searches']:>8} {row['reranked_per_s']:>10.2f}" if i == 0 else " " * 44
            print(f"{head}  {reason:<15} {kind['n']:>5} {kind['p50_ms']:>8.0f} {kind['p95_ms']:>8.0f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    plot(rows, args.out / "overload.png")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'overload.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
