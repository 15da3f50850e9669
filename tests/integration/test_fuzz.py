"""Property-based fuzzing: the same generated requests sent direct to a real OpenSearch
and through es-rerank.

For every case: the proxy answers (never closes without a word), with the same
status class as OpenSearch, never a 5xx of its own where OpenSearch answered 2xx or
4xx, and every error body that is not OpenSearch's own is in OpenSearch's error
shape. Seeded (derandomized), bounded in examples; no wall-clock assertions.
"""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opensearchpy import OpenSearch
from opensearchpy.helpers import bulk
from rawhttp import exchange, is_shaped_error

from es_rerank import create_app, settings_from_dict

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
INDEX = "fz-docs"
EXAMPLES = 3000


@pytest.fixture(scope="module")
def ports(opensearch_url, tiny_model_dir, serve_app):
    client = OpenSearch(opensearch_url, timeout=60)
    client.indices.delete(index=INDEX, ignore_unavailable=True)
    client.indices.create(index=INDEX, body={"settings": {"number_of_shards": 1, "number_of_replicas": 0}})
    with gzip.open(ROOT / "demo" / "scifact" / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in itertools.islice(f, 60)]
    bulk(
        client,
        (
            {"_index": INDEX, "_id": d["_id"], "title": d["title"], "text": d["text"], "year": i}
            for i, d in enumerate(docs)
        ),
        refresh=True,
    )
    settings_ = settings_from_dict(
        {
            "upstream": {"url": opensearch_url, "timeout": 30},
            "models": {"tiny": {"path": str(tiny_model_dir), "max_length": 64}},
            "indices": [
                {"pattern": "fz-*", "model": "tiny", "fields": ["title", "text"], "window": 10, "max_window": 50}
            ],
        },
        env={},
    )
    with serve_app(create_app(settings_)) as served:
        yield served.port, int(opensearch_url.rsplit(":", 1)[1])
    client.indices.delete(index=INDEX, ignore_unavailable=True)


# -- strategies -----------------------------------------------------------------------

words = st.sampled_from(["cells", "protein", "cancer", "gene", "café", "ＡＢＣ", "a*", '"q', "+x", "~", "\\", ""])
text = st.lists(words, min_size=0, max_size=4).map(" ".join)
numberish = st.one_of(
    st.integers(-5, 60).map(str), st.sampled_from(["", "１", "1.5", "x", "-0", "+3", "99999999999", " 2"])
)

query_dsl = st.one_of(
    st.builds(lambda t: {"match": {"text": t}}, text),
    st.builds(lambda t: {"multi_match": {"query": t, "fields": ["title", "text"]}}, text),
    st.builds(lambda t: {"query_string": {"query": t}}, text),
    st.builds(
        lambda t: {"bool": {"must": [{"match": {"title": t}}], "filter": [{"range": {"year": {"gte": 3}}}]}}, text
    ),
    st.just({"match_all": {}}),
    st.builds(lambda t: {"nope": {"text": t}}, text),
)
rerank_ext = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "window_size": st.one_of(st.integers(-2, 80), st.just("5")),
            "enabled": st.one_of(st.booleans(), st.just("no")),
        },
    ),
    st.just({"model": "missing"}),
    st.just({"unknown": 1}),
    st.builds(lambda t: {"query_context": {"query_text": t}}, text),
)
search_body = st.fixed_dictionaries(
    {},
    optional={
        "query": query_dsl,
        "size": st.one_of(st.integers(-1, 30), st.just("3")),
        "from": st.integers(-1, 30),
        "_source": st.one_of(st.booleans(), st.just(["title"]), st.just({"excludes": ["text"]})),
        "sort": st.sampled_from(["_score", [{"year": "asc"}], [{"_score": "asc"}], [{"_score": {"order": "desc"}}]]),
        "min_score": st.sampled_from([0, 0.5, 3, -1e400]),
        "track_total_hits": st.booleans(),
        "aggs": st.just({"y": {"max": {"field": "year"}}}),
        "highlight": st.just({"fields": {"text": {}}}),
        "ext": st.one_of(st.builds(lambda e: {"rerank": e}, rerank_ext), st.just({})),
        "fields": st.sampled_from([["title"], "title", []]),
    },
)


class Body(bytes):
    """A body as the proxy gets it; ``direct`` is the same without es-rerank's own ``ext.rerank``."""

    direct: bytes


def _json_bytes(value) -> bytes:
    body = Body(json.dumps(value, ensure_ascii=False).encode())
    if isinstance(value.get("ext"), dict) and "rerank" in value["ext"]:
        value = {**value, "ext": {k: v for k, v in value["ext"].items() if k != "rerank"}}
    body.direct = json.dumps(value, ensure_ascii=False).encode()
    return body


def _direct(body: bytes) -> bytes:
    return getattr(body, "direct", body)


odd_bodies = st.sampled_from(
    [
        b"null",
        b"   ",
        b"[]",
        b"{",
        b'{"size":1,"size":2}',
        b'{"query":{"match_all":{}}}garbage',
        b"\xff\xfe",
        b'"x"',
        b"{}",
    ]
)
body_bytes = st.one_of(search_body.map(_json_bytes), odd_bodies, st.just(b""))

