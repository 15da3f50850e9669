"""A tiny BEIR folder for tests: 12 documents, 4 train and 2 dev queries, graded qrels."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["write_tiny_beir", "TRAIN_QRELS"]

# query id -> {doc id: grade}; a grade of 0 is judged not relevant
TRAIN_QRELS = {
    "q1": {"d1": 1, "d2": 2, "d9": 0},
    "q2": {"d3": 1},
    "q3": {"d4": 1, "d5": 0},
    "q4": {"d6": 1},
}
_DEV_QRELS = {"q5": {"d7": 1}, "q6": {"d8": 1}}
_QUERIES = {
    "q1": "vitamin d and multiple sclerosis",
    "q2": "how vaccines train the immune system",
    "q3": "statins and muscle pain",
    "q4": "sleep loss and memory",
    "q5": "coffee and heart rhythm",
    "q6": "exercise and depression",
}


def write_tiny_beir(directory: Path) -> Path:
    """Write corpus.jsonl, queries-{train,dev}.jsonl and qrels/{train,dev}.tsv into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    docs = [
        {"_id": f"d{i}", "title": f"Title {i}" if i != 3 else None, "text": f"Abstract number {i}" + " word" * i}
        for i in range(1, 13)
    ]
    (directory / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (directory / "qrels").mkdir(exist_ok=True)
    for split, qrels in (("train", TRAIN_QRELS), ("dev", _DEV_QRELS)):
        queries = "".join(json.dumps({"_id": q, "text": _QUERIES[q]}) + "\n" for q in qrels)
        (directory / f"queries-{split}.jsonl").write_text(queries)
        rows = [f"{q}\t{d}\t{g}" for q, judged in qrels.items() for d, g in judged.items()]
        (directory / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return directory
