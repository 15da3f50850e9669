"""The proxy in front of a real Elasticsearch 7.10.2 (its integ-test zip from Maven Central).

The same requests go direct to Elasticsearch and through es-rerank: reranked searches
come back in the model's order with Elasticsearch's own totals, aggregations and
highlights; everything else is Elasticsearch's answer.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from es_rerank import create_app, settings_from_dict

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("mvn") is None and not os.environ.get("ES_RERANK_TEST_ELASTICSEARCH_URL"),
        reason="needs Maven (mvn) to fetch Elasticsearch, or ES_RERANK_TEST_ELASTICSEARCH_URL",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
INDEX = "es-docs"
WINDOW = 20
QUERY = "vitamin D deficiency risk"


@pytest.fixture(scope="module")
def direct(elasticsearch_url):
    with httpx.Client(base_url=elasticsearch_url, timeout=60) as c:
        c.delete(f"/{INDEX}")
        mappings = {
            "properties": {"title": {"type": "text"}, "text": {"type": "text"}, "category": {"type": "keyword"}}
        }
        r = c.put(
            f"/{INDEX}", json={"settings": {"number_of_shards": 1, "number_of_replicas": 0}, "mappings": mappings}
        )
        assert r.status_code == 200, r.text
        lines = []
        with gzip.open(ROOT / "demo" / "scifact" / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
            for i, line in enumerate(itertools.islice(f, 300)):
                doc = json.loads(line)
                lines.append(json.dumps({"index": {"_index": INDEX, "_id": doc["_id"]}}))
                lines.append(
                    json.dumps({"title": doc["title"], "text": doc["text"], "category": ["a", "b", "c"][i % 3]})
                )
        r = c.post(
            "/_bulk?refresh=true", content="\n".join(lines) + "\n", headers={"content-type": "application/x-ndjson"}
        )
        assert r.status_code == 200 and not r.json()["errors"]
        yield c
        c.delete(f"/{INDEX}")


@pytest.fixture(scope="module")
def proxy(direct, elasticsearch_url, tiny_model_dir, serve_app):
    settings = settings_from_dict(
        {
            "upstream": {"url": elasticsearch_url, "timeout": 20},
            "models": {"tiny": {"path": str(tiny_model_dir), "max_length": 256}},
            "indices": [
                {"pattern": "es-*", "model": "tiny", "fields": ["title", "text"], "window": WINDOW, "max_window": 100}
            ],
        },
        env={},
    )
    with serve_app(create_app(settings)) as served, httpx.Client(base_url=served.url, timeout=60) as c:
        yield c


def _model_order(model_dir: Path, query: str, hits: list[dict]) -> list[str]:
    """The test's own scores: ONNX Runtime and tokenizers called directly, one pair at a time."""
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.enable_truncation(256, strategy="only_second")
    tok.no_padding()
    scores = []
    for h in hits:
        e = tok.encode(query, f"{h['_source']['title']} {h['_source']['text']}")
        feed = {k: np.array([v], dtype=np.int64) for k, v in
                (("input_ids", e.ids), ("attention_mask", e.attention_mask), ("token_type_ids", e.type_ids))}  # fmt: skip
        scores.append(session.run(None, feed)[0][0, 0])
    return [hits[i]["_id"] for i in np.argsort(-np.array(scores), kind="stable")]


def test_pass_through_is_elasticsearchs_answer(direct, proxy):
    assert proxy.get("/").json()["version"]["number"] == "7.10.2"
    a, b = direct.get(f"/{INDEX}/_count"), proxy.get(f"/{INDEX}/_count")
    assert (a.status_code, a.json()) == (b.status_code, b.json())
    a, b = direct.get(f"/{INDEX}/_mapping"), proxy.get(f"/{INDEX}/_mapping")
    assert a.json() == b.json()


def test_a_search_is_reranked_in_the_models_order_with_elasticsearchs_totals(direct, proxy, tiny_model_dir):
    body = {
        "query": {"match": {"text": QUERY}},
        "size": 10,
        "aggs": {"cats": {"terms": {"field": "category"}}},
        "highlight": {"fields": {"text": {}}},
    }
    r = proxy.post(f"/{INDEX}/_search", json=body)
    assert r.status_code == 200 and r.headers["x-rerank"] == "reranked", r.text
    got = r.json()
    window = direct.post(f"/{INDEX}/_search", json={**body, "size": WINDOW}).json()
    assert [h["_id"] for h in got["hits"]["hits"]] == _model_order(tiny_model_dir, QUERY, window["hits"]["hits"])[:10]
    assert got["hits"]["total"] == window["hits"]["total"]
    assert got["aggregations"] == window["aggregations"]
    highlights = {h["_id"]: h.get("highlight") for h in window["hits"]["hits"]}
    for hit in got["hits"]["hits"]:
        assert hit.get("highlight") == highlights[hit["_id"]]
        assert "fields" not in hit  # the text fetched for the model is removed again
    pages = [
        proxy.post(f"/{INDEX}/_search", json={**body, "from": f, "size": 5}).json()["hits"]["hits"] for f in (0, 5)
    ]
    assert [h["_id"] for p in pages for h in p] == [h["_id"] for h in got["hits"]["hits"]]


def test_skipped_searches_and_errors_are_elasticsearchs_own(direct, proxy):
    sorted_body = {"query": {"match": {"text": QUERY}}, "sort": [{"category": "asc"}, "_doc"]}
    a, b = direct.post(f"/{INDEX}/_search", json=sorted_body), proxy.post(f"/{INDEX}/_search", json=sorted_body)
    assert b.headers["x-rerank"] == "skipped"
    assert {**a.json(), "took": 0} == {**b.json(), "took": 0}
    bad = {"query": {"no_such_query": {}}}
    a, b = direct.post(f"/{INDEX}/_search", json=bad), proxy.post(f"/{INDEX}/_search", json=bad)
    assert a.status_code == b.status_code == 400
    assert a.json()["error"]["type"] == b.json()["error"]["type"] == "parsing_exception"


def test_msearch_items_are_reranked(direct, proxy, tiny_model_dir):
    lines = [
        {},
        {"query": {"match": {"text": QUERY}}, "size": 5},
        {"index": INDEX},
        {"query": {"match": {"text": "cancer"}}, "size": 5},
    ]
    body = "".join(json.dumps(line) + "\n" for line in lines)
    r = proxy.post(f"/{INDEX}/_msearch", content=body, headers={"content-type": "application/x-ndjson"})
    assert r.status_code == 200 and r.headers["x-rerank-items"] == "2/2", r.text
    for query, response in zip((QUERY, "cancer"), r.json()["responses"]):
        window = direct.post(f"/{INDEX}/_search", json={"query": {"match": {"text": query}}, "size": WINDOW}).json()
        want = _model_order(tiny_model_dir, query, window["hits"]["hits"])[:5]
        assert [h["_id"] for h in response["hits"]["hits"]] == want
