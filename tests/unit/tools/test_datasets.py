"""es_rerank.tools.datasets: the one BEIR reader (queries, qrels, corpus, folders) and saved runs."""

from __future__ import annotations

import gzip
import json

import pytest

from es_rerank.errors import DatasetError, RerankError, ToolError
from es_rerank.tools.datasets import (
    beir_files,
    iter_corpus,
    load_beir,
    load_passages,
    load_qrels,
    load_queries,
    load_run,
    open_text,
    save_run,
)

# --- queries and qrels ----------------------------------------------------------


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_load_queries(tmp_path):
    path = _write(
        tmp_path / "q.jsonl", '{"_id": "1", "text": "vitamin d"}\n\n{"_id": 2, "text": "aspirin", "metadata": {}}\n'
    )
    assert load_queries(path) == {"1": "vitamin d", "2": "aspirin"}


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "holds no queries"),
        ("\n  \n", "holds no queries"),
        ('{"_id": "1", "text": "a"}\nnot json\n', "q.jsonl:2: not a JSON object"),
        ('{"id": "1", "text": "a"}\n', 'q.jsonl:1: a query needs "_id"'),
        ('{"_id": "1", "text": "a"}\n{"_id": "1", "text": "b"}\n', "query id '1' appears twice"),
        ('{"_id": "1", "text": "  "}\n', "empty text"),
    ],
)
def test_load_queries_errors(tmp_path, content, message):
    path = _write(tmp_path / "q.jsonl", content)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(")) as info:
        load_queries(path)
    assert isinstance(info.value, RerankError)


def test_load_queries_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_queries(tmp_path / "nope.jsonl")


def test_load_qrels_beir_and_trec(tmp_path):
    beir = _write(tmp_path / "a.tsv", "query-id\tcorpus-id\tscore\n1\td1\t1\n1\td2\t0\n2\td3\t2\n")
    assert load_qrels(beir) == {"1": {"d1": 1, "d2": 0}, "2": {"d3": 2}}
    headerless = _write(tmp_path / "b.tsv", "1\td1\t1\n")
    assert load_qrels(headerless) == {"1": {"d1": 1}}
    trec = _write(tmp_path / "c.txt", "1 0 d1 1\n2 0 d3 1\n")
    assert load_qrels(trec) == {"1": {"d1": 1}, "2": {"d3": 1}}


@pytest.mark.parametrize(
    "content, message",
    [
        ("query-id\tcorpus-id\tscore\n", "holds no judgements"),
        ("query-id\tcorpus-id\tscore\n1\td1\n", "b.tsv:2: expected query-id, corpus-id and score, got 2"),
        ("query-id\tcorpus-id\tscore\n1\td1\t1\n1\td2\thigh\n", "b.tsv:3: score 'high' is not an integer"),
    ],
)
def test_load_qrels_errors(tmp_path, content, message):
    with pytest.raises(DatasetError, match=message):
        load_qrels(_write(tmp_path / "b.tsv", content))


def test_load_beir_rejects_unknown_query_ids(tmp_path):
    queries = _write(tmp_path / "q.jsonl", '{"_id": "1", "text": "a"}\n')
    qrels = _write(tmp_path / "r.tsv", "query-id\tcorpus-id\tscore\n1\td1\t1\n7\td2\t1\n8\td3\t1\n")
    with pytest.raises(DatasetError, match=r"judges 2 query id\(s\) that .* does not have \('7', '8'\)"):
        load_beir(queries, qrels)


def test_load_beir_skips_unjudged_queries(tmp_path):
    queries = _write(tmp_path / "q.jsonl", '{"_id": "1", "text": "a"}\n{"_id": "2", "text": "b"}\n')
    qrels = _write(tmp_path / "r.tsv", "query-id\tcorpus-id\tscore\n1\td1\t1\n")
    data = load_beir(queries, qrels)
    assert data.queries == {"1": "a"} and data.unjudged == 1


def test_dataset_errors_are_tool_errors():
    assert issubclass(DatasetError, ToolError) and issubclass(DatasetError, RerankError)


# --- corpus ---------------------------------------------------------------------


def test_open_text_knows_gzip_by_its_bytes_not_its_name(tmp_path):
    plain = _write(tmp_path / "a.gz", "plain\n")
    packed = tmp_path / "b.jsonl"
    packed.write_bytes(gzip.compress(b"packed\n"))
    with open_text(plain) as f:
        assert f.read() == "plain\n"
    with open_text(packed) as f:
        assert f.read() == "packed\n"


def test_load_passages_joins_title_and_text_like_the_proxy(tmp_path):
    path = _write(
        tmp_path / "corpus.jsonl",
        '{"_id": "d1", "title": "Vitamin D", "text": "and bones"}\n\n'
        '{"_id": 2, "text": "no title"}\n'
        '{"_id": "d3", "title": null, "text": "null title", "metadata": {}}\n',
    )
    assert load_passages(path) == {"d1": "Vitamin D and bones", "2": "no title", "d3": "null title"}
    assert load_passages(path, ids=["2"]) == {"2": "no title"}
    assert [d["_id"] for d in iter_corpus(path)] == ["d1", "2", "d3"]


def test_a_bad_corpus_line_is_named(tmp_path):
    path = _write(tmp_path / "corpus.jsonl", '{"_id": "d1", "text": "a"}\n{"_id": "d2"}\n')
    with pytest.raises(DatasetError, match=r"corpus.jsonl:2: 'text' must be a string, got nothing"):
        load_passages(path)
    with pytest.raises(DatasetError, match="no such file"):
        load_passages(tmp_path / "nope.jsonl")


# --- a data set folder ----------------------------------------------------------


def test_beir_files_finds_both_layouts(tmp_path):
    for name in ("corpus.jsonl.gz", "queries-dev.jsonl", "qrels-dev.tsv"):
        (tmp_path / name).write_text("x")
    files = beir_files(tmp_path, "dev")
    assert (files.corpus.name, files.queries.name, files.qrels.name) == (
        "corpus.jsonl.gz",
        "queries-dev.jsonl",
        "qrels-dev.tsv",
    )
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "dev.tsv").write_text("x")
    assert beir_files(tmp_path, "dev").qrels == tmp_path / "qrels" / "dev.tsv"
    (tmp_path / "queries.jsonl").write_text("x")
    assert beir_files(tmp_path, "test").qrels is None
    with pytest.raises(DatasetError, match="no queries file"):
        beir_files(tmp_path / "qrels", "dev")


# --- saved runs -----------------------------------------------------------------


def test_run_files_round_trip(tmp_path):
    path = save_run({"q1": ["d3", "d1"], "q2": ["d2"]}, tmp_path / "run.json")
    assert load_run(path) == {"q1": ["d3", "d1"], "q2": ["d2"]}
    (tmp_path / "scored.json").write_text(json.dumps({"q1": {"a": 1.0, "b": 3.0}}))
    assert load_run(tmp_path / "scored.json") == {"q1": ["b", "a"]}
    (tmp_path / "run.trec").write_text("q1 Q0 a 1 2.5 bm25\nq1 Q0 b 2 7.0 bm25\n")
    assert load_run(tmp_path / "run.trec") == {"q1": ["b", "a"]}
    (tmp_path / "bad.trec").write_text("q1 a 1\n")
    with pytest.raises(DatasetError, match="6 columns"):
        load_run(tmp_path / "bad.trec")
