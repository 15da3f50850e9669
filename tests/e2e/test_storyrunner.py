"""The story runner itself: its verdicts must be the upstream tool's (no OpenSearch needed)."""

from __future__ import annotations

import json

import httpx
import pytest
from storyrunner import _unsafe, _Yaml12Loader, payload_mismatches, run_story, satisfies, story_indices

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    "expected, actual",
    [
        ({"a": 1}, {"a": 1, "b": 2}),  # objects are partial
        (
            {"hits": {"hits": [{"_id": "x"}]}},
            {"hits": {"hits": [{"_id": "x", "_score": 1.0}, {"_id": "y"}]}},
        ),  # extra elements ok
        ({"max_score": 1}, {"max_score": 1.0}),  # numbers compare as numbers
        ({"max_score": None}, {"max_score": None}),
        ({"hits": []}, {"hits": [{"_id": "x"}]}),  # an empty expected array holds for any array
        ({}, {"a": 1}),
        ("text", "text"),
    ],
)
def test_subset_holds(expected, actual):
    assert payload_mismatches(expected, actual) == []


@pytest.mark.parametrize(
    "expected, actual, message",
    [
        ({"a": 1}, {"b": 1}, "missing a=1"),
        ({"a": {"b": 1}}, {"a": {"b": 2}}, "expected a.b=1, got 2"),
        ({"l": [{"k": 1}, {"k": 2}]}, {"l": [{"k": 1}]}, 'missing l[1]={"k": 2}'),
        (
            {"l": [{"k": 1}, {"k": 2}]},
            {"l": [{"k": 2}, {"k": 1}]},
            "expected l[0].k=1, got 2",
        ),  # by index, not as a set
        ({"a": "1"}, {"a": 1}, "a: expected string"),  # same JSON type
        ({"a": True}, {"a": 1}, "a: expected boolean"),
        ({"a": None}, {"a": {}}, "a: expected null"),
        ({"total": {"value": 1}}, {"total": 1}, "total: expected object"),
    ],
)
def test_subset_fails(expected, actual, message):
    problems = payload_mismatches(expected, actual)
    assert problems and message in problems[0], problems


@pytest.mark.parametrize(
    "spec, ok",
    [
        (">= 2.0", True),
        (">=2.19", True),
        (">= 2.19.6", True),
        (">= 2.19.7", False),
        ("> 2.19", False),
        ("> 2.18", True),
        ("< 2.19", False),
        ("< 3", True),
        ("<= 2.19", True),
        (">= 2.4 < 2.19", False),
        (">= 2.4 < 3", True),
        ("= 2.19", True),
        ("2", True),
        ("3", False),
        ("1 || 2.x", True),
        (">= 3.0", False),
    ],
)
def test_version_ranges(spec, ok):
    assert satisfies("2.19.6", spec) is ok


def test_yaml_is_read_as_yaml_1_2():
    import yaml

    data = yaml.load("a: yes\nb: 2011-01-01\nc: on\nd: true\ne: 0x10\nf: 1.5\ng: ~\nh: '1'", Loader=_Yaml12Loader)
    assert data == {"a": "yes", "b": "2011-01-01", "c": "on", "d": True, "e": 16, "f": 1.5, "g": None, "h": "1"}


@pytest.mark.parametrize(
    "path, refused",
    [
        ("/movies", False),
        ("/books,movies", False),
        ("/games/_alias/*", False),
        ("/_search/scroll", False),
        ("/*", True),
        ("/_all", True),
        ("/scifact", True),
        ("/rr-docs", True),
        ("/movies,scifact", True),
        ("/_search/scroll/_all", True),
        ("/_search/point_in_time/_all", True),
        ("/mov*", True),
    ],
)
def test_safety_guard(path, refused):
    assert (_unsafe("DELETE", path, frozenset({"scifact", "rr-*"})) is not None) is refused
    assert _unsafe("GET", path, frozenset({"scifact", "rr-*"})) is None


def test_requests_outputs_and_verdicts():
    """Path and query parameters, NDJSON, outputs, retries of nothing, skipping after an error."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/movies/_search" and request.url.params.get("scroll"):
            return httpx.Response(200, json={"_scroll_id": "SID", "hits": {"hits": []}})
        if request.url.path == "/_search/scroll":
            body = json.loads(request.content)
            return httpx.Response(200 if body["scroll_id"] == "SID" else 404, json={"hits": {"hits": [{"_id": "1"}]}})
        if request.url.path == "/_bulk":
            return httpx.Response(200, json={"errors": False})
        return httpx.Response(400, json={"error": {"reason": "nope"}})

    story = {
        "description": "A test.",
        "prologues": [
            {
                "path": "/_bulk",
                "method": "POST",
                "parameters": {"refresh": True},
                "request": {
                    "content_type": "application/x-ndjson",
                    "payload": [{"create": {"_index": "movies"}}, {"title": "x"}],
                },
            },
            {
                "path": "/{index}/_search",
                "method": "GET",
                "id": "s",
                "parameters": {"index": "movies", "scroll": "10m"},
                "output": {"sid": "payload._scroll_id"},
            },
        ],
        "chapters": [
            {
                "synopsis": "Scroll.",
                "path": "/_search/scroll",
                "method": ["GET", "POST"],
                "request": {"payload": {"scroll_id": "${s.sid}"}},
                "response": {"status": 200, "payload": {"hits": {"hits": [{"_id": "1"}]}}},
            },
            {"synopsis": "Pending.", "path": "/x", "method": "GET", "pending": "later"},
            {"synopsis": "Too new.", "path": "/x", "method": "GET", "version": ">= 3.0"},
            {"synopsis": "Fails.", "path": "/nope", "method": "GET"},
            {"synopsis": "Skipped after an error.", "path": "/_search/scroll", "method": "GET"},
        ],
        "epilogues": [
            {"path": "/movies", "method": "DELETE", "status": [200, 404]},
            {"path": "/*", "method": "DELETE"},
        ],
    }
    with httpx.Client(transport=httpx.MockTransport(handler), base_url="http://node") as client:
        run = run_story(client, story, version="2.19.6")
    bulk = seen[0]
    assert bulk.url.query == b"refresh=true" and bulk.headers["content-type"] == "application/x-ndjson"
    assert bulk.content == b'{"create": {"_index": "movies"}}\n{"title": "x"}\n'
    assert seen[1].url.path == "/movies/_search" and seen[1].url.params["scroll"] == "10m"
    assert [r.method for r in run.chapters[:2]] == ["GET", "POST"]
    assert json.loads(seen[2].content) == {"scroll_id": "SID"}
    verdicts = [(r.title, r.passed, r.skipped) for r in run.chapters]
    assert [v[1] for v in verdicts] == [True, True, True, True, False, True]
    assert verdicts[2][2].startswith("pending") and "does not satisfy" in verdicts[3][2]
    assert "status 400 not in [200]: nope" in run.chapters[4].problems[0]
    assert verdicts[5][2] == "skipped: an earlier request failed"
    assert run.results[-1].skipped.startswith("refused")  # DELETE /* never goes out
    assert story_indices(story) == {"movies", "nope", "x"}
