"""es_rerank.indexing: BEIR corpus reading (unit) and bulk loading into a real OpenSearch."""

from __future__ import annotations

import gzip
import itertools
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from opensearchpy import OpenSearch

from es_rerank.errors import RerankError
from es_rerank.tools.datasets import iter_corpus
from es_rerank.tools.indexing import DEFAULT_MAPPING, index_corpus, load_mapping

REPO = Path(__file__).resolve().parents[2]
DEMO_CORPUS = REPO / "demo" / "scifact" / "corpus.jsonl.gz"
SCIFACT_MAPPING = REPO / "mappings" / "scifact.json"


# --- helpers ---


def _scifact_docs(n: int) -> list[dict]:
    with gzip.open(DEMO_CORPUS, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in itertools.islice(f, n)]


def _write(path: Path, lines: list[str]) -> Path:
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def _write_docs(path: Path, docs: list[dict]) -> Path:
    return _write(path, [json.dumps(d) for d in docs])


# --- unit: iter_corpus, load_mapping ---


@pytest.mark.parametrize("name", ["corpus.jsonl", "corpus.jsonl.gz"])
def test_iter_corpus_reads_jsonl_and_gzip(tmp_path: Path, name: str) -> None:
    docs = [
        {"_id": "1", "title": "A title", "text": "Some text.", "metadata": {"x": 1}},
        {"_id": 2, "text": "No title, integer id."},
        {"_id": "3", "title": None, "text": "Null title."},
    ]
    lines = [json.dumps(d) for d in docs]
    lines.insert(1, "")  # blank lines are skipped
    path = _write(tmp_path / name, lines)

    assert list(iter_corpus(path)) == [
        {"_id": "1", "title": "A title", "text": "Some text."},
        {"_id": "2", "title": "", "text": "No title, integer id."},
        {"_id": "3", "title": "", "text": "Null title."},
    ]


def test_iter_corpus_detects_gzip_by_content(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(gzip.compress(b'{"_id": "1", "title": "t", "text": "x"}\n'))
    assert list(iter_corpus(path)) == [{"_id": "1", "title": "t", "text": "x"}]


def test_iter_corpus_on_the_demo_corpus() -> None:
    docs = list(iter_corpus(DEMO_CORPUS))
    assert len(docs) == 5183
    assert all(set(d) == {"_id", "title", "text"} for d in docs)
    assert len({d["_id"] for d in docs}) == 5183


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"_id": "2", "title": "t", "text": "x"', "not valid JSON"),
        ('["not", "an", "object"]', "expected a JSON object, got list"),
        ('{"title": "t", "text": "x"}', "'_id' must be a non-empty string"),
        ('{"_id": "", "title": "t", "text": "x"}', "'_id' must be a non-empty string"),
        ('{"_id": "2", "title": "t"}', "'text' must be a string, got nothing"),
        ('{"_id": "2", "title": 5, "text": "x"}', "'title' must be a string, got int"),
    ],
)
@pytest.mark.parametrize("name", ["corpus.jsonl", "corpus.jsonl.gz"])
def test_iter_corpus_bad_line_names_file_and_line(tmp_path: Path, name: str, line: str, message: str) -> None:
    good = json.dumps({"_id": "1", "title": "t", "text": "x"})
    path = _write(tmp_path / name, [good, "", line, good])
    it = iter_corpus(path)
    assert next(it)["_id"] == "1"  # lazy: good lines before the bad one come through
    with pytest.raises(RerankError) as excinfo:
        list(it)
    assert f"{path}:3:" in str(excinfo.value)
    assert message in str(excinfo.value)


def test_iter_corpus_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RerankError, match="no such file"):
        list(iter_corpus(tmp_path / "nope.jsonl"))


def test_iter_corpus_truncated_gzip(tmp_path: Path) -> None:
    data = gzip.compress(b'{"_id": "1", "title": "t", "text": "x"}\n' * 1000)
    path = tmp_path / "corpus.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RerankError, match="cannot be read"):
        list(iter_corpus(path))


def test_default_mapping_is_mappings_scifact_json() -> None:
    assert load_mapping(SCIFACT_MAPPING) == DEFAULT_MAPPING


def test_load_mapping_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"mappings": {\n  "properties": }\n}')
    with pytest.raises(RerankError, match=r"bad\.json:2: not valid JSON"):
        load_mapping(bad)
    bad.write_text('{"properties": {}}')
    with pytest.raises(RerankError, match="unexpected top-level keys"):
        load_mapping(bad)
    with pytest.raises(RerankError, match="no such file"):
        load_mapping(tmp_path / "missing.json")


# --- integration: a real OpenSearch ---


@pytest.fixture()
def client(opensearch_url: str) -> Iterator[OpenSearch]:
    client = OpenSearch(hosts=[opensearch_url], timeout=60)
    yield client
    client.close()


@pytest.fixture()
def index_name(client: OpenSearch) -> Iterator[str]:
    name = f"es-rerank-test-indexing-{uuid.uuid4().hex[:12]}"
    yield name
    client.indices.delete(index=name, ignore_unavailable=True)


