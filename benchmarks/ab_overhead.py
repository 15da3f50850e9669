"""What experiments cost a search: pass-through and reranked p50 with experiments off and on, in one run.

Two ``es-rerank serve`` processes in front of the same OpenSearch, the same model
and index rule (K = 20): one without experiments, one with three (every user on the
rerank arm; every user on the bm25 arm; interleaving), each recording every served
page in ``ubi_queries`` through the bounded bulk recorder. The same searches go to
both, alternating, one at a time, so drift on a shared machine falls on both
alike. The model's score cache is on and every query is sent once before timing,
so the reranked rows time the proxy and the recording, not the model.

Rows: pass-through (``x-rerank-enabled: false``; with experiments on the search is
assigned but, not reranked, not recorded), reranked (on: the rerank arm, recorded),
bm25 arm (on, recorded; against pass-through off), interleaved (on, recorded;
against reranked off). The difference of the medians is the cost; the target for
recording is at most 0.3 ms at the median.

    python benchmarks/ab_overhead.py --opensearch-url http://127.0.0.1:9200 --index scifact
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from es_rerank.cli.serve import serve_argv

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _queries(path: Path, n: int) -> list[str]:
    out = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line)["text"])
            if len(out) == n:
                break
    return out


def _config(url: str, model: Path, index: str, experiments: bool, queries_index: str) -> dict:
    cfg = {
        "upstream": {"url": url},
        "server": {"rerank_timeout": 120, "shed_overload": False},
        "models": {"m": {"path": str(model)}},
        "indices": [{"pattern": f"{index}-bench-*", "model": "m", "window": 20}],
    }
    if experiments:
        keys = ["header:x-user-id"]
        cfg["experiments"] = [
            {
                "name": "bench-rr",
                "indices": [f"{index}-bench-rr"],
                "salt": "b",
                "keys": keys,
                "arms": [
                    {"name": "bm25", "kind": "bm25", "weight": 0},
                    {"name": "rr", "kind": "rerank", "weight": 100},
                ],
            },
            {
                "name": "bench-bm",
                "indices": [f"{index}-bench-bm"],
                "salt": "b",
                "keys": keys,
                "arms": [
                    {"name": "bm25", "kind": "bm25", "weight": 100},
                    {"name": "rr", "kind": "rerank", "weight": 0},
                ],
            },
            {
                "name": "bench-il",
                "indices": [f"{index}-bench-il"],
                "salt": "b",
                "keys": keys,
                "mode": "interleave",
                "arms": [{"name": "bm25", "kind": "bm25"}, {"name": "rr", "kind": "rerank"}],
            },
        ]
        cfg["ubi"] = {"queries_index": queries_index, "events_index": queries_index + "-events"}
    return cfg


class Served:
    def __init__(self, config: dict, workdir: Path, name: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        path = workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log = (workdir / f"{name}.log").open("w")
        self.proc = subprocess.Popen(
            serve_argv(path, port=self.port),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait(self) -> None:
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"es-rerank exited: see {self.log.name}")
            try:
                if httpx.get(self.url + "/_rerank/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit("es-rerank did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--opensearch-url", default="http://127.0.0.1:9200")
    ap.add_argument("--index", default="scifact", help="an indexed corpus (aliases <index>-bench-rr/-bm/-il are added)")
    ap.add_argument("--model", type=Path, default=ROOT / "demo" / "model")
    ap.add_argument("--queries", type=Path, default=SHARED / "datasets" / "scifact" / "queries-dev.jsonl")
    ap.add_argument("--n-queries", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=300, help="timed searches per row and server")
    ap.add_argument("--out", type=Path, default=None, help="write results.json here")
    args = ap.parse_args()

    url = args.opensearch_url.rstrip("/")
    queries_index = "bench-ubi-queries"
    aliases = [f"{args.index}-bench-{x}" for x in ("rr", "bm", "il")]
    httpx.post(
        url + "/_aliases", json={"actions": [{"add": {"index": args.index, "alias": a}} for a in aliases]}
    ).raise_for_status()
    for name in (queries_index, queries_index + "-events"):
        httpx.delete(f"{url}/{name}")
    texts = _queries(args.queries, args.n_queries)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        off = Served(_config(url, args.model, args.index, False, queries_index), work, "off")
        on = Served(_config(url, args.model, args.index, True, queries_index), work, "on")
        try:
            off.wait()
            on.wait()
            off_pt = {"x-rerank-enabled": "false"}
            # row: (off alias, off headers, on alias, on headers, recorded on the "on" server)
            rows = {
                "pass-through": ("rr", off_pt, "rr", off_pt, False),
                "reranked": ("rr", {}, "rr", {}, True),
                "bm25 arm (vs pass-through off)": ("rr", off_pt, "bm", {}, True),
                "interleaved (vs reranked off)": ("rr", {}, "il", {}, True),
            }
            times: dict[str, dict[str, list[float]]] = {r: {"off": [], "on": []} for r in rows}
            with httpx.Client(timeout=120) as client:

                def one(base: str, alias: str, text: str, headers: dict, user: int) -> float:
                    body = {
                        "query": {"multi_match": {"query": text, "fields": ["title", "text"]}},
                        "size": 10,
                        "_source": False,
                    }
                    t0 = time.perf_counter()
                    r = client.post(
                        f"{base}/{args.index}-bench-{alias}/_search",
                        json=body,
                        headers={**headers, "x-user-id": f"u{user}"},
                    )
                    ms = (time.perf_counter() - t0) * 1000
                    if r.status_code != 200:
                        raise SystemExit(f"{base}: {r.status_code} {r.text[:300]}")
                    return ms

                for text in texts:  # warm: every query scored once on each server (score cache on)
                    for off_alias, off_headers, on_alias, on_headers, _ in rows.values():
                        one(off.url, off_alias, text, off_headers, 0)
                        one(on.url, on_alias, text, on_headers, 0)
                for i in range(args.rounds):
                    text = texts[i % len(texts)]
                    for row, (off_alias, off_headers, on_alias, on_headers, _) in rows.items():
                        pair = [("off", off.url, off_alias, off_headers), ("on", on.url, on_alias, on_headers)]
                        if i % 2:
                            pair.reverse()
                        for label, base, alias, headers in pair:
                            times[row][label].append(one(base, alias, text, headers, i))
                expected = (len(texts) + args.rounds) * sum(1 for r in rows.values() if r[4])
                deadline = time.time() + 30  # the recorder writes every 200 ms: wait for the last batch
                while True:
                    metrics = client.get(on.url + "/_rerank/metrics").text
                    written = sum(
                        float(line.rsplit(" ", 1)[1])
                        for line in metrics.splitlines()
                        if line.startswith("es_rerank_ubi_documents_total{") and 'outcome="written"' in line
                    )
                    if written >= expected or time.time() > deadline:
                        break
                    time.sleep(0.2)
        finally:
            on.stop()
            off.stop()
    ubi = [line for line in metrics.splitlines() if line.startswith("es_rerank_ubi_documents_total{")]
    print(f"{args.rounds} searches per row and server, alternating; {len(texts)} queries, K = 20, score cache on")
    print("| search | p50 off (ms) | p50 on (ms) | p50 on - off (ms) | p95 off | p95 on |")
    print("|---|---|---|---|---|---|")
    result = {}
    for row, t in times.items():
        p50 = {k: statistics.median(v) for k, v in t.items()}
        p95 = {k: sorted(v)[int(0.95 * (len(v) - 1))] for k, v in t.items()}
        result[row] = {"p50": p50, "p95": p95, "delta_p50_ms": p50["on"] - p50["off"]}
        print(
            f"| {row} | {p50['off']:.2f} | {p50['on']:.2f} | {p50['on'] - p50['off']:+.2f} | {p95['off']:.2f} | {p95['on']:.2f} |"
        )
    print(
        f"UBI documents (experiments on), {expected} searches recorded: "
        + "; ".join(line.split("{", 1)[1] for line in ubi)
    )
    cost = result["reranked"]["delta_p50_ms"]
    print(f"recording cost at the median (reranked, on - off): {cost:+.2f} ms (target <= 0.3 ms)")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
