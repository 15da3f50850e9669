"""Is `es-rerank eval`'s first stage a sound BM25? Compare it with an independent BM25.

`eval`'s first stage is OpenSearch with the BEIR paper's Elasticsearch baseline:
a ``multi_match`` over ``title`` and ``text``, ``best_fields``, ``tie_breaker`` 0.5,
on an index with the standard analyzer. It is compared, on the same split and with
the same metric code (ir-measures), with bm25s (a BM25 on sparse matrices that shares
no code with Lucene) in two settings:

* **OpenSearch's settings**: k1 1.2 and b 0.75 (Lucene's defaults, which OpenSearch
  keeps unless the index sets a similarity), Lucene's idf, lower-cased word tokens
  split close to the standard analyzer's Unicode rules (no stemming, no stop words),
  one BM25 per field (each with its own document frequencies and average length) and
  the fields combined as best_fields does: the best field's score plus 0.5 times the
  others'. This is the figure the first stage must match (within 0.02 NDCG@10).
* **the model card's settings**: k1 1.5, b 0.75, title and abstract as one text,
  bm25s's default tokens (two or more word characters), no stemming, no stop words:
  the BM25 behind the model card's 0.6267.

    python benchmarks/bm25_check.py [--upstream http://127.0.0.1:9200] [--index scifact]

Needs the index built from the SciFact corpus (``es-rerank index ... --mapping
mappings/scifact.json``) and ``pip install bm25s``. Exits 1 when the first stage and
the matched bm25s differ by more than ``--tolerance``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from es_rerank.tools.datasets import load_beir
from es_rerank.tools.evaluation import default_first_stage_query, first_stage_body, rank_metrics

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "datasets" / "scifact"
DEPTH = 100

# Close to Lucene's StandardTokenizer (Unicode UAX #29 word breaks) for this text:
# letters and digits run together ("p53"), and a period or apostrophe between word
# characters ("3.5", "e.g", "don't") or a comma between digits ("1,000") stays inside
# the token; everything else splits.
STANDARD_TOKEN = re.compile(r"\w+(?:(?:[.'\u2019]|(?<=\d),(?=\d))\w+)*")


def standard_tokens(text: str) -> list[str]:
    return [t.lower() for t in STANDARD_TOKEN.findall(text)]


def load_corpus(path: Path) -> tuple[list[str], list[str], list[str]]:
    ids, titles, texts = [], [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            ids.append(str(doc["_id"]))
            titles.append(doc.get("title") or "")
            texts.append(doc.get("text") or "")
    return ids, titles, texts


def opensearch_run(upstream: str, index: str, queries: dict[str, str]) -> tuple[dict[str, list[str]], dict]:
    template = default_first_stage_query(["title", "text"])
    run = {}
    with httpx.Client(base_url=upstream.rstrip("/"), timeout=60) as client:
        settings = client.get(f"/{index}/_settings", params={"include_defaults": "true"}).json()[index]
        for qid, text in queries.items():
            response = client.post(f"/{index}/_search", json=first_stage_body(template, text, size=DEPTH))
            response.raise_for_status()
            run[qid] = [h["_id"] for h in response.json()["hits"]["hits"]]
    return run, settings


def _top(ids: list[str], scores: np.ndarray, depth: int = DEPTH) -> list[str]:
    # Best first; ties by doc id, as an inverted index would give no particular order.
    order = np.lexsort((np.arange(len(scores)), -scores))[:depth]
    return [ids[i] for i in order if scores[i] > 0]


def bm25s_matched(corpus, queries: dict[str, str], *, k1: float = 1.2, b: float = 0.75, tie_breaker: float = 0.5):
    """One Lucene-style BM25 per field, combined as multi_match best_fields does."""
    import bm25s

    ids, titles, texts = corpus
    fields = []
    for values in (titles, texts):
        model = bm25s.BM25(k1=k1, b=b, method="lucene")
        model.index([standard_tokens(v) for v in values], show_progress=False)
        fields.append(model)
    run = {}
    for qid, text in queries.items():
        tokens = standard_tokens(text)
        per_field = []
        for model in fields:
            known = model.get_tokens_ids(tokens)
            per_field.append(model.get_scores_from_ids(known) if known else np.zeros(len(ids), dtype=np.float32))
        stacked = np.vstack(per_field).astype(np.float64)
        best = stacked.max(axis=0)
        scores = best + tie_breaker * (stacked.sum(axis=0) - best)
        run[qid] = _top(ids, scores)
    return run


def bm25s_model_card(corpus, queries: dict[str, str], *, k1: float = 1.5, b: float = 0.75):
    """The model card's BM25: title and abstract as one text, bm25s's default tokens."""
    import bm25s

    ids, titles, texts = corpus
    docs = [f"{t} {x}".strip() for t, x in zip(titles, texts)]
    model = bm25s.BM25(k1=k1, b=b, method="lucene")
    model.index(bm25s.tokenize(docs, stopwords=None, show_progress=False), show_progress=False)
    query_ids = list(queries)
    tokenized = bm25s.tokenize([queries[q] for q in query_ids], stopwords=None, show_progress=False, return_ids=False)
    run = {}
    for qid, tokens in zip(query_ids, tokenized):
        known = model.get_tokens_ids(tokens)
        scores = model.get_scores_from_ids(known) if known else np.zeros(len(ids), dtype=np.float32)
        run[qid] = _top(ids, np.asarray(scores, dtype=np.float64))
    return run


def overlap_at(a: dict[str, list[str]], b: dict[str, list[str]], k: int = 10) -> float:
    return float(np.mean([len(set(a[q][:k]) & set(b[q][:k])) / k for q in a]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", default="http://127.0.0.1:9200", help="OpenSearch URL")
    parser.add_argument("--index", default="scifact", help="index built from the SciFact corpus")
    parser.add_argument("--corpus", type=Path, default=SCIFACT / "corpus.jsonl")
    parser.add_argument("--queries", type=Path, default=SCIFACT / "queries-dev.jsonl")
    parser.add_argument("--qrels", type=Path, default=SCIFACT / "qrels" / "dev.tsv")
    parser.add_argument("--tolerance", type=float, default=0.02, help="largest NDCG@10 gap accepted")
    args = parser.parse_args(argv)

    data = load_beir(args.queries, args.qrels)
    corpus = load_corpus(args.corpus)
    t0 = time.perf_counter()
    runs = {}
    runs["opensearch"], index_settings = opensearch_run(args.upstream, args.index, data.queries)
    similarity = (
        index_settings.get("settings", {}).get("index", {}).get("similarity") or "default (BM25, k1 1.2, b 0.75)"
    )
    runs["matched"] = bm25s_matched(corpus, data.queries)
    runs["card"] = bm25s_model_card(corpus, data.queries)
    figures = {name: rank_metrics(data.qrels, run, recall_at=DEPTH)[0] for name, run in runs.items()}

    labels = {
        "opensearch": f"OpenSearch [{args.index}]: multi_match best_fields, tie_breaker 0.5, title+text; standard analyzer; similarity {similarity}",
        "matched": "bm25s: k1 1.2, b 0.75, Lucene idf, standard-like tokens, no stemming/stop words, per field, best_fields tie 0.5",
        "card": "bm25s: k1 1.5, b 0.75, title+abstract as one text, \\w\\w+ tokens, no stemming/stop words (model card)",
    }
    print(
        f"BM25 on {args.queries.name} / {args.qrels.name}: {len(data.queries)} queries, {len(corpus[0])} documents, top {DEPTH}"
    )
    print(f"{'':<12} {'NDCG@10':>8} {'MRR@10':>8} {'R@100':>8}  top-10 overlap with OpenSearch")
    for name in ("opensearch", "matched", "card"):
        f = figures[name]
        overlap = overlap_at(runs["opensearch"], runs[name])
        print(f"{name:<12} {f['ndcg@10']:8.4f} {f['mrr@10']:8.4f} {f['recall@100']:8.4f}  {overlap:6.3f}")
    print()
    for name in ("opensearch", "matched", "card"):
        print(f"  {name}: {labels[name]}")
    gap = figures["opensearch"]["ndcg@10"] - figures["matched"]["ndcg@10"]
    card_gap = figures["opensearch"]["ndcg@10"] - figures["card"]["ndcg@10"]
    print(
        f"\nfirst stage vs bm25s with OpenSearch's settings: NDCG@10 gap {gap:+.4f} (tolerance {args.tolerance}); "
        f"vs the model card's bm25s: {card_gap:+.4f} ({time.perf_counter() - t0:.1f}s)"
    )
    if abs(gap) > args.tolerance:
        print("FAIL: the first stage is further from an independent BM25 than the tolerance", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
