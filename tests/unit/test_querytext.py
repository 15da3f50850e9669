"""Query text extraction: ext.rerank, configured path, q, and the query DSL."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from es_rerank.errors import BadRequestError
from es_rerank.querytext import (
    clean_query_syntax,
    dsl_text,
    query_text,
    rerank_ext,
    resolve_path,
    strip_rerank_ext,
)

# --- the query DSL -----------------------------------------------------------

DSL_CASES: list[tuple[str, Any, str | None]] = [
    # full-text queries
    ("match-short", {"match": {"title": "heart attack"}}, "heart attack"),
    ("match-long", {"match": {"title": {"query": "heart attack", "operator": "and"}}}, "heart attack"),
    ("match_phrase", {"match_phrase": {"body": {"query": "stem cells", "slop": 2}}}, "stem cells"),
    ("match_phrase-short", {"match_phrase": {"body": "stem cells"}}, "stem cells"),
    ("match_phrase_prefix", {"match_phrase_prefix": {"title": {"query": "quick brown f"}}}, "quick brown f"),
    ("match_bool_prefix", {"match_bool_prefix": {"title": "quick brown f"}}, "quick brown f"),
    ("multi_match", {"multi_match": {"query": "vitamin d", "fields": ["title^2", "body"]}}, "vitamin d"),
    (
        "combined_fields",
        {"combined_fields": {"query": "database systems", "fields": ["title", "abstract"]}},
        "database systems",
    ),
    (
        "query_string",
        {"query_string": {"query": "title:(vitamin AND deficiency) OR rickets^2"}},
        "vitamin deficiency rickets",
    ),
    (
        "simple_query_string",
        {"simple_query_string": {"query": '"fried eggs" +(eggplant | potato) -frittata'}},
        "fried eggs eggplant potato",
    ),
    (
        "intervals-match",
        {"intervals": {"body": {"match": {"query": "my favorite food", "ordered": True}}}},
        "my favorite food",
    ),
    (
        "intervals-all_of",
        {
            "intervals": {
                "body": {
                    "all_of": {
                        "intervals": [
                            {"match": {"query": "hot water"}},
                            {
                                "any_of": {
                                    "intervals": [{"match": {"query": "cold porridge"}}, {"prefix": {"prefix": "por"}}]
                                }
                            },
                        ]
                    }
                }
            }
        },
        "hot water cold porridge",
    ),
    ("neural", {"neural": {"embedding": {"query_text": "wild west", "model_id": "m", "k": 10}}}, "wild west"),
    # whitespace collapsed
    ("whitespace", {"match": {"title": "  heart \n attack "}}, "heart attack"),
    # nothing textual
    ("match_all", {"match_all": {}}, None),
    ("match_none", {"match_none": {}}, None),
    ("term", {"term": {"status": "published"}}, None),
    ("terms", {"terms": {"tags": ["a", "b"]}}, None),
    ("range", {"range": {"year": {"gte": 2020}}}, None),
    ("ids", {"ids": {"values": ["1", "2"]}}, None),
    ("exists", {"exists": {"field": "title"}}, None),
    ("prefix", {"prefix": {"title": "qui"}}, None),
    ("knn", {"knn": {"vec": {"vector": [0.1, 0.2], "k": 3}}}, None),
    ("empty", {}, None),
    ("none", None, None),
    ("not-an-object", "match_all", None),
    ("blank-text", {"match": {"title": "   "}}, None),
    ("query_string-only-operators", {"query_string": {"query": "* AND year:[2000 TO 2010]"}}, None),
    # non-string values are not text
    ("match-number", {"match": {"year": 2020}}, None),
    ("match-number-long", {"match": {"year": {"query": 2020}}}, None),
    ("match-bool", {"match": {"published": True}}, None),
    ("multi_match-number", {"multi_match": {"query": 42, "fields": ["a"]}}, None),
    (
        "number-beside-text",
        {"bool": {"must": [{"match": {"year": 2020}}, {"match": {"title": "olympics"}}]}},
        "olympics",
    ),
    # bool: must then should; filter and must_not ignored
    (
        "bool-must-should",
        {"bool": {"should": [{"match": {"body": "second"}}], "must": [{"match": {"title": "first"}}]}},
        "first second",
    ),
    ("bool-single-clause", {"bool": {"must": {"match": {"title": "alone"}}}}, "alone"),
    (
        "bool-filter-ignored",
        {"bool": {"must": {"match": {"title": "wanted"}}, "filter": [{"match": {"lang": "english"}}]}},
        "wanted",
    ),
    (
        "bool-must_not-ignored",
        {"bool": {"should": [{"match": {"title": "wanted"}}], "must_not": {"match_phrase": {"title": "unwanted"}}}},
        "wanted",
    ),
    ("bool-only-filter", {"bool": {"filter": {"match": {"title": "filtered"}}}}, None),
    (
        "bool-nested-bool",
        {
            "bool": {
                "must": [{"bool": {"should": [{"match": {"a": "x"}}, {"match": {"b": "y"}}]}}, {"match": {"c": "z"}}]
            }
        },
        "x y z",
    ),
    # distinct texts once, in order of appearance
    (
        "distinct",
        {
            "bool": {
                "should": [
                    {"match": {"title": "cancer"}},
                    {"match": {"body": "cancer"}},
                    {"match": {"body": "therapy"}},
                ]
            }
        },
        "cancer therapy",
    ),
    # other compound queries
    (
        "dis_max",
        {"dis_max": {"queries": [{"match": {"title": "brown fox"}}, {"match": {"body": "quick"}}], "tie_breaker": 0.7}},
        "brown fox quick",
    ),
    (
        "function_score-bool",
        {
            "function_score": {
                "query": {
                    "bool": {
                        "must": {"multi_match": {"query": "laptop", "fields": ["name"]}},
                        "filter": {"match": {"category": "electronics"}},
                    }
                },
                "functions": [{"field_value_factor": {"field": "likes"}}],
            }
        },
        "laptop",
    ),
    (
        "script_score",
        {"script_score": {"query": {"match": {"body": "elastic"}}, "script": {"source": "_score"}}},
        "elastic",
    ),
    (
        "boosting",
        {
            "boosting": {
                "positive": {"match": {"text": "apple"}},
                "negative": {"match": {"text": "pie"}},
                "negative_boost": 0.5,
            }
        },
        "apple",
    ),
    ("nested", {"nested": {"path": "comments", "query": {"match": {"comments.text": "great"}}}}, "great"),
    (
        "hybrid",
        {"hybrid": {"queries": [{"match": {"t": "lexical"}}, {"neural": {"v": {"query_text": "semantic"}}}]}},
        "lexical semantic",
    ),
    ("constant_score-skipped", {"constant_score": {"filter": {"match": {"title": "filtered"}}, "boost": 1.2}}, None),
    ("has_child-skipped", {"has_child": {"type": "answer", "query": {"match": {"body": "child text"}}}}, None),
    ("has_parent-skipped", {"has_parent": {"parent_type": "q", "query": {"match": {"body": "parent text"}}}}, None),
]


@pytest.mark.parametrize(("query", "expected"), [c[1:] for c in DSL_CASES], ids=[c[0] for c in DSL_CASES])
def test_dsl_text(query: Any, expected: str | None) -> None:
    assert dsl_text(query) == expected


@pytest.mark.parametrize(("query", "expected"), [c[1:] for c in DSL_CASES], ids=[c[0] for c in DSL_CASES])
def test_query_text_from_body_query(query: Any, expected: str | None) -> None:
    assert query_text({"query": query, "size": 10}) == expected


def test_deep_query_does_not_blow_the_stack() -> None:
    query: dict[str, Any] = {"match": {"title": "deep"}}
    for _ in range(5000):
        query = {"bool": {"must": query}}
    assert dsl_text(query) is None


# --- query syntax clean-up ---------------------------------------------------

SYNTAX_CASES: list[tuple[str, str | None]] = [
    ("plain words", "plain words"),
    ("title:(quick OR brown) AND fox", "quick brown fox"),
    ('title.english:"hello world" body:hi', "hello world hi"),
    ('+covid-19 -"bird flu" vaccine^2', "covid-19 vaccine"),
    ("foo NOT bar", "foo"),
    ("!dogs cats", "cats"),
    ("foo -(bar baz) qux", "foo qux"),
    ('quik~2 "brown fox"~5 bro* ^', "quik brown fox bro"),
    ("a && b || c", "a b c"),
    ("foo | bar + baz", "foo bar baz"),
    ("status:active AND year:>=2020 date:[2020-01-01 TO 2021-01-01] {a TO b}", "active"),
    ("_exists_:title cats", "cats"),
    ("name:/joh?n(ath[oa]n)/ smith", "smith"),
    ("C++ and or", "C++ and or"),
    ("http://example.com foo", "http://example.com foo"),
    (r"1\+1 \(a\) title\:x", "1+1 (a) title:x"),
    ("what is love?", "what is love"),
    ("*", None),
    ("   ", None),
]


@pytest.mark.parametrize(("text", "expected"), SYNTAX_CASES, ids=[c[0] for c in SYNTAX_CASES])
def test_clean_query_syntax(text: str, expected: str | None) -> None:
    assert clean_query_syntax(text) == expected


# --- precedence --------------------------------------------------------------

MATCH_BODY = {"query": {"match": {"title": {"query": "from the dsl"}}}}


def _with_ext(body: dict[str, Any], rerank: Any) -> dict[str, Any]:
    return {**body, "ext": {"rerank": rerank}}


PRECEDENCE_CASES: list[tuple[str, dict[str, Any] | None, dict[str, str] | None, str | None, str | None]] = [
    # (id, body, params, configured path, expected)
    ("dsl", MATCH_BODY, None, None, "from the dsl"),
    ("ext-text-over-dsl", _with_ext(MATCH_BODY, {"query_context": {"query_text": "from ext"}}), None, None, "from ext"),
    (
        "ext-text-stripped",
        _with_ext(MATCH_BODY, {"query_context": {"query_text": " from ext "}}),
        None,
        None,
        "from ext",
    ),
    (
        "ext-path",
        _with_ext(MATCH_BODY, {"query_context": {"query_text_path": "query.match.title.query"}}),
        None,
        None,
        "from the dsl",
    ),
    (
        "ext-over-configured-path-and-q",
        {**_with_ext(MATCH_BODY, {"query_context": {"query_text": "from ext"}}), "title": "configured"},
        {"q": "from q"},
        "title",
        "from ext",
    ),
    ("ext-without-query_context", _with_ext(MATCH_BODY, {"enabled": True}), None, None, "from the dsl"),
    ("configured-path", {**MATCH_BODY, "meta": {"text": "configured"}}, None, "meta.text", "configured"),
    ("configured-path-over-q", {"meta": {"text": "configured"}}, {"q": "from q"}, "meta.text", "configured"),
    ("configured-path-missing", MATCH_BODY, None, "meta.text", "from the dsl"),
    ("configured-path-not-a-string", {**MATCH_BODY, "meta": {"text": 7}}, None, "meta.text", "from the dsl"),
    ("configured-path-object", MATCH_BODY, None, "query.match.title", "from the dsl"),
    ("q-without-body", None, {"q": "title:heart AND attack"}, None, "heart attack"),
    ("q-with-bodyless-query", {"size": 5}, {"q": "heart attack"}, None, "heart attack"),
    # OpenSearch runs q instead of the body's query when both are given.
    ("q-over-dsl", MATCH_BODY, {"q": "from q"}, None, "from q"),
    ("q-empty-falls-to-dsl", MATCH_BODY, {"q": ""}, None, "from the dsl"),
    ("other-params-ignored", None, {"size": "10", "df": "title"}, None, None),
    ("nothing", {"query": {"match_all": {}}}, {}, None, None),
    ("none", None, None, None, None),
]


@pytest.mark.parametrize(
    ("body", "params", "path", "expected"),
    [c[1:] for c in PRECEDENCE_CASES],
    ids=[c[0] for c in PRECEDENCE_CASES],
)
def test_query_text_precedence(
    body: dict[str, Any] | None, params: dict[str, str] | None, path: str | None, expected: str | None
) -> None:
    before = copy.deepcopy(body)
    assert query_text(body, params, query_text_path=path) == expected
    assert body == before


# --- dotted paths ------------------------------------------------------------

PATH_BODY: dict[str, Any] = {
    "query": {
        "bool": {
            "must": [{"match": {"title.english": {"query": "multi field"}}}],
            "should": {"match": {"body": "shorthand"}},
        }
    },
    "size": 3,
}

PATH_CASES: list[tuple[str, Any]] = [
    ("query.bool.must.0.match.title.english.query", "multi field"),
    ("query.bool.should.match.body", "shorthand"),
    # OpenSearch renders a single clause as an array and a shorthand with "query".
    ("query.bool.should.0.match.body.query", "shorthand"),
    ("query.bool.must.1.match", None),
    ("query.bool.must.x", None),
    ("query.bool.filter", None),
    ("size", 3),
    ("size.query", None),
    ("query..bool", None),
    ("", None),
]


@pytest.mark.parametrize(("path", "expected"), PATH_CASES, ids=[c[0] or "empty" for c in PATH_CASES])
def test_resolve_path(path: str, expected: Any) -> None:
    assert resolve_path(PATH_BODY, path) == expected


# --- malformed ext -----------------------------------------------------------

BAD_EXT_CASES: list[tuple[str, dict[str, Any]]] = [
    ("ext-not-object", {"ext": "rerank"}),
    ("ext-list", {"ext": [{"rerank": {}}]}),
    ("rerank-not-object", {"ext": {"rerank": True}}),
    ("rerank-null", {"ext": {"rerank": None}}),
    ("query_context-not-object", _with_ext(MATCH_BODY, {"query_context": "text"})),
    ("query_context-empty", _with_ext(MATCH_BODY, {"query_context": {}})),
    ("both-text-and-path", _with_ext(MATCH_BODY, {"query_context": {"query_text": "a", "query_text_path": "query"}})),
    ("query_text-not-string", _with_ext(MATCH_BODY, {"query_context": {"query_text": 5}})),
    ("query_text-blank", _with_ext(MATCH_BODY, {"query_context": {"query_text": "  "}})),
    ("path-not-string", _with_ext(MATCH_BODY, {"query_context": {"query_text_path": ["query"]}})),
    ("path-missing", _with_ext(MATCH_BODY, {"query_context": {"query_text_path": "query.match.body.query"}})),
    ("path-to-object", _with_ext(MATCH_BODY, {"query_context": {"query_text_path": "query.match"}})),
]


@pytest.mark.parametrize("body", [c[1] for c in BAD_EXT_CASES], ids=[c[0] for c in BAD_EXT_CASES])
def test_malformed_ext_raises(body: dict[str, Any]) -> None:
    with pytest.raises(BadRequestError) as caught:
        query_text(body)
    assert caught.value.status == 400
    assert caught.value.to_body()["error"]["type"] == "rerank_illegal_argument_exception"


@pytest.mark.parametrize("body", [c[1] for c in BAD_EXT_CASES[:4]], ids=[c[0] for c in BAD_EXT_CASES[:4]])
def test_rerank_ext_rejects_non_objects(body: dict[str, Any]) -> None:
    with pytest.raises(BadRequestError):
        rerank_ext(body)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (None, {}),
        ({}, {}),
        ({"query": {"match_all": {}}}, {}),
        ({"ext": {}}, {}),
        ({"ext": {"other": {"x": 1}}}, {}),
        ({"ext": {"rerank": {}}}, {}),
        ({"ext": {"rerank": {"enabled": False, "model": "m"}}}, {"enabled": False, "model": "m"}),
    ],
)
def test_rerank_ext(body: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    assert rerank_ext(body) == expected


# --- strip_rerank_ext --------------------------------------------------------

STRIP_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("no-ext", {"query": {"match_all": {}}}, {"query": {"match_all": {}}}),
    ("only-rerank", {"size": 2, "ext": {"rerank": {"query_context": {"query_text": "q"}}}}, {"size": 2}),
    (
        "rerank-beside-other-ext",
        {"size": 2, "ext": {"rerank": {"enabled": True}, "generative_qa_parameters": {"llm_question": "q"}}},
        {"size": 2, "ext": {"generative_qa_parameters": {"llm_question": "q"}}},
    ),
    ("ext-without-rerank", {"ext": {"other": 1}}, {"ext": {"other": 1}}),
    ("empty-ext-kept", {"ext": {}}, {"ext": {}}),
    ("ext-not-object-kept", {"ext": "x"}, {"ext": "x"}),
]


@pytest.mark.parametrize(("body", "expected"), [c[1:] for c in STRIP_CASES], ids=[c[0] for c in STRIP_CASES])
def test_strip_rerank_ext(body: dict[str, Any], expected: dict[str, Any]) -> None:
    before = copy.deepcopy(body)
    out = strip_rerank_ext(body)
    assert out == expected
    assert body == before  # the input is never modified
    assert out is not body
    if isinstance(body.get("ext"), dict) and "rerank" in body["ext"] and "ext" in out:
        assert out["ext"] is not body["ext"]
