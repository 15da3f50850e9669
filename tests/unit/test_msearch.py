"""es_rerank.msearch: NDJSON parsing and writing, and which index an item searches."""

from __future__ import annotations

import json

from es_rerank.msearch import MsearchItem, item_target, parse_msearch, serialize_msearch


def ndjson(*objs) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def test_pairs_of_header_and_body_lines():
    items = parse_msearch(ndjson({"index": "docs"}, {"query": {"match_all": {}}}, {}, {"size": 0}))
    assert items is not None and len(items) == 2
    first, second = items
    assert isinstance(first, MsearchItem)
    assert first.header == {"index": "docs"} and first.body == {"query": {"match_all": {}}}
    assert first.header_line == b'{"index": "docs"}' and first.body_line == b'{"query": {"match_all": {}}}'
    assert second.header == {} and second.body == {"size": 0}


def test_blank_lines_are_skipped():
    items = parse_msearch(b'{}\n\n{"size": 1}\n\n')
    assert items is not None and [i.body for i in items] == [{"size": 1}]


def test_bodies_opensearch_should_judge_itself_give_none():
    assert parse_msearch(b'{}\n{"size": 1}') is None  # no final newline
    assert parse_msearch(b'{}\n{"size": 1}\n{}\n') is None  # an odd number of lines
    assert parse_msearch(b"not json\n{}\n") is None  # a header line that is not JSON
    assert parse_msearch(b"\n") is None  # no item at all


def test_a_body_that_is_not_an_object_is_forwarded_as_written():
    items = parse_msearch(b'{"index": "a"}\nnot json\n["x"]\n[1]\n')
    assert items is not None
    assert items[0].body is None and items[0].body_line == b"not json"
    assert items[1].header == {} and items[1].body is None  # a header that is not an object reads as {}


def test_serialize_writes_header_lines_as_they_came_and_bodies_as_json_or_bytes():
    out = serialize_msearch([(b'{"index":"a"}', {"size": 1}), (b"{}", b"raw body")])
    assert out.endswith(b"\n")
    lines = out.split(b"\n")
    assert lines[0] == b'{"index":"a"}' and json.loads(lines[1]) == {"size": 1}
    assert lines[2:] == [b"{}", b"raw body", b""]


def test_round_trip_keeps_every_item():
    body = ndjson({"index": "a"}, {"query": {"match": {"t": "x"}}}, {"index": ["b", "c"]}, {"size": 3})
    items = parse_msearch(body)
    assert items is not None
    again = parse_msearch(serialize_msearch([(i.header_line, i.body) for i in items]))
    assert again is not None and [(i.header, i.body) for i in again] == [(i.header, i.body) for i in items]


def test_item_target_prefers_the_header_then_the_path():
    assert item_target({"index": "a"}, "path") == "a"
    assert item_target({"index": ["a", "b"]}, None) == "a,b"
    assert item_target({}, "path") == "path"
    assert item_target({}, None) is None
    assert item_target({"index": ""}, None) is None
    assert item_target({"index": 3}, "path") is None