header_line = st.one_of(
    st.just(b"{}"),
    st.just(b"null"),
    st.just(b"[]"),
    st.just(b'"x"'),
    st.just(b'{"index":"fz-docs"}'),
    st.just(b'{"index":"nothere"}'),
    st.just(b'{"index":["fz-docs"]}'),
)


def _ndjson(items, newline: bool) -> Body:
    end = b"\n" if newline else b""
    body = Body(b"\n".join(itertools.chain.from_iterable(items)) + end)
    body.direct = b"\n".join(itertools.chain.from_iterable((h, _direct(b)) for h, b in items)) + end
    return body


msearch_body = st.builds(
    _ndjson,
    st.lists(st.tuples(header_line, body_bytes.filter(lambda b: b"\n" not in b and b.strip())), min_size=1, max_size=3),
    st.booleans(),
)

paths = st.sampled_from(
    [
        "/fz-docs/_search",
        "/fz-docs/_search",
        "/fz-*/_search",
        "/fz-docs,fz-docs/_search",
        "/fz-docs/_msearch",
        "/_msearch",
        "/_search",
        "/fz-docs/_count",
        "/fz-docs",
        "/_cat/indices",
        "/",
        "/nothere/_search",
        "/_rerank%2Fhealth",
        "/fz-docs/_search/",
        "//fz-docs/_search",
        "/fz-docs/_doc/nope",
        "/fz-docs/_mapping",
    ]
)
params = st.dictionaries(
    st.sampled_from(
        [
            "size",
            "from",
            "pretty",
            "q",
            "format",
            "filter_path",
            "rest_total_hits_as_int",
            "typed_keys",
            "scroll",
            "bogus",
        ]
    ),
    st.one_of(numberish, text, st.sampled_from(["true", "false", "yaml", "json", "hits.hits._id", "1m"])),
    max_size=3,
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=UTF-8",
        "application/x-ndjson",
        "application/vnd.opensearch+json;compatible-with=7",
        "text/plain",
        None,
    ]
)
accepts = st.sampled_from([None, None, "application/json", "application/yaml", "application/cbor", "*/*"])


@st.composite
def requests(draw) -> tuple[bytes, bytes]:
    """(the request through es-rerank, the same request direct: less es-rerank's own parts)."""
    method = draw(st.sampled_from(["GET", "POST", "POST", "HEAD", "OPTIONS", "PATCH"]))
    path = draw(paths)
    body = draw(msearch_body) if path.endswith("_msearch") and draw(st.booleans()) else draw(body_bytes)
    if method in ("HEAD", "OPTIONS") or (method == "GET" and draw(st.booleans())):
        body = b""
    query = "&".join(f"{k}={quote(v, safe='')}" if v else k for k, v in draw(params).items())
    target = path + ("?" + query if query else "")
    headers = {"Host": "127.0.0.1"}
    content_type = draw(content_types)
    if body and content_type:
        headers["Content-Type"] = content_type
    direct_body = _direct(body)
    if body and draw(st.integers(0, 5)) == 0:
        body, direct_body = gzip.compress(body, mtime=0), gzip.compress(direct_body, mtime=0)
        headers["Content-Encoding"] = "gzip"
    accept = draw(accepts)
    if accept:
        headers["Accept"] = accept
    if draw(st.integers(0, 6)) == 0:
        headers["x-rerank-enabled"] = "false"

    def framed(content: bytes) -> bytes:
        lines = {**headers, "Content-Length": str(len(content))} if content else headers
        return (
            f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in lines.items()) + "\r\n"
        ).encode() + content

    return framed(body), framed(direct_body)


def _without_took(body: bytes) -> object:
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if isinstance(data, dict):
        data.pop("took", None)
    return data


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(pair=requests())
def test_same_status_class_and_opensearch_shaped_errors(ports, pair):
    data, direct_data = pair
    via_port, direct_port = ports
    head = data.startswith(b"HEAD ")
    direct = exchange(direct_port, direct_data, head=head)
    via = exchange(via_port, data, head=head)
    assert via is not None, "the proxy closed without an answer"
    # A bad ext.rerank is es-rerank's to refuse (OpenSearch never sees it).
    refused_ext = via.status == 400 and data != direct_data and not head and is_shaped_error(via)
    if refused_ext and via.json()["error"]["type"].startswith("rerank_"):
        return
    if direct is None:
        # OpenSearch dropped the connection (an unknown method): the proxy refuses, shaped.
        assert 400 <= via.status < 500 and is_shaped_error(via), via
        return
    assert via.status // 100 == direct.status // 100, (data[:300], via, direct)
    if via.status >= 500:
        assert direct.status >= 500
    # An error relayed from OpenSearch carries x-rerank (its body may differ from direct's
    # in a column number, the proxy's JSON being compact); es-rerank's own errors do not.
    own = "x-rerank" not in via.headers
    if via.status >= 400 and not head and own and _without_took(via.body) != _without_took(direct.body):
        assert is_shaped_error(via), (data[:300], via, direct)
