"""The compare page's files, served by es-rerank itself under /_rerank/ui/ (the page in a
browser: tests/e2e/test_browser_compare.py)."""

from __future__ import annotations

import httpx
import pytest
from faulty_upstream import FaultyUpstream

from es_rerank import create_app, settings_from_dict

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def proxy(tiny_model_dir, serve_app):
    with FaultyUpstream() as upstream:
        settings = settings_from_dict(
            {
                "upstream": {"url": upstream.url},
                "models": {"tiny": {"path": str(tiny_model_dir)}},
                "indices": [{"pattern": "x"}],
            },
            env={},
        )
        with serve_app(create_app(settings)) as served:
            served.upstream = upstream
            yield served


def test_the_page_and_its_files(proxy):
    bare = httpx.get(f"{proxy.url}/_rerank/ui")
    assert bare.status_code == 301 and bare.headers["location"] == "/_rerank/ui/"
    page = httpx.get(f"{proxy.url}/_rerank/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="compare.js">' in page.text
    for name, media in (("compare.js", "text/javascript"), ("compare.css", "text/css")):
        answer = httpx.get(f"{proxy.url}/_rerank/ui/{name}")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(media)
    assert "x-rerank-enabled" in httpx.get(f"{proxy.url}/_rerank/ui/compare.js").text


@pytest.mark.parametrize("path", ["/_rerank/ui/nope.js", "/_rerank/ui/..%2F..%2Fconfig.py", "/_rerank/ui/a/b"])
def test_nothing_else_is_served_and_nothing_reaches_opensearch(proxy, path):
    before = len(proxy.upstream.requests)
    answer = httpx.get(f"{proxy.url}{path}")
    assert answer.status_code == 404 and answer.json()["error"]["type"] == "rerank_resource_not_found_exception"
    assert len(proxy.upstream.requests) == before
