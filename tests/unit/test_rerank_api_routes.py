"""The rerank API's routes and request parsing (pure parts of es_rerank/rerank_api.py)."""

from __future__ import annotations

import numpy as np
import pytest

from es_rerank.config import settings_from_dict
from es_rerank.rerank_api import COHERE_V1, COHERE_V2, TEI, ApiError, RerankApi, relevance
from es_rerank.routing import RouteKind, route

SETTINGS = settings_from_dict(
    {"models": {"m": {"path": "/models/m"}, "cheap": {"path": "/models/c"}}, "default_model": "m",
     "rerank_api": {"aliases": {"rerank-v3.5": "cheap"}}}
)  # fmt: skip


@pytest.mark.parametrize(
    "method, path, kind, api",
    [
        ("POST", b"/v1/rerank", RouteKind.RERANK_API, COHERE_V1),
        ("POST", b"/v2/rerank", RouteKind.RERANK_API, COHERE_V2),
        ("POST", b"/rerank", RouteKind.RERANK_API, TEI),
        ("GET", b"/rerank", RouteKind.PASSTHROUGH, ""),  # GET /rerank: an index named rerank
        ("PUT", b"/rerank", RouteKind.PASSTHROUGH, ""),
        ("POST", b"/rerank/_search", RouteKind.SEARCH, ""),
        ("POST", b"/v1/rerank/x", RouteKind.PASSTHROUGH, ""),
    ],
)
def test_routes(method, path, kind, api):
    where = route(method, path, SETTINGS)
    assert where.kind is kind and where.api == api


def test_disabled_or_no_models_passes_through():
    off = settings_from_dict({"models": {"m": {"path": "/m"}}, "rerank_api": {"enabled": False}})
    assert route("POST", b"/v1/rerank", off).kind is RouteKind.PASSTHROUGH
    assert route("POST", b"/rerank", settings_from_dict({})).kind is RouteKind.PASSTHROUGH


def _api() -> RerankApi:
    return RerankApi(SETTINGS, scorer=None, rerankers={"m": object(), "cheap": object()})  # type: ignore[arg-type]


def test_models_and_aliases():
    api = _api()
    assert api.parse(COHERE_V1, {"query": "q", "documents": ["a"]}).model == "m"
    assert api.parse(COHERE_V1, {"query": "q", "documents": ["a"], "model": "rerank-v3.5"}).model == "cheap"
    assert api.parse(COHERE_V1, {"query": "q", "documents": ["a"], "model": "unknown"}).model == "m"


def test_documents_objects_and_rank_fields():
    api = _api()
    req = api.parse(COHERE_V1, {"query": "q", "documents": [{"text": "a", "id": 1}, "b"], "top_n": 5})
    assert req.texts == ["a", "b"] and req.top_n == 2
    req = api.parse(
        COHERE_V1, {"query": "q", "documents": [{"title": "T", "body": "B"}], "rank_fields": ["title", "body"]}
    )
    assert req.texts == ["title: T\nbody: B"]
    with pytest.raises(ApiError, match="must be a list of strings"):
        api.parse(COHERE_V2, {"query": "q", "documents": [{"text": "a"}]})


def test_tei_fields():
    req = _api().parse(TEI, {"query": "q", "texts": ["a", "b"], "raw_scores": True, "return_text": True})
    assert req.raw_scores and req.return_documents and req.top_n == 2
    with pytest.raises(ApiError, match="raw_scores"):
        _api().parse(TEI, {"query": "q", "texts": ["a"], "raw_scores": "yes"})


def test_relevance_is_a_sigmoid():
    np.testing.assert_allclose(relevance(np.array([0.0, 100.0, -100.0])), [0.5, 1.0, 0.0], atol=1e-12)
