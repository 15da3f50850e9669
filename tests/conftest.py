"""Shared fixtures: a real OpenSearch (started once per run), a tiny real ONNX
model, and the proxy served by uvicorn on loopback in a thread."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DEMO_TOKENIZER = ROOT / "demo" / "model" / "tokenizer.json"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def opensearch_url():
    """A real single-node OpenSearch: the one CI started (ES_RERANK_TEST_OPENSEARCH_URL)
    or one this run starts and stops."""
    url = os.environ.get("ES_RERANK_TEST_OPENSEARCH_URL")
    if url:
        yield url.rstrip("/")
        return
    from es_rerank.tools.localnode import LocalOpenSearch

    node = LocalOpenSearch(port=free_port())
    status = node.start()
    try:
        yield status.url
    finally:
        node.stop()


@pytest.fixture(scope="session")
def elasticsearch_url(tmp_path_factory):
    """A real single-node Elasticsearch 7.10.2: the one ES_RERANK_TEST_ELASTICSEARCH_URL
    names, or one this run starts (in a data dir of its own) and stops."""
    url = os.environ.get("ES_RERANK_TEST_ELASTICSEARCH_URL")
    if url:
        yield url.rstrip("/")
        return
    import shutil

    from es_rerank.tools.localnode import LocalOpenSearch

    node = LocalOpenSearch(
        distribution="elasticsearch",
        port=free_port(),
        transport_port=free_port(),
        data_dir=tmp_path_factory.mktemp("es"),
    )
    status = node.start()
    try:
        assert status.version == "7.10.2"
        yield status.url
    finally:
        node.stop(timeout=20)
        if node.runtime_root != node.data_dir:
            shutil.rmtree(node.runtime_root, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tinymodel import build_tiny_model

    out = tmp_path_factory.mktemp("tiny-model")
    build_tiny_model(out, tokenizer_json=DEMO_TOKENIZER)
    return out


class ServedApp:
    """An ASGI app served by uvicorn on a free loopback port, in a thread, with
    es-rerank's HTTP protocol (``limits``: its own, else the app's settings')."""

    def __init__(self, app, limits=None) -> None:
        import uvicorn

        from es_rerank.httpserver import limits_from, uvicorn_config

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = getattr(app, "settings", None)
        if limits is None and settings is not None:
            limits = limits_from(settings.server)
        kwargs = {} if limits is None else {"limits": limits}
        # The proxy's own protocol and limits, as `es-rerank serve` runs it.
        config = uvicorn_config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on", **kwargs)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServedApp:
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def serve_app():
    """Factory: ``with serve_app(app) as served: served.url``."""
    return ServedApp
