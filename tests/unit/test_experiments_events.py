"""UBI events posted to /_rerank/ubi/events: checked before anything is stored."""

from __future__ import annotations

import json

import pytest

from es_rerank.experiments.events import InvalidEventsError, parse_events

CLICK = {
    "action_name": "click",
    "query_id": "q1",
    "client_id": "u1",
    "session_id": "s1",
    "timestamp": "2026-12-03T08:00:00.000Z",
    "event_attributes": {"object": {"object_id": "doc-1", "object_id_field": "_id"}, "position": {"ordinal": 2}},
}


def test_one_event_array_and_ndjson():
    assert parse_events(json.dumps(CLICK).encode(), max_events=10) == [CLICK]
    assert len(parse_events(json.dumps([CLICK, CLICK]).encode(), max_events=10)) == 2
    ndjson = (json.dumps(CLICK) + "\n" + json.dumps({**CLICK, "timestamp": 1733212800000}) + "\n").encode()
    assert len(parse_events(ndjson, max_events=10)) == 2


def test_missing_timestamp_filled_and_numeric_object_id_made_a_string():
    (event,) = parse_events(
        json.dumps({"action_name": "click", "event_attributes": {"object": {"object_id": 7}}}).encode(), max_events=1
    )
    assert event["timestamp"].endswith("Z") and event["event_attributes"]["object"]["object_id"] == "7"


def test_every_problem_named_and_the_error_is_opensearch_shaped():
    bad = [
        CLICK,
        {"action_name": "", "query_id": 5, "colour": "red"},
        {
            "action_name": "click",
            "timestamp": "yesterday",
            "event_attributes": {"position": {"ordinal": -1}, "object": {"object_id": True}},
        },
        "click",
    ]
    with pytest.raises(InvalidEventsError) as info:
        parse_events(json.dumps(bad).encode(), max_events=10)
    reason = info.value.reason
    for needle in (
        "nothing stored",
        "event 1: unknown field(s) ['colour']",
        "event 1: [action_name] is required",
        "event 1: [query_id] must be a string",
        "event 2: [timestamp] must be epoch milliseconds or an RFC 3339 date",
        "event 2: [event_attributes.position.ordinal] must be a non-negative integer",
        "event 2: [event_attributes.object.object_id] must be a string",
        "event 3: an event must be an object",
    ):
        assert needle in reason, (needle, reason)
    body = info.value.to_body()
    assert info.value.status == 400 and body["status"] == 400
    assert body["error"]["type"] == "ubi_event_parse_exception" and body["error"]["root_cause"]


def test_bad_ndjson_line_empty_and_too_many():
    with pytest.raises(InvalidEventsError, match="line 2: not JSON"):
        parse_events((json.dumps(CLICK) + "\n{not json\n").encode(), max_events=10)
    with pytest.raises(InvalidEventsError, match="request body is required"):
        parse_events(b"  ", max_events=10)
    with pytest.raises(InvalidEventsError, match="3 events in one request; at most 2"):
        parse_events(json.dumps([CLICK] * 3).encode(), max_events=2)
