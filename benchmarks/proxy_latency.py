"""Latency the proxy adds, measured side by side in one run.

1. Pass-through: the same ``_search`` (rerank off) sent direct to OpenSearch and
   through es-rerank, interleaved; prints the medians and the median added latency.
2. Reranked: ``_search`` through es-rerank at K = 20, 50, 100; prints p50/p95 of the
   whole request and of the rerank stage, and writes a plot.

es-rerank runs as its own process (``es-rerank serve``), as in production.

    python benchmarks/proxy_latency.py --opensearch-url http://127.0.0.1:9200
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from tqdm import tqdm

from es_rerank.cli.serve import serve_argv

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _queries(path: Path, n: int) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines[:n]]


def _search_body(text: str, size: int = 10) -> dict:
    return {
        "query": {"multi_match": {"query": text, "fields": ["title", "text"], "tie_breaker": 0.5}},
        "size": size,
        "_source": ["title"],
    }


def ensure_index(opensearch_url: str, index: str) -> None:
    """Index the demo SciFact corpus as ``index`` unless it is there."""
    if httpx.head(f"{opensearch_url}/{index}", timeout=30).status_code != 200:
        from opensearchpy import OpenSearch

        from es_rerank.tools.indexing import index_corpus, load_mapping

        corpus, mapping = (
            ROOT / "demo" / "scifact" / "corpus.jsonl.gz",
            load_mapping(ROOT / "mappings" / "scifact.json"),
        )
        index_corpus(OpenSearch(opensearch_url, timeout=120), index, corpus, mapping=mapping)


def start_proxy(
    opensearch_url: str,
    model: Path,
    port: int,
    index: str,
    *,
    server: dict | None = None,
    model_settings: dict | None = None,
) -> subprocess.Popen:
    """``es-rerank serve`` in a process of its own, serving ``model`` for ``index``; ready when it returns."""
    config = {
        "upstream": {"url": opensearch_url, "timeout": 120},
        "server": {"port": port, "rerank_timeout": 120, **(server or {})},
        "models": {"bench": {"path": str(model), **(model_settings or {})}},
        "indices": [{"pattern": index, "window": 20, "max_window": 100}],
    }
    cfg = Path(tempfile.mkdtemp()) / "bench.yaml"
    cfg.write_text(json.dumps(config))  # JSON is YAML
    proc = subprocess.Popen(
        serve_argv(cfg),
        stdout=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/_rerank/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise SystemExit("es-rerank serve exited; see its log above")
    proc.kill()
    raise SystemExit("es-rerank did not start in 120 s")


def bench_passthrough(direct: httpx.Client, proxy: httpx.Client, index: str, queries: list[str], n: int) -> dict:
    path = f"/{index}/_search"
    off = {"x-rerank-enabled": "false"}
    for q in queries[:20]:  # warm both paths
        direct.post(path, json=_search_body(q))
        proxy.post(path, json=_search_body(q), headers=off)
    d_ms, p_ms, diffs = [], [], []
    for i in tqdm(range(n), desc="pass-through", unit="req"):
        body = json.dumps(_search_body(queries[i % len(queries)])).encode()
        headers = {"content-type": "application/json"}
        t0 = time.perf_counter()
        a = direct.post(path, content=body, headers=headers)
        t1 = time.perf_counter()
        b = proxy.post(path, content=body, headers={**headers, **off})
        t2 = time.perf_counter()
        assert a.status_code == b.status_code == 200 and b.headers["x-rerank"] == "skipped"
        d_ms.append((t1 - t0) * 1000)
        p_ms.append((t2 - t1) * 1000)
        diffs.append(p_ms[-1] - d_ms[-1])
    return {
        "requests": n,
        "direct_p50_ms": statistics.median(d_ms),
        "proxy_p50_ms": statistics.median(p_ms),
        "added_p50_ms": statistics.median(diffs),
        "added_p95_ms": _pct(diffs, 95),
    }


def bench_rerank(proxy: httpx.Client, index: str, queries: list[str], ks: list[int]) -> list[dict]:
    rows = []
    for k in ks:
        total, stage = [], []
        for q in tqdm(queries, desc=f"reranked K={k}", unit="query"):
            body = {**_search_body(q), "ext": {"rerank": {"window_size": k}}}
            t0 = time.perf_counter()
            r = proxy.post(f"/{index}/_search", json=body)
            total.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200 and r.headers["x-rerank"] == "reranked", r.text[:300]
            stage.append(float(r.headers["x-rerank-inference-ms"]))
        rows.append(
            {
                "k": k,
                "queries": len(queries),
                "p50_ms": _pct(total, 50),
                "p95_ms": _pct(total, 95),
                "rerank_p50_ms": _pct(stage, 50),
                "rerank_p95_ms": _pct(stage, 95),
                "pairs_per_s": k * len(stage) / (sum(stage) / 1000),
            }
        )
    return rows


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["k"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ks, [r["p50_ms"] for r in rows], "o-", label="request p50")
    ax.plot(ks, [r["p95_ms"] for r in rows], "s--", label="request p95")
    ax.plot(ks, [r["rerank_p50_ms"] for r in rows], "^:", label="rerank stage p50")
    ax.set_xlabel("window K (hits reranked)")
    ax.set_ylabel("latency (ms)")
    ax.set_title("es-rerank reranked _search latency")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--opensearch-url", default=os.environ.get("ES_RERANK_UPSTREAM_URL", "http://127.0.0.1:9200"))
    ap.add_argument("--index", default="scifact", help="an index holding the SciFact corpus")
    ap.add_argument("--model", type=Path, default=SHARED / "models" / "scifact-minilm-l6-ce")
    ap.add_argument("--queries", type=Path, default=ROOT / "demo" / "scifact" / "queries-dev.jsonl")
    ap.add_argument("--passthrough-requests", type=int, default=500)
    ap.add_argument("--rerank-queries", type=int, default=20)
    ap.add_argument("--ks", default="20,50,100")
    ap.add_argument("--out", type=Path, default=Path("out/bench-latency"))
    args = ap.parse_args(argv)

    direct = httpx.Client(base_url=args.opensearch_url, timeout=120)
    ensure_index(args.opensearch_url, args.index)
    port = _free_port()
    proc = start_proxy(args.opensearch_url, args.model, port, args.index)
    try:
        proxy = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
        queries = _queries(args.queries, max(args.rerank_queries, 200))
        model_info = proxy.get("/_rerank/health").json()["models"]["bench"]
        passthrough = bench_passthrough(direct, proxy, args.index, queries, args.passthrough_requests)
        rows = bench_rerank(proxy, args.index, queries[: args.rerank_queries], [int(k) for k in args.ks.split(",")])
    finally:
        proc.terminate()
        proc.wait(30)

    print(f"\nmodel: {args.model} on {model_info.get('provider')}, {os.cpu_count()} CPUs")
    print(f"pass-through _search (rerank off), {passthrough['requests']} interleaved requests:")
    print(
        f"  direct p50 {passthrough['direct_p50_ms']:.2f} ms | via es-rerank p50 {passthrough['proxy_p50_ms']:.2f} ms | "
        f"added p50 {passthrough['added_p50_ms']:.2f} ms, p95 {passthrough['added_p95_ms']:.2f} ms"
    )
    print("reranked _search through es-rerank:")
    print(f"  {'K':>4} {'queries':>7} {'p50 ms':>9} {'p95 ms':>9} {'rerank p50':>11} {'rerank p95':>11} {'pairs/s':>8}")
    for r in rows:
        print(
            f"  {r['k']:>4} {r['queries']:>7} {r['p50_ms']:>9.1f} {r['p95_ms']:>9.1f} {r['rerank_p50_ms']:>11.1f} {r['rerank_p95_ms']:>11.1f} {r['pairs_per_s']:>8.1f}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "model": str(args.model),
                "provider": model_info.get("provider"),
                "passthrough": passthrough,
                "reranked": rows,
            },
            indent=2,
        )
    )
    plot(rows, args.out / "latency.png")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'latency.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
