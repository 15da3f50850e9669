"""Remote inference: a model served by reranking servers instead of in-process ONNX.

- a real Infinity server (``infinity_emb`` on PATH, or ``ES_RERANK_TEST_INFINITY`` naming
  the executable) serving the shared SciFact model's Hugging Face checkpoint on CPU:
  searches through the proxy on the remote model come back in the same order, with the
  same scores within tolerance, as on the same checkpoint's ONNX file in-process;
- the TEI protocol against another es-rerank's own ``/rerank``;
- a dead endpoint degrades as a local model does: the index's fallback_model, else
  first-stage order; a second, live endpoint takes the work.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from opensearchpy import OpenSearch, helpers

from es_rerank import create_app, settings_from_dict

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SHARED_MODEL = ROOT.parent / "shared" / "models" / "scifact-minilm-l6-ce"
INDEX = "rr-remote"
QUERIES = ["vitamin D deficiency and bone health", "stem cell differentiation", "antibiotic resistance in bacteria"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def index_scifact(opensearch_url):
    client = OpenSearch(opensearch_url, timeout=60)
    if client.indices.exists(index=INDEX):
        client.indices.delete(index=INDEX)
    client.indices.create(index=INDEX, body={"settings": {"number_of_shards": 1, "number_of_replicas": 0}})
    with gzip.open(ROOT / "demo" / "scifact" / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in itertools.islice(f, 600)]
    helpers.bulk(
        client, ({"_index": INDEX, "_id": d["_id"], "title": d["title"], "text": d["text"]} for d in docs), refresh=True
    )
    yield
    client.indices.delete(index=INDEX)


@pytest.fixture(scope="module")
def infinity(tmp_path_factory):
    binary = os.environ.get("ES_RERANK_TEST_INFINITY") or shutil.which("infinity_emb")
    if not binary:
        pytest.skip(
            "Infinity is not installed (pip install 'infinity-emb[server,torch]'; or set ES_RERANK_TEST_INFINITY)"
        )
    if not (SHARED_MODEL / "hf" / "config.json").is_file():
        pytest.skip(f"no Hugging Face checkpoint at {SHARED_MODEL / 'hf'}")
    # The checkpoint as the model card says it reads (pairs cut at 256 tokens, as the ONNX
    # model's tokenizer.json does): its tokenizer_config's model_max_length set to 256.
    checkpoint = tmp_path_factory.mktemp("checkpoint")
    for item in (SHARED_MODEL / "hf").iterdir():
        (checkpoint / item.name).symlink_to(item)
    (checkpoint / "tokenizer_config.json").unlink()
    config = json.loads((SHARED_MODEL / "hf" / "tokenizer_config.json").read_text())
    (checkpoint / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 256}))
    port = _free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DO_NOT_TRACK": "1",
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
    }
    log = tmp_path_factory.mktemp("infinity") / "infinity.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, "v2", "--model-id", str(checkpoint), "--served-model-name", "scifact", "--engine", "torch",
             "--device", "cpu", "--no-bettertransformer", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                pytest.fail(f"Infinity exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("Infinity did not start within 600 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _search(url: str, query: str, model: str) -> tuple[httpx.Response, list[str], list[float]]:
    body = {
        "query": {"multi_match": {"query": query, "fields": ["title", "text"]}},
        "size": 10,
        "ext": {"rerank": {"model": model}},
    }
    r = httpx.post(f"{url}/{INDEX}/_search", json=body, timeout=120)
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]["hits"]
    return r, [h["_id"] for h in hits], [h["_score"] for h in hits]


def test_infinity_orders_as_the_same_checkpoint_in_process(infinity, opensearch_url, index_scifact, serve_app):
    settings = settings_from_dict(
        {
            "upstream": {"url": opensearch_url},
            "models": {
                "local": {"path": str(SHARED_MODEL)},
                "remote": {
                    "remote": {"protocol": "infinity", "endpoints": [infinity], "model": "scifact", "timeout_s": 60}
                },
            },
            "default_model": "local",
            "server": {"rerank_timeout": 120},
            "indices": [{"pattern": INDEX, "window": 20, "fields": ["title", "text"], "template": "{title}. {text}"}],
        }
    )
    with serve_app(create_app(settings)) as srv:
        for query in QUERIES:
            r_local, ids_local, scores_local = _search(srv.url, query, "local")
            r_remote, ids_remote, scores_remote = _search(srv.url, query, "remote")
            assert r_remote.headers["x-rerank"] == "reranked" and r_remote.headers["x-rerank-model"] == "remote"
            assert r_remote.headers["x-rerank-provider"] == "remote:infinity"
            np.testing.assert_allclose(scores_remote, scores_local, atol=2e-3)
            # Same order, up to hits whose scores tie within the tolerance.
            gaps = np.abs(np.diff(scores_local)) > 4e-3
            assert ids_remote == ids_local or all(
                a == b or not gap for a, b, gap in zip(ids_remote, ids_local, [*gaps, True])
            )
        assert srv_app_info(srv.url)[0]["up"] is True


def _remote_settings(opensearch_url, tiny_model_dir, endpoints, health_path="/health", **index):
    return settings_from_dict(
        {
            "upstream": {"url": opensearch_url},
            "models": {
                "tiny": {"path": str(tiny_model_dir), "warmup": False},
                "remote": {
                    "remote": {
                        "protocol": "tei",
                        "endpoints": endpoints,
                        "timeout_s": 30,
                        "health_interval_s": 0.2,
                        "health_path": health_path,
                    }
                },
            },
            "server": {"rerank_timeout": 60},
            "indices": [{"pattern": INDEX, "model": "remote", "window": 10, "fields": ["title", "text"], **index}],
        }
    )


@pytest.fixture(scope="module")
def tei_server(tiny_model_dir, serve_app, opensearch_url):
    """Another es-rerank, serving the tiny model on its TEI-shaped /rerank (health: /_rerank/health)."""
    settings = settings_from_dict(
        {"upstream": {"url": opensearch_url}, "models": {"tiny": {"path": str(tiny_model_dir), "warmup": False}}}
    )
    with serve_app(create_app(settings)) as srv:
        yield srv.url


def test_tei_protocol_scores_as_in_process(opensearch_url, tiny_model_dir, index_scifact, serve_app, tei_server):
    dead = f"http://127.0.0.1:{_free_port()}"
    settings = _remote_settings(opensearch_url, tiny_model_dir, [dead, tei_server], health_path="/_rerank/health")
    with serve_app(create_app(settings)) as srv:
        for query in QUERIES:
            r, ids_remote, scores_remote = _search(srv.url, query, "remote")
            assert r.headers["x-rerank"] == "reranked", r.headers
            _, ids_local, scores_local = _search(srv.url, query, "tiny")
            assert ids_remote == ids_local
            np.testing.assert_allclose(scores_remote, scores_local, atol=1e-4)
        endpoints = {e["url"]: e for e in srv_app_info(srv.url)}
        assert endpoints[dead]["up"] is False and endpoints[tei_server]["up"] is True


def srv_app_info(url: str) -> list[dict]:
    """The remote model's endpoints as /_rerank/health shows them."""
    return httpx.get(f"{url}/_rerank/health").json()["models"]["remote"]["endpoints"]


