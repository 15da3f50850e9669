"""A slice of the demo's SciFact (demo/scifact) indexed on a real OpenSearch, for eval and plan tests."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from opensearchpy import OpenSearch
from opensearchpy.helpers import bulk

__all__ = ["index_demo_slice"]

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo" / "scifact"


def index_demo_slice(client: OpenSearch, index: str, out: Path, *, queries: int, docs: int) -> int:
    """Write the first ``queries`` judged dev queries and their qrels to ``out`` (queries.jsonl,
    qrels.tsv) and index the first ``docs`` documents plus every relevant one; the documents indexed."""
    chosen = [json.loads(line) for line in (DEMO / "queries-dev.jsonl").read_text().splitlines()[:queries]]
    wanted = {q["_id"] for q in chosen}
    rows = [line.split("\t") for line in (DEMO / "qrels-dev.tsv").read_text().splitlines()[1:]]
    rows = [r for r in rows if r[0] in wanted]
    relevant = {r[1] for r in rows}
    (out / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in chosen))
    (out / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join("\t".join(r) + "\n" for r in rows))
    kept = {}
    with gzip.open(DEMO / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            doc = json.loads(line)
            if i < docs or doc["_id"] in relevant:
                kept[doc["_id"]] = doc
            if i >= docs and relevant <= set(kept):
                break
    assert relevant <= set(kept), "a relevant document is missing from the demo corpus"
    if client.indices.exists(index=index):
        client.indices.delete(index=index)
    client.indices.create(index=index, body=json.loads((ROOT / "mappings" / "scifact.json").read_text()))
    bulk(
        client,
        ({"_index": index, "_id": d["_id"], "title": d["title"], "text": d["text"]} for d in kept.values()),
        refresh=True,
    )
    return len(kept)