def _count(client: OpenSearch, index: str) -> int:
    return client.count(index=index)["count"]


@pytest.mark.integration
def test_index_corpus_loads_docs_with_the_mapping(client: OpenSearch, index_name: str, tmp_path: Path) -> None:
    docs = _scifact_docs(200)
    corpus = _write_docs(tmp_path / "corpus.jsonl.gz", docs)

    n = index_corpus(client, index_name, corpus, mapping=load_mapping(SCIFACT_MAPPING), progress=False)

    assert n == 200
    assert _count(client, index_name) == 200  # refreshed on return
    mapping = client.indices.get_mapping(index=index_name)[index_name]["mappings"]
    assert mapping["properties"] == {
        "title": {"type": "text", "analyzer": "standard"},
        "text": {"type": "text", "analyzer": "standard"},
    }
    assert mapping["dynamic"] == "false"
    settings = client.indices.get_settings(index=index_name)[index_name]["settings"]["index"]
    assert (settings["number_of_shards"], settings["number_of_replicas"]) == ("1", "0")

    first = docs[0]
    got = client.get(index=index_name, id=first["_id"])
    assert got["_source"] == {"title": first["title"], "text": first["text"]}
    hits = client.search(index=index_name, body={"query": {"match": {"title": first["title"]}}, "size": 1})["hits"][
        "hits"
    ]
    assert hits[0]["_id"] == first["_id"]


@pytest.mark.integration
def test_index_corpus_recreate(client: OpenSearch, index_name: str, tmp_path: Path) -> None:
    docs = _scifact_docs(200)
    big = _write_docs(tmp_path / "big.jsonl", docs)
    small = _write_docs(tmp_path / "small.jsonl.gz", docs[150:])  # 50 docs

    assert index_corpus(client, index_name, big, progress=False, chunk_size=64) == 200
    # Without recreate the index is kept: the 50 are replaced by _id, nothing is lost.
    assert index_corpus(client, index_name, small, progress=False) == 50
    assert _count(client, index_name) == 200
    # recreate deletes it first.
    assert index_corpus(client, index_name, small, recreate=True, progress=False) == 50
    assert _count(client, index_name) == 50


@pytest.mark.integration
def test_index_corpus_keeps_an_existing_index_mapping(client: OpenSearch, index_name: str, tmp_path: Path) -> None:
    client.indices.create(
        index=index_name,
        body={
            "settings": {"number_of_replicas": 0},
            "mappings": {"properties": {"text": {"type": "text"}}},
        },
    )
    corpus = _write_docs(tmp_path / "c.jsonl", _scifact_docs(10))
    assert index_corpus(client, index_name, corpus, progress=False) == 10
    mapping = client.indices.get_mapping(index=index_name)[index_name]["mappings"]
    assert "dynamic" not in mapping  # not DEFAULT_MAPPING


@pytest.mark.integration
def test_index_corpus_bad_line_gives_a_clear_error(client: OpenSearch, index_name: str, tmp_path: Path) -> None:
    lines = [json.dumps(d) for d in _scifact_docs(20)]
    lines[12] = lines[12][:-1]  # drop the closing brace
    corpus = _write(tmp_path / "corpus.jsonl.gz", lines)

    with pytest.raises(RerankError) as excinfo:
        index_corpus(client, index_name, corpus, progress=False, chunk_size=5)
    assert str(excinfo.value).startswith(f"{corpus}:13: not valid JSON")


@pytest.mark.integration
def test_index_corpus_rejected_docs_raise_with_reasons(client: OpenSearch, index_name: str, tmp_path: Path) -> None:
    mapping = {
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": {"properties": {"title": {"type": "integer"}, "text": {"type": "text"}}},
    }
    docs = [
        {"_id": "ok1", "title": "7", "text": "a"},
        {"_id": "bad1", "title": "not a number", "text": "b"},
        {"_id": "ok2", "title": "", "text": "c"},
        {"_id": "bad2", "title": "nor this", "text": "d"},
    ]
    corpus = _write_docs(tmp_path / "c.jsonl", docs)

    with pytest.raises(RerankError) as excinfo:
        index_corpus(client, index_name, corpus, mapping=mapping, progress=False)
    message = str(excinfo.value)
    assert message.startswith("2 of 4 documents")
    assert "bad1: mapper_parsing_exception" in message
    assert "bad2: mapper_parsing_exception" in message
    assert _count(client, index_name) == 2  # the good ones are in, and refreshed


@pytest.mark.integration
def test_index_corpus_unreachable_opensearch(tmp_path: Path) -> None:
    from es_rerank.errors import UpstreamUnavailableError

    corpus = _write_docs(tmp_path / "c.jsonl", _scifact_docs(1))
    client = OpenSearch(hosts=["http://127.0.0.1:9"], timeout=2, max_retries=0)
    with pytest.raises(UpstreamUnavailableError, match="cannot be reached"):
        index_corpus(client, "whatever", corpus, progress=False)
