"""The rerank API (/v1/rerank, /v2/rerank, /rerank) through real client libraries.

The Cohere Python SDK (v1 and v2 clients, pointed at es-rerank with ``base_url``) and
LangChain's ``CohereRerank`` call es-rerank served by uvicorn on loopback; the scores
are checked against the same model run in-process on the same pairs. Bad input is
answered 400 in the shape each client parses. Degradation runs on fake models.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest

from es_rerank import create_app, settings_from_dict
from es_rerank.errors import ModelOverloadedError
from es_rerank.reranker import OnnxReranker

pytestmark = pytest.mark.integration

SHARED_MODEL = Path(__file__).resolve().parents[3] / "shared" / "models" / "scifact-minilm-l6-ce"
QUERY = "what causes rickets in children"
DOCS = [
    "The Eiffel tower is a wrought-iron lattice tower in Paris.",
    "Rickets is a softening of the bones in children, most often caused by a lack of vitamin D.",
    "Vitamin D deficiency impairs calcium absorption.",
    "Protein folding is studied with molecular dynamics simulations.",
    "Nutritional rickets remains common where children get little sunlight.",
]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir) -> Path:
    """The shared SciFact model when present (real relevance), else the tiny test model."""
    if (SHARED_MODEL / "model.onnx").is_file():
        return SHARED_MODEL
    return tiny_model_dir


@pytest.fixture(scope="module")
def expected(model_dir) -> np.ndarray:
    """The same pairs scored in-process, with no cache: raw logits."""
    with OnnxReranker("ref", model_dir / "model.onnx", model_dir / "tokenizer.json", cache_size=0) as ref:
        return ref.score(QUERY, DOCS)


@pytest.fixture(scope="module")
def served(model_dir, serve_app):
    settings = settings_from_dict(
        {
            "upstream": {"url": "http://127.0.0.1:9"},  # never asked: the API needs no OpenSearch
            "models": {"minilm": {"path": str(model_dir)}},
            "rerank_api": {"aliases": {"rerank-english-v3.0": "minilm"}},
        }
    )
    app = create_app(settings)
    with serve_app(app) as srv:
        yield srv


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x.astype(np.float64)))


def test_cohere_v1_client(served, expected):
    import cohere

    co = cohere.Client(api_key="unused", base_url=served.url)
    res = co.rerank(model="rerank-english-v3.0", query=QUERY, documents=DOCS, top_n=3, return_documents=True)
    order = list(np.argsort(-expected, kind="stable")[:3])
    assert [r.index for r in res.results] == order
    for r in res.results:
        assert r.relevance_score == pytest.approx(_sigmoid(expected[r.index]), abs=1e-5)
        assert r.document.text == DOCS[r.index]
    # Objects with a text field (and other fields kept), no documents echoed by default.
    objects = [{"text": d, "id": f"d{i}"} for i, d in enumerate(DOCS)]
    res = co.rerank(query=QUERY, documents=objects)
    assert [r.index for r in res.results] == list(np.argsort(-expected, kind="stable"))
    assert all(r.document is None for r in res.results)
    res = co.rerank(query=QUERY, documents=objects, return_documents=True, top_n=1)
    assert res.results[0].document.id == f"d{order[0]}"


def test_cohere_v2_client(served, expected):
    import cohere

    co = cohere.ClientV2(api_key="unused", base_url=served.url)
    res = co.rerank(model="minilm", query=QUERY, documents=DOCS, top_n=2)
    assert [r.index for r in res.results] == list(np.argsort(-expected, kind="stable")[:2])


def test_langchain_cohere_rerank(served, expected):
    lc = pytest.importorskip("langchain_cohere", reason="langchain-cohere is not installed")
    from langchain_core.documents import Document

    reranker = lc.CohereRerank(model="rerank-english-v3.0", base_url=served.url, cohere_api_key="unused", top_n=3)
    out = reranker.compress_documents([Document(page_content=d) for d in DOCS], QUERY)
    best = list(np.argsort(-expected, kind="stable")[:3])
    assert [d.page_content for d in out] == [DOCS[i] for i in best]
    assert out[0].metadata["relevance_score"] == pytest.approx(_sigmoid(expected[best[0]]), abs=1e-5)


def test_tei_shape(served, expected):
    r = httpx.post(
        f"{served.url}/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True, "return_text": True}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["index"] for x in body] == list(np.argsort(-expected, kind="stable"))
    for x in body:
        assert x["score"] == pytest.approx(float(expected[x["index"]]), abs=1e-4)
        assert x["text"] == DOCS[x["index"]]
    r = httpx.post(f"{served.url}/rerank", json={"query": QUERY, "texts": DOCS, "truncate": True})
    assert [x["score"] for x in r.json()] == pytest.approx(sorted(_sigmoid(expected), reverse=True), abs=1e-5)
    # Same engine: the score cache answers a repeated request, and metrics count it.
    assert int(r.headers["x-rerank-cache-hits"]) == len(DOCS)
    metrics = httpx.get(f"{served.url}/_rerank/metrics").text
    assert (
        'es_rerank_rerank_outcomes_total{index="_rerank_api",model="minilm",outcome="reranked",reason="reranked"}'
        in metrics
    )


@pytest.mark.parametrize(
    "body, says",
    [
        ({"query": "", "documents": DOCS}, "query"),
        ({"query": QUERY}, "documents"),
        ({"query": QUERY, "documents": [1, 2]}, "documents[0]"),
        ({"query": QUERY, "documents": [{"title": "x"}]}, "text"),
        ({"query": QUERY, "documents": DOCS, "top_n": 0}, "top_n"),
        ({"query": QUERY, "documents": DOCS, "return_documents": "yes"}, "return_documents"),
    ],
)
def test_cohere_bad_input_is_a_400_the_sdk_raises(served, body, says):
    import cohere
    from cohere.core.api_error import ApiError

    r = httpx.post(f"{served.url}/v1/rerank", json=body)
    assert r.status_code == 400
    assert says in r.json()["message"]
    if body.get("query") == "":  # what the SDK sends as given
        co = cohere.Client(api_key="unused", base_url=served.url)
        with pytest.raises(ApiError) as raised:
            co.rerank(query=body["query"], documents=body["documents"])
        assert raised.value.status_code == 400 and says in raised.value.body["message"]


def test_tei_bad_input(served):
    for body in ({"query": QUERY, "texts": []}, {"query": QUERY, "texts": "x"}, {"texts": DOCS}, [1]):
        r = httpx.post(f"{served.url}/rerank", json=body)
        assert r.status_code == 400
        assert r.json()["error_type"] == "Validation" and r.json()["error"]
    r = httpx.post(f"{served.url}/rerank", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["error"]


def test_unknown_model_under_strict_model(model_dir, serve_app):
    settings = settings_from_dict(
        {
            "upstream": {"url": "http://127.0.0.1:9"},
            "models": {"m": {"path": str(model_dir)}},
            "rerank_api": {"strict_model": True},
        }
    )
    with serve_app(create_app(settings)) as srv:
        r = httpx.post(f"{srv.url}/v1/rerank", json={"model": "rerank-v3.5", "query": QUERY, "documents": DOCS})
        assert r.status_code == 400 and "unknown model" in r.json()["message"]
        assert (
            httpx.post(f"{srv.url}/v1/rerank", json={"model": "m", "query": QUERY, "documents": DOCS}).status_code
            == 200
        )


def test_api_key(model_dir, serve_app):
    import cohere

    settings = settings_from_dict(
        {
            "upstream": {"url": "http://127.0.0.1:9"},
            "models": {"m": {"path": str(model_dir)}},
            "rerank_api": {"api_key": "s3cret"},
        }
    )
    with serve_app(create_app(settings)) as srv:
        assert httpx.post(f"{srv.url}/v1/rerank", json={"query": QUERY, "documents": DOCS}).status_code == 401
        res = cohere.Client(api_key="s3cret", base_url=srv.url).rerank(query=QUERY, documents=DOCS, top_n=1)
        assert len(res.results) == 1


class _Fake:
    """A model that refuses (overloaded), fails, or scores by passage length."""

    def __init__(self, name: str, mode: str) -> None:
        self.name, self.mode = name, mode

    async def ascore(self, query, passages, **kwargs):
        await asyncio.sleep(0)
        if self.mode == "overloaded":
            raise ModelOverloadedError(f"model {self.name!r} is overloaded: test")
        if self.mode == "fails":
            raise RuntimeError("boom")
        return np.array([len(p) / 100 for p in passages], dtype=np.float32)

    def queue_wait_s(self):
        return None

    def info(self):
        return {"name": self.name, "provider": "fake"}

    def close(self):
        pass


@pytest.mark.parametrize(
    "main, fallback, status, reason, model",
    [
        ("overloaded", None, 429, "overloaded", "main"),
        ("fails", None, 503, "rerank_error", "main"),
        ("overloaded", "ok", 200, "fallback_model", "cheap"),
    ],
)
def test_degrades_like_a_search(tiny_model_dir, serve_app, main, fallback, status, reason, model):
    models = {"main": {"path": str(tiny_model_dir)}, "cheap": {"path": str(tiny_model_dir)}}
    api = {"model": "main", **({"fallback_model": "cheap"} if fallback else {})}
    settings = settings_from_dict({"upstream": {"url": "http://127.0.0.1:9"}, "models": models, "rerank_api": api})
    rerankers = {"main": _Fake("main", main), "cheap": _Fake("cheap", fallback or "ok")}
    with serve_app(create_app(settings, rerankers=rerankers)) as srv:
        r = httpx.post(f"{srv.url}/v1/rerank", json={"query": QUERY, "documents": DOCS})
        assert (r.status_code, r.headers["x-rerank-reason"], r.headers["x-rerank-model"]) == (status, reason, model)
        if status == 429:
            assert r.headers["retry-after"] == "1" and "overloaded" in r.json()["message"]
        if status == 200:
            assert r.json()["results"][0]["index"] == int(np.argmax([len(d) for d in DOCS]))
        t = httpx.post(f"{srv.url}/rerank", json={"query": QUERY, "texts": DOCS})
        assert t.status_code == status
        if status != 200:
            assert t.json()["error_type"] in ("Overloaded", "Backend")
