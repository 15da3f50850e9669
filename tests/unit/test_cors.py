"""es_rerank.cors on a stand-in app: OpenSearch's allow-origin forms, refusals, one policy."""

from __future__ import annotations

import pytest
from starlette.responses import Response
from starlette.testclient import TestClient

from es_rerank.config import CorsSettings
from es_rerank.cors import OpenSearchCors, origins_from, with_cors


class Upstreamish:
    """Answers as an OpenSearch with CORS of its own would."""

    marker = "inner"

    async def __call__(self, scope, receive, send):
        response = Response(b"{}", headers={"access-control-allow-origin": "*", "x-rerank": "reranked"})
        await response(scope, receive, send)


def test_allow_origin_forms():
    assert origins_from("*") == (["*"], None)
    assert origins_from("http://a, http://b") == (["http://a", "http://b"], None)
    assert origins_from(["http://a"]) == (["http://a"], None)
    assert origins_from("/https?:\\/\\/a(:[0-9]+)?/") == ([], "https?:\\/\\/a(:[0-9]+)?")


def test_off_is_the_app_itself():
    app = Upstreamish()
    assert with_cors(app, CorsSettings()) is app


def test_the_proxy_attributes_stay_reachable():
    wrapped = with_cors(Upstreamish(), CorsSettings(enabled=True, allow_origin="*"))
    assert isinstance(wrapped, OpenSearchCors) and wrapped.marker == "inner"


@pytest.mark.parametrize("credentials, expected", [(False, "*"), (True, "http://x")])
def test_any_origin_and_credentials(credentials, expected):
    client = TestClient(
        with_cors(Upstreamish(), CorsSettings(enabled=True, allow_origin="*", allow_credentials=credentials))
    )
    answer = client.get("/i/_search", headers={"Origin": "http://x"})
    assert answer.headers["access-control-allow-origin"] == expected
    assert answer.headers.get("access-control-allow-credentials") == ("true" if credentials else None)
    assert "x-rerank" in answer.headers["access-control-expose-headers"]


def test_upstream_cors_headers_are_replaced_by_es_reranks():
    client = TestClient(with_cors(Upstreamish(), CorsSettings(enabled=True, allow_origin=["http://x"])))
    answer = client.get("/i/_search", headers={"Origin": "http://x"})
    assert answer.headers.get_list("access-control-allow-origin") == ["http://x"]
    # No Origin: no CORS answer at all, and OpenSearch's is not let through either.
    assert "access-control-allow-origin" not in client.get("/i/_search").headers


def test_refused_origin_and_regex_match_the_whole_origin():
    client = TestClient(with_cors(Upstreamish(), CorsSettings(enabled=True, allow_origin="/http:\\/\\/ok(:[0-9]+)?/")))
    assert client.get("/", headers={"Origin": "http://ok:80"}).status_code == 200
    assert client.get("/", headers={"Origin": "http://ok.evil"}).status_code == 403
    preflight = {"Origin": "http://ok.evil", "Access-Control-Request-Method": "POST"}
    assert client.options("/", headers=preflight).status_code == 403
