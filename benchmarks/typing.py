"""Search-as-you-type through es-rerank, as Searchkit sends it: is the final query reranked?

A SciFact claim of about 60 characters is typed at 8 characters a second into a
Searchkit search box: one ``_msearch`` per keystroke (the body Searchkit 4.16 sends,
recorded from the browser test's page), never cancelled, at most 6 in flight as a
browser allows per host, each with the page's ``Origin``. ``es-rerank serve`` runs in
its own process with the demo model (K = 20) and the server's defaults
(``rerank_timeout`` 10 s, shedding on), twice: with supersession (the default: a
page's newest search wins the model over its older ones) and with
``server.supersede.enabled: false``. For each it prints the final query's answer
(``x-rerank``, its latency after the last keystroke), the outcomes of the other
keystrokes, and the rerank outcomes by reason from ``/_rerank/metrics``.

    python benchmarks/typing.py --opensearch-url http://127.0.0.1:9200 [--index scifact]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import threading
import time
from pathlib import Path

import httpx
from proxy_latency import ROOT, _free_port, ensure_index, start_proxy

ORIGIN = "http://localhost:3000"  # the page's origin: a browser sends it on every search
CHARS_PER_S = 8.0


def searchkit_body(index: str, text: str) -> bytes:
    """The ``_msearch`` Searchkit 4.16 sends for ``text`` (search_attributes title and text, size 20)."""
    query = {
        "bool": {
            "filter": [],
            "must": {
                "bool": {
                    "should": [
                        {"bool": {"should": [
                            {"multi_match": {"query": text, "fields": ["title", "text"], "fuzziness": "AUTO:4,8"}},
                            {"multi_match": {"query": text, "fields": ["title", "text"], "type": "bool_prefix"}},
                        ]}},
                        {"multi_match": {"query": text, "type": "phrase", "fields": ["title", "text"]}},
                    ]
                }
            },
        }
    }  # fmt: skip
    body = {"query": query, "size": 20, "from": 0, "_source": {"includes": ["title", "text"]}}
    return (json.dumps({"index": index}) + "\n" + json.dumps(body) + "\n").encode()


def pick_claim(path: Path, length: int) -> str:
    """The dev claim closest to ``length`` characters."""
    claims = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return min(claims, key=lambda c: (abs(len(c) - length), c))


def outcomes_by_reason(url: str) -> collections.Counter:
    text = httpx.get(f"{url}/_rerank/metrics", timeout=10).text
    counts: collections.Counter = collections.Counter()
    for line in text.splitlines():
        if line.startswith("es_rerank_rerank_outcomes_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            counts[(labels.get("outcome", ""), labels.get("reason", ""))] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def type_claim(url: str, index: str, claim: str) -> tuple[list[dict], float]:
    """Send one _msearch per keystroke at CHARS_PER_S; the answers in keystroke order and when the last key was typed."""
    results: list[dict] = [{} for _ in claim]
    limits = httpx.Limits(max_connections=6, max_keepalive_connections=6)  # a browser's per-host limit
    headers = {"content-type": "application/json", "origin": ORIGIN}
    with httpx.Client(base_url=url, limits=limits, timeout=120) as client:
        threads = []
        start = time.perf_counter()
        for i in range(len(claim)):
            time.sleep(max(0.0, start + i / CHARS_PER_S - time.perf_counter()))
            prefix = claim[: i + 1]

            def send(i: int = i, prefix: str = prefix) -> None:
                sent = time.perf_counter()
                try:
                    answer = client.post("/_msearch", content=searchkit_body(index, prefix), headers=headers)
                    results[i] = {
                        "prefix": prefix, "status": answer.status_code, "x_rerank": answer.headers.get("x-rerank", ""),
                        "items": answer.headers.get("x-rerank-item-outcomes", ""), "done": time.perf_counter(),
                        "ms": (time.perf_counter() - sent) * 1000,
                    }  # fmt: skip
                except httpx.HTTPError as exc:
                    results[i] = {
                        "prefix": prefix,
                        "status": 0,
                        "x_rerank": f"error: {exc}",
                        "done": time.perf_counter(),
                        "ms": 0.0,
                    }

            thread = threading.Thread(target=send, daemon=True)
            thread.start()
            threads.append(thread)
        last_key = time.perf_counter()
        for thread in threads:
            thread.join()
    for r in results:
        r["after_last_key_ms"] = (r["done"] - last_key) * 1000
    return results, last_key


def run(opensearch_url: str, index: str, claim: str, supersede: bool) -> dict:
    port = _free_port()
    server = {"rerank_timeout": 10, "supersede": {"enabled": supersede}}  # the server's default timeout
    proc = start_proxy(
        opensearch_url, ROOT / "demo" / "model", port, index, server=server, model_settings={"cache_size": 0}
    )
    url = f"http://127.0.0.1:{port}"
    try:
        httpx.post(
            f"{url}/_msearch",
            content=searchkit_body(index, "warm up the model"),
            headers={"content-type": "application/json"},
            timeout=120,
        )
        before = outcomes_by_reason(url)
        results, _ = type_claim(url, index, claim)
        after = outcomes_by_reason(url)
    finally:
        proc.terminate()
        proc.wait(30)
    reasons = {
        f"{o}/{r}": after[(o, r)] - before.get((o, r), 0) for (o, r) in after if after[(o, r)] - before.get((o, r), 0)
    }
    return {"supersede": supersede, "results": results, "reasons": reasons}


def report(run_: dict) -> None:
    results = run_["results"]
    final = results[-1]
    others = collections.Counter(r["x_rerank"] for r in results[:-1])
    label = "supersession on (default)" if run_["supersede"] else "supersession off (server.supersede.enabled: false)"
    print(f"\n== {label}")
    print(f"final query ({len(final['prefix'])} chars): x-rerank {final['x_rerank']}, items {final.get('items', '')}, "
          f"answered {final['after_last_key_ms']:.0f} ms after the last keystroke ({final['ms']:.0f} ms after it was sent)")  # fmt: skip
    print(f"the {len(results) - 1} earlier keystrokes: " + ", ".join(f"{k} {v}" for k, v in sorted(others.items())))
    print("rerank outcomes by reason (every item, from /_rerank/metrics): "
          + ", ".join(f"{k} {v}" for k, v in sorted(run_["reasons"].items())))  # fmt: skip
    slowest = max(results, key=lambda r: r["ms"])
    print(
        f"slowest answer: {slowest['ms']:.0f} ms (prefix of {len(slowest['prefix'])} chars, x-rerank {slowest['x_rerank']})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--opensearch-url", default="http://127.0.0.1:9200")
    parser.add_argument("--index", default="scifact")
    parser.add_argument(
        "--length", type=int, default=60, help="characters of the claim typed (the dev claim closest to it)"
    )
    parser.add_argument("--claim", help="type this text instead")
    parser.add_argument("--out", type=Path, help="write every answer as JSON here")
    args = parser.parse_args(argv)
    ensure_index(args.opensearch_url, args.index)
    claim = args.claim or pick_claim(ROOT / "demo" / "scifact" / "queries-dev.jsonl", args.length)
    print(f"typing {claim!r} ({len(claim)} chars) at {CHARS_PER_S:g} chars/s into a Searchkit box: "
          f"{len(claim)} _msearch requests, never cancelled, 6 in flight at most")  # fmt: skip
    runs = [run(args.opensearch_url, args.index, claim, supersede) for supersede in (True, False)]
    for r in runs:
        report(r)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"claim": claim, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
