"""Real search UIs in headless Chromium against es-rerank, with CORS on es-rerank only.

Searchkit (InstantSearch, ``_msearch``), Elastic Search UI's Elasticsearch connector
(``_search`` with ``x-elastic-client-meta``) and ReactiveSearch 3.x (``_msearch`` as
NDJSON), each built with npm into a page (tests/e2e/uipages.py) served from another
loopback port, so every request is cross-origin and OpenSearch's own CORS (off) never
helps. Each test checks what the page shows and what its code could read:

- the hits in reranked order, and ``x-rerank: reranked`` read by page code;
- the total and the facet counts equal OpenSearch's own for the very request the page
  sent (replayed direct);
- an error of es-rerank's own (OpenSearch down: 502) readable by page code, not a
  network error.

Every wait is on something the page does (bounded, never a measure of speed). The
compare page (``/_rerank/ui/``) is driven the same way at the end.
"""

from __future__ import annotations

import gzip
import itertools
import json
import socket
import time
from pathlib import Path

import httpx
import pytest
from opensearchpy import OpenSearch
from uipages import CHROMIUM, StaticSite, answers, build, skip_unless_browser

from es_rerank import create_app, settings_from_dict

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
INDEX = "rr-ui"
CATEGORIES = ["biology", "medicine", "chemistry", "physics"]
QUERY = "vitamin D deficiency"
WAIT_MS = 120_000  # an upper bound on events (a build, a model run on a loaded machine), never a measure

# Which input to type into, and how each page shows its total and facets.
UIS = {
    "searchkit": {"input": "#searchbox input", "total": "#stats", "facets": ".ais-RefinementList-item"},
    "searchui": {"input": "#q", "total": "#stats", "facets": "#facets .facet"},
    "reactivesearch": {"input": "#hits-root input", "total": "#rs-stats", "facets": "#hits-root .facet"},
}


def _docs(n: int = 300):
    with gzip.open(ROOT / "demo" / "scifact" / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        for i, line in enumerate(itertools.islice(f, n)):
            doc = json.loads(line)
            yield {
                "_index": INDEX,
                "_id": doc["_id"],
                "title": doc["title"],
                "text": doc["text"],
                "category": CATEGORIES[i % 4],
            }


@pytest.fixture(scope="module")
def direct(opensearch_url):
    from opensearchpy.helpers import bulk

    client = OpenSearch(opensearch_url, timeout=60)
    client.indices.delete(index=INDEX, ignore_unavailable=True)
    client.indices.create(
        index=INDEX,
        body={
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": {
                "properties": {"title": {"type": "text"}, "text": {"type": "text"}, "category": {"type": "keyword"}}
            },
        },
    )
    bulk(client, _docs(), refresh=True)
    yield client
    client.indices.delete(index=INDEX, ignore_unavailable=True)


def _settings(upstream: str, model_dir) -> object:
    return settings_from_dict(
        {
            "upstream": {"url": upstream, "timeout": 20, "connect_timeout": 2},
            "server": {"cors": {"enabled": True, "allow_origin": "/http:\\/\\/127\\.0\\.0\\.1(:[0-9]+)?/"}},
            "models": {"tiny": {"path": str(model_dir)}},
            "indices": [{"pattern": INDEX, "model": "tiny", "fields": ["title", "text"], "window": 20}],
        },
        env={},
    )


@pytest.fixture(scope="module")
def proxy(direct, opensearch_url, tiny_model_dir, serve_app):
    with serve_app(create_app(_settings(opensearch_url, tiny_model_dir))) as served:
        yield served


@pytest.fixture(scope="module")
def proxy_upstream_down(tiny_model_dir, serve_app):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with serve_app(create_app(_settings(f"http://127.0.0.1:{closed}", tiny_model_dir))) as served:
        yield served


@pytest.fixture(scope="module")
def browser():
    skip_unless_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _main_result(body: dict) -> dict | None:
    """The reranked result of an answer (an _msearch's item with reranked hits, or the _search itself)."""
    results = body.get("responses", [body]) if isinstance(body, dict) else []
    return next(
        (r for r in results if isinstance(r, dict) and any("_rerank" in h for h in r.get("hits", {}).get("hits", []))),
        None,
    )