@pytest.mark.parametrize("fallback", [None, "tiny"])
def test_dead_endpoint_degrades_like_a_local_model(opensearch_url, tiny_model_dir, index_scifact, serve_app, fallback):
    dead = f"http://127.0.0.1:{_free_port()}"
    index = {"fallback_model": fallback} if fallback else {}
    settings = _remote_settings(opensearch_url, tiny_model_dir, [dead], **index)
    with serve_app(create_app(settings)) as srv:
        for _ in range(2):  # before and after the health check has seen it down
            body = {"query": {"match": {"text": "cells"}}, "size": 5}
            r = httpx.post(f"{srv.url}/{INDEX}/_search", json=body, timeout=60)
            assert r.status_code == 200
            if fallback:
                assert (r.headers["x-rerank"], r.headers["x-rerank-reason"], r.headers["x-rerank-model"]) == (
                    "reranked",
                    "fallback_model",
                    "tiny",
                )
            else:
                assert (r.headers["x-rerank"], r.headers["x-rerank-reason"]) == ("fallback", "overloaded")
                direct = httpx.post(f"{opensearch_url}/{INDEX}/_search", json=body).json()
                assert [h["_id"] for h in r.json()["hits"]["hits"]] == [h["_id"] for h in direct["hits"]["hits"]]
        # The rerank API degrades the same way.
        api = httpx.post(
            f"{srv.url}/v1/rerank",
            json={"model": "remote", "query": "cells", "documents": ["a cell", "a dog"]},
            timeout=60,
        )
        assert api.status_code == 429 and api.headers["x-rerank-reason"] == "overloaded"
