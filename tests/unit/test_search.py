"""The pure rerank flow: plan_search, rebuild_response, window_hits,
on responses recorded from a real OpenSearch 2.19 (see fixtures/README.md)."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from es_rerank.config import IndexSettings
from es_rerank.errors import BadRequestError, UnknownModelError
from es_rerank.plan import DEFAULT_SIZE, SearchPlan, plan_search
from es_rerank.rebuild import rebuild_response, window_hits

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def recorded(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


SPEC = IndexSettings(pattern="docs", window=20, max_window=50)
MODELS = ["ce", "alt"]
QUERY = {"query": {"match": {"text": "heart attack"}}}


def plan(body: Any, params=(), *, spec: IndexSettings = SPEC, header_off: bool = False) -> SearchPlan:
    return plan_search(spec, body, list(params), models=MODELS, default_model="ce", disabled_by_header=header_off)


def q(**extra: Any) -> dict[str, Any]:
    return {**copy.deepcopy(QUERY), **extra}


# --- plan_search: when not to rerank -------------------------------------------

SKIPS: list[tuple[str, dict[str, Any], list[tuple[str, str]], str]] = [
    ("ext-disabled", q(ext={"rerank": {"enabled": False}}), [], "disabled"),
    ("scroll", q(), [("scroll", "1m")], "scroll"),
    ("filter_path", q(), [("filter_path", "hits.hits._id")], "filter_path"),
    ("search_after", q(search_after=[1.0, "3"], sort=["_score", "_id"]), [], "search_after"),
    ("pit", q(pit={"id": "abc", "keep_alive": "1m"}), [], "pit"),
    ("slice", q(slice={"id": 0, "max": 2}), [], "slice"),
    ("sort-field", q(sort=["title"]), [], "sort"),
    ("sort-field-object", q(sort=[{"category": {"order": "desc"}}]), [], "sort"),
    ("sort-score-then-field", q(sort=["_score", "category"]), [], "sort"),
    ("sort-score-asc", q(sort=[{"_score": {"order": "asc"}}]), [], "sort"),
    ("sort-score-asc-short", q(sort={"_score": "asc"}), [], "sort"),
    ("url-sort-field", q(), [("sort", "category:asc")], "sort"),
    ("url-sort-score-asc", q(), [("sort", "_score:asc")], "sort"),
    ("size-0-body", q(size=0, aggs={"c": {"terms": {"field": "category"}}}), [], "size_0"),
    ("size-0-url", q(size=10), [("size", "0")], "size_0"),
    ("from-at-window", q(**{"from": 20}), [], "beyond_window"),
    ("from-past-window-url", q(), [("from", "35")], "beyond_window"),
    ("from-past-ext-window", q(**{"from": 30}, ext={"rerank": {"window_size": 30}}), [], "beyond_window"),
    ("no-query-text-match_all", {"query": {"match_all": {}}}, [], "no_query_text"),
    ("no-query-text-term", {"query": {"term": {"category": "cardio"}}}, [], "no_query_text"),
    ("no-query-at-all", {}, [], "no_query_text"),
    ("blank-query-text", {"query": {"match": {"text": "   "}}}, [], "no_query_text"),
    ("invalid-size", q(size="ten"), [], "invalid_paging"),
    ("negative-from", q(**{"from": -1}), [], "invalid_paging"),
]


@pytest.mark.parametrize("body,params,reason", [c[1:] for c in SKIPS], ids=[c[0] for c in SKIPS])
def test_skip_reasons(body, params, reason):
    before = copy.deepcopy(body)
    p = plan(body, params)
    assert (p.rerank, p.reason) == (False, reason)
    assert body == before
    # Passed through as the client sent it, minus ext.rerank only.
    expected = {k: v for k, v in before.items() if k != "ext"}
    assert p.body == expected
    assert p.params == params
    assert p.added_fields == ()


def test_skip_disabled_by_header():
    p = plan(q(), header_off=True)
    assert (p.rerank, p.reason) == (False, "disabled")
    assert p.body == QUERY


def test_skip_index_not_reranked():
    spec = IndexSettings(pattern="logs-*", rerank=False)
    p = plan(q(size=5, ext={"rerank": {"window_size": 10}}), spec=spec)
    assert (p.rerank, p.reason) == (False, "index_not_reranked")
    assert p.body == q(size=5)  # ext.rerank stripped, nothing else touched


def test_passthrough_keeps_other_ext():
    body = q(ext={"rerank": {"enabled": False}, "other": {"x": 1}})
    p = plan(body, [("scroll", "1m")])
    assert p.body == q(ext={"other": {"x": 1}})


def test_unparsed_body_passes_through_as_is():
    body = [{"not": "an object"}]
    p = plan(body)
    assert (p.rerank, p.reason) == (False, "unparsed_body")
    assert p.body is body


@pytest.mark.parametrize(
    "sort",
    ["_score", ["_score"], {"_score": "desc"}, [{"_score": {"order": "desc"}}], []],
    ids=["str", "list", "short", "object", "empty"],
)
def test_score_desc_sort_is_reranked(sort):
    p = plan(q(sort=sort))
    assert p.rerank, p.reason
    assert p.body["sort"] == sort


@pytest.mark.parametrize("url_sort", ["_score", "_score:desc"])
def test_url_score_desc_sort_is_reranked(url_sort):
    p = plan(q(), [("sort", url_sort)])
    assert p.rerank, p.reason
    assert ("sort", url_sort) in p.params


# --- plan_search: paging --------------------------------------------------------


def test_defaults_rewrite_to_the_window():
    p = plan(q())
    assert (p.rerank, p.reason) == (True, "reranked")
    assert (p.from_, p.size, p.window, p.model, p.query) == (0, DEFAULT_SIZE, 20, "ce", "heart attack")
    assert p.body == {**QUERY, "from": 0, "size": 20, "fields": ["title", "text"]}
    assert p.added_fields == ("title", "text")


@pytest.mark.parametrize(
    "from_,size,upstream_size",
    [(0, 5, 20), (5, 10, 20), (10, 10, 20), (15, 10, 25), (19, 1, 20), (19, 30, 49)],
)
def test_body_paging(from_, size, upstream_size):
    p = plan(q(**{"from": from_, "size": size}))
    assert p.rerank
    assert (p.from_, p.size) == (from_, size)
    assert (p.body["from"], p.body["size"]) == (0, upstream_size)


def test_url_paging_wins_and_is_not_forwarded():
    params = [("pretty", "true"), ("from", "3"), ("routing", "r1"), ("size", "4")]
    p = plan(q(**{"from": 0, "size": 10}), params)
    assert p.rerank
    assert (p.from_, p.size) == (3, 4)
    assert p.params == [("pretty", "true"), ("routing", "r1")]
    assert (p.body["from"], p.body["size"]) == (0, 20)


def test_url_paging_only():
    p = plan(q(), [("from", "18"), ("size", "7")])
    assert (p.from_, p.size, p.body["from"], p.body["size"]) == (18, 7, 0, 25)
    assert p.params == []


def test_last_url_param_wins():
    p = plan(q(), [("size", "3"), ("size", "5")])
    assert p.size == 5


def test_ext_window_model_and_query_text():
    body = q(
        size=5,
        ext={
            "rerank": {"window_size": 50, "model": "alt", "query_context": {"query_text": "  myocardial infarction "}}
        },
    )
    p = plan(body)
    assert (p.window, p.model, p.query) == (50, "alt", "myocardial infarction")
    assert p.body["size"] == 50
    assert "ext" not in p.body


def test_q_param_without_body():
    p = plan(None, [("q", "heart")])
    assert p.rerank and p.query == "heart"
    assert p.body == {"from": 0, "size": 20, "fields": ["title", "text"]}
    assert p.params == [("q", "heart")]


def test_recorded_request_is_what_the_plan_sends():
    """The `fields_no_source` fixture was recorded with the body plan_search builds."""
    requests = json.loads((FIXTURES / "requests.json").read_text())
    spec = IndexSettings(pattern="docs", window=30)
    p = plan(q(size=5, _source=False), spec=spec)
    assert {k: v for k, v in p.body.items() if k != "from"} == requests["fields_no_source"]


# --- plan_search: the fields the model reads ----------------------------------


@pytest.mark.parametrize(
    "extra,fields,added",
    [
        ({}, ["title", "text"], ("title", "text")),
        ({"fields": ["*"]}, ["*"], ()),
        ({"fields": ["t*"]}, ["t*"], ()),
        ({"fields": ["title"]}, ["title", "text"], ("text",)),
        ({"fields": ["category"]}, ["category", "title", "text"], ("title", "text")),
        ({"fields": [{"field": "ti*"}]}, [{"field": "ti*"}, "text"], ("text",)),
        ({"docvalue_fields": ["text"]}, ["title"], ("title",)),
        ({"docvalue_fields": [{"field": "*"}]}, None, ()),
        ({"fields": ["title"], "docvalue_fields": ["text"]}, ["title"], ()),
        ({"fields": ["TITLE"]}, ["TITLE", "title", "text"], ("title", "text")),  # case-sensitive
    ],
    ids=["none", "star", "prefix", "one", "other", "object", "docvalue", "docvalue-star", "both", "case"],
)
def test_fields_added_only_when_not_covered(extra, fields, added):
    body = q(**copy.deepcopy(extra))
    before = copy.deepcopy(body)
    p = plan(body)
    assert p.rerank
    assert p.body.get("fields") == fields
    assert p.added_fields == added
    assert p.body.get("docvalue_fields") == extra.get("docvalue_fields")
    assert body == before


@pytest.mark.parametrize("source", [False, ["category"], {"excludes": ["text"]}, "title"])
def test_source_filtering_untouched(source):
    p = plan(q(_source=source))
    assert p.body["_source"] == source
    assert p.added_fields == ("title", "text")


def test_dotted_model_fields_matched_by_client_patterns():
    spec = IndexSettings(pattern="docs", fields=["meta.author", "title"])
    p = plan(q(fields=["meta.*"]), spec=spec)
    assert p.added_fields == ("title",)
    assert p.body["fields"] == ["meta.*", "title"]


def test_string_fields_is_left_for_opensearch_to_reject():
    # OpenSearch 2.19 answers {"fields": "title"} with 400 parsing_exception
    # "Unknown key for a VALUE_STRING in [fields]". plan_search turns it into
    # ["t","i","t","l","e","title","text"], which OpenSearch accepts: the proxy
    # answers 200 where OpenSearch answers 400.
    p = plan(q(fields="title"))
    assert not p.rerank or p.body["fields"] == "title"


# --- plan_search: ext.rerank errors -------------------------------------------


@pytest.mark.parametrize(
    "ext,error,words",
    [
        ({"window": 10}, BadRequestError, "unknown option"),
        ({"enabled": False, "typo": 1}, BadRequestError, "typo"),
        ({"enabled": "no"}, BadRequestError, "enabled"),
        ({"window_size": "10"}, BadRequestError, "window_size"),
        ({"window_size": 10.0}, BadRequestError, "window_size"),
        ({"window_size": 2.5}, BadRequestError, "window_size"),
        ({"window_size": True}, BadRequestError, "window_size"),
        ({"window_size": None}, BadRequestError, "window_size"),
        ({"window_size": 0}, BadRequestError, "window_size"),
        ({"window_size": -5}, BadRequestError, "window_size"),
        ({"window_size": 51}, BadRequestError, "maximum of 50"),
        ({"model": "nope"}, UnknownModelError, "nope"),
        ({"model": None}, UnknownModelError, "unknown model"),
    ],
)
def test_ext_errors(ext, error, words):
    body = q(ext={"rerank": ext})
    before = copy.deepcopy(body)
    with pytest.raises(BadRequestError) as info:
        plan(body)
    assert type(info.value) is error
    assert info.value.status == 400
    assert words in info.value.reason
    assert info.value.to_body()["error"]["type"] == error.type
    assert body == before


@pytest.mark.parametrize("ext", [[], "rerank", {"rerank": "on"}])
def test_malformed_ext_is_a_bad_request(ext):
    with pytest.raises(BadRequestError):
        plan(q(ext=ext))


def test_window_size_equal_to_max_is_allowed():
    assert plan(q(ext={"rerank": {"window_size": 50}})).window == 50


def test_plan_never_mutates_input():
    body = q(
        **{"from": 2, "size": 3},
        fields=["category"],
        _source=["title"],
        ext={"rerank": {"window_size": 30, "model": "alt"}, "other": {"a": [1]}},
    )
    params = [("from", "1"), ("pretty", "")]
    before, params_before = copy.deepcopy(body), list(params)
    p = plan(body, params)
    assert p.rerank
    assert body == before and params == params_before
    assert p.body["ext"] == {"other": {"a": [1]}}
    assert p.body["fields"] is not body["fields"]


# --- window_hits and rebuild_response on recorded responses -------------------


def mkplan(*, window: int = 30, from_: int = 0, size: int = 30, added: tuple[str, ...] = ()) -> SearchPlan:
    return SearchPlan(
        rerank=True,
        reason="reranked",
        body={},
        params=[],
        query="heart attack",
        model="ce",
        window=window,
        from_=from_,
        size=size,
        added_fields=added,
    )


def ids(hits) -> list[str]:
    return [h["_id"] for h in hits]


def scores_for(n: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=n).astype(np.float32)


def test_window_hits():
    resp = recorded("match_agg_highlight")
    assert window_hits(mkplan(window=10), resp) == resp["hits"]["hits"][:10]
    assert len(window_hits(mkplan(window=100), resp)) == 30
    assert window_hits(mkplan(), recorded("no_hits")) == []
    assert window_hits(mkplan(), {}) == []


def test_order_follows_scores():
    resp = recorded("match_agg_highlight")
    before = copy.deepcopy(resp)
    first = resp["hits"]["hits"]
    scores = scores_for(30)
    out = rebuild_response(mkplan(), resp, scores)
    order = sorted(range(30), key=lambda i: -scores[i])
    assert ids(out["hits"]["hits"]) == [first[i]["_id"] for i in order]
    for hit, i in zip(out["hits"]["hits"], order):
        assert hit["_score"] == pytest.approx(float(scores[i]))
        assert type(hit["_score"]) is float
        assert hit["_rerank"] == {"first_stage_score": first[i]["_score"], "first_stage_rank": i + 1}
        assert hit["_source"] == first[i]["_source"]
        assert hit["highlight"] == first[i]["highlight"]
    assert out["hits"]["max_score"] == pytest.approx(float(scores.max()))
    assert out["hits"]["max_score"] == out["hits"]["hits"][0]["_score"]
    assert resp == before


def test_ties_keep_first_stage_order():
    resp = recorded("match_agg_highlight")
    first = ids(resp["hits"]["hits"])
    scores = np.array([1.0, 2.0] * 15)
    out = rebuild_response(mkplan(), resp, scores)
    assert ids(out["hits"]["hits"]) == first[1::2] + first[0::2]


def test_json_serialisable_and_plain_types():
    out = rebuild_response(mkplan(), recorded("match_agg_highlight"), scores_for(30))
    json.dumps(out)
    assert type(out["hits"]["max_score"]) is float
    assert all(type(h["_rerank"]["first_stage_rank"]) is int for h in out["hits"]["hits"])


def test_first_stage_can_be_hidden():
    out = rebuild_response(mkplan(), recorded("match_agg_highlight"), scores_for(30), expose_first_stage=False)
    assert all("_rerank" not in h for h in out["hits"]["hits"])


@pytest.mark.parametrize("from_,size", [(0, 10), (10, 5), (25, 10), (29, 1), (30, 10)])
def test_page_slicing(from_, size):
    resp = recorded("match_agg_highlight")
    first = resp["hits"]["hits"]
    scores = scores_for(30, seed=from_)
    order = sorted(range(30), key=lambda i: -scores[i])
    out = rebuild_response(mkplan(from_=from_, size=size), resp, scores)
    assert ids(out["hits"]["hits"]) == [first[i]["_id"] for i in order][from_ : from_ + size]
    assert out["hits"]["max_score"] == pytest.approx(float(scores.max()))  # of the window, not the page


def test_page_straddling_the_window_end():
    """window 10, from 5, size 10: OpenSearch was asked for 15 hits; 10-14 stay first-stage."""
    p = plan(q(**{"from": 5, "size": 10}), spec=IndexSettings(pattern="docs", window=10))
    assert (p.window, p.from_, p.size, p.body["size"]) == (10, 5, 10, 15)
    resp = recorded("match_agg_highlight")
    resp["hits"]["hits"] = resp["hits"]["hits"][:15]
    first = resp["hits"]["hits"]
    scores = np.arange(10, dtype=np.float32)  # reverses the window
    out = rebuild_response(dataclasses.replace(p, added_fields=()), resp, scores)
    hits = out["hits"]["hits"]
    assert ids(hits) == [first[i]["_id"] for i in (4, 3, 2, 1, 0)] + ids(first[10:15])
    for hit, orig in zip(hits[5:], first[10:15]):
        assert hit == orig  # first-stage score and no _rerank
    assert out["hits"]["max_score"] == 9.0


def test_added_fields_removed_and_empty_fields_dropped():
    resp = recorded("fields_no_source")
    before = copy.deepcopy(resp)
    out = rebuild_response(mkplan(size=10, added=("title", "text")), resp, scores_for(30))
    assert len(out["hits"]["hits"]) == 10
    for hit in out["hits"]["hits"]:
        assert "fields" not in hit and "_source" not in hit
        assert set(hit) == {"_index", "_id", "_score", "_rerank"}
    assert resp == before


def test_client_asked_fields_kept():
    resp = recorded("fields_mixed")  # fields: category (client) + title, text (added)
    first = {h["_id"]: h for h in resp["hits"]["hits"]}
    before = copy.deepcopy(resp)
    out = rebuild_response(mkplan(window=18, size=18, added=("title", "text")), resp, scores_for(18))
    assert len(out["hits"]["hits"]) == 18
    for hit in out["hits"]["hits"]:
        orig = first[hit["_id"]]
        assert hit["fields"] == {"category": orig["fields"]["category"]}
        assert hit["_source"] == orig["_source"]
    assert resp == before


def test_fields_untouched_when_nothing_was_added():
    resp = recorded("fields_no_source")
    out = rebuild_response(mkplan(), resp, None)
    assert out["hits"]["hits"] == resp["hits"]["hits"]


def test_added_fields_removed_in_fallback_too():
    out = rebuild_response(mkplan(added=("title", "text")), recorded("fields_mixed"), None)
    assert all(set(h["fields"]) == {"category"} for h in out["hits"]["hits"])


@pytest.mark.parametrize("from_,size", [(0, 30), (0, 10), (7, 5), (28, 10)])
def test_fallback_keeps_first_stage_order(from_, size):
    resp = recorded("match_agg_highlight")
    before = copy.deepcopy(resp)
    out = rebuild_response(mkplan(from_=from_, size=size), resp, None, proxy_ms=3)
    assert out["hits"]["hits"] == resp["hits"]["hits"][from_ : from_ + size]
    assert out["hits"]["max_score"] == resp["hits"]["max_score"]
    assert out["took"] == resp["took"] + 3
    assert resp == before


def test_opensearch_parts_are_kept_as_they_are():
    resp = recorded("match_agg_highlight")
    out = rebuild_response(mkplan(size=10), resp, scores_for(30), proxy_ms=12)
    assert list(out) == list(resp)
    assert out["took"] == resp["took"] + 12
    assert out["aggregations"] is resp["aggregations"]
    assert out["hits"]["total"] is resp["hits"]["total"]
    assert out["_shards"] is resp["_shards"]
    assert out["timed_out"] is resp["timed_out"]
    assert list(out["hits"]) == list(resp["hits"])


def test_took_not_an_int_is_left_alone():
    resp = {**recorded("no_hits"), "took": "n/a"}
    assert rebuild_response(mkplan(), resp, None, proxy_ms=5)["took"] == "n/a"


def test_no_hits():
    resp = recorded("no_hits")
    before = copy.deepcopy(resp)
    for scores in (np.array([], dtype=np.float32), None):
        out = rebuild_response(mkplan(added=("title", "text")), resp, scores, proxy_ms=1)
        assert out["hits"] == resp["hits"]
        assert out["hits"]["max_score"] is None
        assert out["aggregations"] is resp["aggregations"]
        assert out["took"] == resp["took"] + 1
    assert resp == before


@pytest.mark.parametrize("n", [0, 29, 31])
def test_wrong_number_of_scores(n):
    with pytest.raises(ValueError, match=f"{n} scores for 30 hits"):
        rebuild_response(mkplan(), recorded("match_agg_highlight"), np.zeros(n))


def test_scores_for_the_window_only():
    resp = recorded("match_agg_highlight")
    with pytest.raises(ValueError, match="30 scores for 10 hits"):
        rebuild_response(mkplan(window=10), resp, np.zeros(30))
    out = rebuild_response(mkplan(window=10, size=30), resp, np.zeros(10))
    assert ids(out["hits"]["hits"]) == ids(resp["hits"]["hits"])


def test_scores_without_hits_raise():
    # rebuild_response checks len(scores) only when the window holds hits (k > 0):
    # one score for an empty answer returns normally instead of raising ValueError.
    with pytest.raises(ValueError):
        rebuild_response(mkplan(), recorded("no_hits"), np.array([1.0]))