def _buckets(aggs) -> list[tuple[str, int]] | None:
    """The category buckets anywhere in an aggregations tree."""
    if isinstance(aggs, dict):
        buckets = aggs.get("buckets")
        if isinstance(buckets, list) and buckets and all(b.get("key") in CATEGORIES for b in buckets):
            return sorted((b["key"], b["doc_count"]) for b in buckets)
        for value in aggs.values():
            found = _buckets(value)
            if found:
                return found
    return None


def _replay(direct_url: str, answer: dict) -> dict:
    """The page's own request, sent straight to OpenSearch (no es-rerank)."""
    path = "/" + answer["url"].split("/", 3)[3]
    msearch = "_msearch" in path
    response = httpx.post(
        f"{direct_url}{path}", content=answer["sent"],
        headers={"Content-Type": "application/x-ndjson" if msearch else "application/json"}, timeout=60,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()


def _open(browser, name: str, es_url: str):
    site = StaticSite(build(name)).__enter__()
    page = browser.new_page()
    page.goto(f"{site.url}/index.html?es={es_url}&index={INDEX}")
    page.wait_for_selector(UIS[name]["input"], timeout=WAIT_MS)
    return site, page


@pytest.mark.parametrize("name", list(UIS))
def test_a_search_ui_shows_reranked_hits_with_opensearchs_totals_and_facets(browser, proxy, opensearch_url, name):
    site, page = _open(browser, name, proxy.url)
    try:
        page.fill(UIS[name]["input"], QUERY)
        page.wait_for_function(
            "() => window.__answers.some(a => a.rerank === 'reranked')", timeout=WAIT_MS
        )  # fmt: skip
        answer = next(a for a in reversed(answers(page)) if a["rerank"] == "reranked")
        assert answer["status"] == 200 and answer["error"] is None
        result = _main_result(answer["body"])
        assert result is not None, answer["body"]
        ids = [h["_id"] for h in result["hits"]["hits"]]
        # The page renders what es-rerank answered: the reranked order.
        page.wait_for_function(
            "ids => JSON.stringify([...document.querySelectorAll('.hit')].map(e => e.dataset.id)) === JSON.stringify(ids)",
            arg=ids, timeout=WAIT_MS,
        )  # fmt: skip
        first_stage = [h["_rerank"]["first_stage_rank"] for h in result["hits"]["hits"]]
        assert first_stage != sorted(first_stage)  # some hit moved: not OpenSearch's order
        # Totals and facet counts are OpenSearch's own for the very request the page sent.
        plain = _replay(opensearch_url, answer)
        direct_result = plain["responses"][answer["body"]["responses"].index(result)] if "responses" in plain else plain
        total = direct_result["hits"]["total"]
        total = total["value"] if isinstance(total, dict) else total
        page.wait_for_function(
            "([sel, text]) => (document.querySelector(sel) || {}).textContent?.includes(text)",
            arg=[UIS[name]["total"], f"total:{total}"], timeout=WAIT_MS,
        )  # fmt: skip
        everything = plain.get("responses", [plain])
        direct_buckets = next(b for b in (_buckets(r.get("aggregations")) for r in everything) if b)
        shown = page.eval_on_selector_all(UIS[name]["facets"], "els => els.map(e => e.textContent)")
        assert sorted(_label_count(text) for text in shown) == direct_buckets
    finally:
        page.close()
        site.__exit__()


def _label_count(text: str) -> tuple[str, int]:
    text = text.strip()
    if ":" in text:
        label, count = text.rsplit(":", 1)
    else:  # InstantSearch: "biology75"
        label = text.rstrip("0123456789,").strip()
        count = text[len(label) :]
    return label.strip(), int(count.replace(",", "").strip())


@pytest.mark.parametrize("name", list(UIS))
def test_an_error_of_es_rerank_is_readable_by_the_page(browser, proxy_upstream_down, name):
    site, page = _open(browser, name, proxy_upstream_down.url)
    try:
        page.fill(UIS[name]["input"], QUERY)
        page.wait_for_function("() => window.__answers.some(a => a.status === 502)", timeout=WAIT_MS)
        answer = next(a for a in answers(page) if a["status"] == 502)
        assert answer["error"] is None  # not "Failed to fetch": CORS headers are on the error too
        assert answer["body"]["error"]["type"] == "rerank_upstream_unavailable_exception"
    finally:
        page.close()
        site.__exit__()


def test_the_compare_page_shows_both_columns(browser, proxy, direct):
    skip_unless_browser()
    page = browser.new_page()
    try:
        page.goto(f"{proxy.url}/_rerank/ui/?index={INDEX}&q={QUERY.replace(' ', '+')}")
        page.wait_for_function("() => ['done', 'error'].includes(document.body.dataset.state)", timeout=WAIT_MS)
        assert page.evaluate("document.body.dataset.state") == "done", page.inner_text("#status")
        bm25 = page.eval_on_selector_all("#bm25-hits li", "els => els.map(e => e.dataset.id)")
        reranked = page.eval_on_selector_all("#reranked-hits li", "els => els.map(e => e.dataset.id)")
        plain = direct.search(
            index=INDEX, body={"size": 10, "query": {"multi_match": {"query": QUERY, "fields": ["*"], "lenient": True}}}
        )
        assert bm25 == [h["_id"] for h in plain["hits"]["hits"]]
        assert sorted(bm25) != [] and reranked != bm25
        assert "x-rerank: reranked" in page.inner_text("#reranked-meta")
        assert "window 20" in page.inner_text("#reranked-meta") and "model tiny" in page.inner_text("#reranked-meta")
        moved = page.eval_on_selector_all("#reranked-hits li .move", "els => els.map(e => e.textContent)")
        assert moved and all("was #" in m for m in moved)
    finally:
        page.close()


@pytest.fixture(scope="module")
def proxy_in_experiment(direct, opensearch_url, tiny_model_dir, serve_app):
    ubi = {"queries_index": "rr-ui-ubi-queries", "events_index": "rr-ui-ubi-events"}
    settings = settings_from_dict(
        {
            "upstream": {"url": opensearch_url, "timeout": 20},
            "models": {"tiny": {"path": str(tiny_model_dir)}},
            "indices": [{"pattern": INDEX, "model": "tiny", "fields": ["title", "text"], "window": 20}],
            "experiments": [
                {
                    "name": "compare", "indices": [INDEX], "mode": "ab", "salt": "s", "keys": ["cookie:es_rerank_client"],
                    "arms": [{"name": "rr", "kind": "rerank", "weight": 100}, {"name": "b", "kind": "bm25", "weight": 0}],
                }
            ],
            "ubi": ubi,
        },
        env={},
    )  # fmt: skip
    with serve_app(create_app(settings)) as served:
        yield served
    for index in ubi.values():
        direct.indices.delete(index=index, ignore_unavailable=True)


def test_the_compare_page_posts_clicks_as_ubi_events_under_an_experiment(browser, proxy_in_experiment, direct):
    page = browser.new_page()
    try:
        page.goto(f"{proxy_in_experiment.url}/_rerank/ui/?index={INDEX}&q={QUERY.replace(' ', '+')}")
        page.wait_for_function("() => ['done', 'error'].includes(document.body.dataset.state)", timeout=WAIT_MS)
        assert "arm rr" in page.inner_text("#reranked-meta"), page.inner_text("#reranked-meta")
        first = page.eval_on_selector("#reranked-hits li", "e => e.dataset.id")
        page.click("#reranked-hits li .title")
        page.wait_for_function("() => document.body.dataset.clicks === '1'", timeout=WAIT_MS)
        direct.indices.refresh(index="rr-ui-ubi-events")
        events = direct.search(index="rr-ui-ubi-events", body={"query": {"term": {"action_name": "click"}}})["hits"][
            "hits"
        ]
        assert [e["_source"]["event_attributes"]["object"]["object_id"] for e in events] == [first]
        assert events[0]["_source"]["event_attributes"]["position"]["ordinal"] == 0
        # The click belongs to the search recorded as served (written by the recorder's background flush).
        query_id = events[0]["_source"]["query_id"]
        deadline = time.monotonic() + WAIT_MS / 1000
        while True:
            direct.indices.refresh(index="rr-ui-ubi-queries", ignore_unavailable=True)
            found = direct.search(
                index="rr-ui-ubi-queries", body={"query": {"term": {"query_id": query_id}}}, ignore_unavailable=True
            )
            if found["hits"]["total"]["value"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert found["hits"]["total"]["value"] == 1
    finally:
        page.close()
