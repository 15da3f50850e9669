"""Ranking quality with the real model: SciFact dev queries whose relevant document
BM25 ranks below 10 are brought into the top 10 by the proxy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opensearchpy import OpenSearch

from es_rerank import create_app, settings_from_dict
from es_rerank.tools.indexing import index_corpus, load_mapping

pytestmark = [pytest.mark.integration, pytest.mark.quality]

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
MODEL = SHARED / "models" / "scifact-minilm-l6-ce"
SCIFACT = SHARED / "datasets" / "scifact"
INDEX = "rr-scifact"
WINDOW = 30


def _first_stage(text: str) -> dict:
    # The BEIR paper's Elasticsearch baseline: multi_match over title and text.
    return {"multi_match": {"query": text, "fields": ["title", "text"], "type": "best_fields", "tie_breaker": 0.5}}


@pytest.fixture(scope="module")
def scifact(opensearch_url):
    if not (MODEL / "model.onnx").is_file() or not (SCIFACT / "corpus.jsonl").is_file():
        pytest.skip(f"needs the shared model and SciFact corpus under {SHARED}")
    client = OpenSearch(opensearch_url, timeout=120)
    if not client.indices.exists(index=INDEX) or client.count(index=INDEX)["count"] != 5183:
        index_corpus(
            client,
            INDEX,
            SCIFACT / "corpus.jsonl",
            mapping=load_mapping(ROOT / "mappings" / "scifact.json"),
            recreate=True,
            progress=False,
        )
    return client


def _dev():
    queries = {}
    for line in (SCIFACT / "queries-dev.jsonl").read_text().splitlines():
        q = json.loads(line)
        queries[q["_id"]] = q["text"]
    qrels: dict[str, set[str]] = {}
    for line in (SCIFACT / "qrels" / "dev.tsv").read_text().splitlines()[1:]:
        qid, did, rel = line.split("\t")
        if int(rel) > 0:
            qrels.setdefault(qid, set()).add(did)
    return queries, qrels


def test_model_lifts_relevant_documents_into_top10(scifact, opensearch_url, serve_app, capsys):
    queries, qrels = _dev()
    # Queries whose relevant documents all sit below rank 10 but inside the window.
    candidates = []
    for qid, text in queries.items():
        if qid not in qrels:
            continue
        hits = scifact.search(index=INDEX, body={"query": _first_stage(text), "size": WINDOW, "_source": False})[
            "hits"
        ]["hits"]
        ids = [h["_id"] for h in hits]
        ranks = [ids.index(d) + 1 for d in qrels[qid] if d in ids]
        if ranks and min(ranks) > 10:
            candidates.append((qid, text, min(ranks)))
    assert len(candidates) >= 5, "the dev split should have such queries"

    settings = settings_from_dict(
        {
            "upstream": {"url": opensearch_url, "timeout": 60},
            "server": {"rerank_timeout": 120},
            "models": {"scifact": {"path": str(MODEL)}},
            "indices": [{"pattern": INDEX, "window": WINDOW}],
        },
        env={},
    )
    lifted = []
    with serve_app(create_app(settings)) as served:
        client = OpenSearch(served.url, timeout=120)
        for qid, text, bm25_rank in candidates:
            res = client.search(index=INDEX, body={"query": _first_stage(text), "size": 10, "_source": False})
            ids = [h["_id"] for h in res["hits"]["hits"]]
            ranks = [ids.index(d) + 1 for d in qrels[qid] if d in ids]
            if ranks:
                lifted.append((qid, text, bm25_rank, min(ranks)))
    with capsys.disabled():
        print(
            f"\n{len(lifted)} of {len(candidates)} dev queries with the relevant document at BM25 rank 11-{WINDOW} moved into the top 10:"
        )
        for qid, text, before, after in lifted:
            print(f"  q{qid}: BM25 rank {before:2d} -> reranked {after:2d}  {text[:80]}")
    assert len(lifted) >= max(3, len(candidates) // 3)
