"""The rerank API's throughput beside the in-process engine, on the same pairs.

SciFact dev queries with their BM25 top K (``scifact-dev-bm25-top100.json``) are scored

1. in-process: ``OnnxReranker.score`` one query after another (score cache off), and
2. through ``POST /v1/rerank`` of an ``es-rerank serve`` subprocess (score cache off),
   from 1 client and from ``--clients`` concurrent clients (httpx),

and pairs/s are printed side by side, with the HTTP figure as a share of in-process.
The top-1 document of every query is checked to be the same both ways.

    python benchmarks/rerank_api.py --model ../shared/models/scifact-minilm-l6-ce --queries 40 --k 20
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from es_rerank.cli.serve import serve_argv

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_pairs(n_queries: int, k: int) -> list[tuple[str, list[str]]]:
    run = json.loads((ROOT / "benchmarks" / "scifact-dev-bm25-top100.json").read_text())
    queries = {}
    with open(ROOT / "demo" / "scifact" / "queries-dev.jsonl", encoding="utf-8") as f:
        for line in f:
            q = json.loads(line)
            queries[q["_id"]] = q["text"]
    wanted = [qid for qid in run if qid in queries][:n_queries]
    ranked = {qid: list(run[qid])[:k] if not isinstance(run[qid], dict) else list(run[qid])[:k] for qid in wanted}
    need = {d for ids in ranked.values() for d in ids}
    texts = {}
    with gzip.open(ROOT / "demo" / "scifact" / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            if doc["_id"] in need:
                texts[doc["_id"]] = f"{doc['title']}. {doc['text']}"
    return [(queries[qid], [texts[d] for d in ranked[qid] if d in texts]) for qid in wanted]


def in_process(model: Path, pairs: list[tuple[str, list[str]]], max_length: int) -> tuple[float, list[int]]:
    from es_rerank.reranker import OnnxReranker

    with OnnxReranker(
        "bench", model / "model.onnx", model / "tokenizer.json", cache_size=0, token_cache_size=0, max_length=max_length
    ) as r:
        r.score(*pairs[0])  # warm
        t0 = time.perf_counter()
        tops = [int(np.argmax(r.score(q, docs))) for q, docs in pairs]
        seconds = time.perf_counter() - t0
    return sum(len(d) for _, d in pairs) / seconds, tops


async def over_http(url: str, pairs: list[tuple[str, list[str]]], clients: int) -> tuple[float, list[int]]:
    tops: list[int] = [0] * len(pairs)
    queue = list(enumerate(pairs))
    async with httpx.AsyncClient(timeout=120) as client:
        await client.post(f"{url}/v1/rerank", json={"query": pairs[0][0], "documents": pairs[0][1]})  # warm

        async def worker() -> None:
            while queue:
                i, (q, docs) = queue.pop(0)
                r = await client.post(f"{url}/v1/rerank", json={"query": q, "documents": docs, "top_n": 1})
                r.raise_for_status()
                tops[i] = r.json()["results"][0]["index"]

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        seconds = time.perf_counter() - t0
    return sum(len(d) for _, d in pairs) / seconds, tops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", type=Path, default=ROOT / "demo" / "model", help="model directory (model.onnx, tokenizer.json)"
    )
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--k", type=int, default=20, help="documents per request")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    args = ap.parse_args()
    pairs = load_pairs(args.queries, args.k)
    n = sum(len(d) for _, d in pairs)
    print(f"{len(pairs)} queries, {n} pairs, model {args.model}, max_length {args.max_length}")

    local, local_tops = in_process(args.model, pairs, args.max_length)
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.yaml"
        config.write_text(
            json.dumps(
                {
                    "upstream": {"url": "http://127.0.0.1:9"},
                    "server": {"rerank_timeout": 120},
                    "models": {
                        "m": {
                            "path": str(args.model.resolve()),
                            "cache_size": 0,
                            "token_cache_size": 0,
                            "max_length": args.max_length,
                        }
                    },
                }
            )
        )
        proc = subprocess.Popen(serve_argv(config, port=port))
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"{url}/_rerank/health", timeout=1).status_code < 500:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None:
                    raise SystemExit("es-rerank serve exited")
                time.sleep(0.1)
            one, http_tops = asyncio.run(over_http(url, pairs, 1))
            many, _ = asyncio.run(over_http(url, pairs, args.clients))
        finally:
            proc.terminate()
            proc.wait(20)
    same = sum(a == b for a, b in zip(local_tops, http_tops))
    print(f"{'in-process OnnxReranker.score, 1 query at a time':<52} {local:8.1f} pairs/s")
    print(f"{'POST /v1/rerank, 1 client':<52} {one:8.1f} pairs/s  ({one / local:.0%} of in-process)")
    label = f"POST /v1/rerank, {args.clients} concurrent clients"
    print(f"{label:<52} {many:8.1f} pairs/s  ({many / local:.0%} of in-process)")
    print(f"same top document both ways: {same}/{len(pairs)} queries")


if __name__ == "__main__":
    main()
