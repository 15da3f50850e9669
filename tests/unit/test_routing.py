"""es_rerank.routing.route: (method, raw path, settings) -> Route, without a server."""

from __future__ import annotations

import pytest

from es_rerank.config import settings_from_dict
from es_rerank.routing import Route, RouteKind, route

SETTINGS = settings_from_dict(
    {
        "upstream": {"url": "http://127.0.0.1:9200"},
        "models": {"m": {"path": "/nonexistent/model"}},
        "indices": [{"pattern": "docs*", "model": "m", "fields": ["text"]}],
    },
    env={},
)


def r(method: str, path: str) -> Route:
    return route(method, path.encode("latin-1"), SETTINGS)


def test_a_search_on_a_configured_index_carries_its_settings():
    found = r("POST", "/docs-2024/_search?pretty")
    assert found.kind is RouteKind.SEARCH and found.spec is not None and found.spec.pattern == "docs*"
    assert r("GET", "/docs/_search").kind is RouteKind.SEARCH


def test_a_search_on_another_index_or_on_every_index_has_no_settings():
    assert r("POST", "/other/_search") == Route(RouteKind.SEARCH, spec=None)
    assert r("POST", "/_search") == Route(RouteKind.SEARCH)


def test_msearch_with_and_without_a_path_index():
    assert r("POST", "/_msearch") == Route(RouteKind.MSEARCH)
    assert r("POST", "/docs/_msearch") == Route(RouteKind.MSEARCH, target="docs")


@pytest.mark.parametrize(
    "method, path",
    [
        ("PUT", "/docs/_search"),  # a search is GET or POST only
        ("DELETE", "/docs"),
        ("POST", "/docs/_doc/1"),
        ("GET", "/_cat/indices"),
        ("POST", "/_all/_search/template"),
        ("POST", "/_cluster/_search"),  # a system path is never an index
        ("POST", "/a/b/_search"),
        ("POST", "/_cluster/_msearch"),
    ],
)
def test_everything_else_passes_through(method, path):
    assert r(method, path).kind is RouteKind.PASSTHROUGH


def test_own_endpoints_and_the_encoded_slash():
    assert r("GET", "/_rerank/health") == Route(RouteKind.OWN, own_path="health")
    assert r("GET", "/_rerank/metrics?x=1") == Route(RouteKind.OWN, own_path="metrics")
    assert r("GET", "/_rerank/ui/app.js") == Route(RouteKind.OWN, own_path="ui/app.js")
    assert r("POST", "/_rerank/ubi/events") == Route(RouteKind.OWN, own_path="ubi/events")
    # one segment "_rerank/health", as OpenSearch reads it: not es-rerank's own endpoint
    assert r("GET", "/_rerank%2Fhealth").kind is RouteKind.PASSTHROUGH


def test_percent_encoded_segments_are_decoded_one_by_one():
    assert r("POST", "/docs%2D1/_search").spec is not None  # "docs-1"
    assert r("POST", "/%5Fsearch").kind is RouteKind.SEARCH  # "_search"
