"""`es-rerank demo` as a user runs it: a process, its output, the config it writes, its port.

Against the suite's OpenSearch (``--opensearch-url``), a small corpus and the tiny
model: each progress line is printed once (not also as a log line), the config it
serves is written where asked and loads, and "serving" is said only once the port
answers. Waits are bounded by events (lines read, the process ending).
"""

from __future__ import annotations

import gzip
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from opensearchpy import OpenSearch

from es_rerank.config import load_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
INDEX = "rr-demo"


def free_port() -> int:
    """A free loopback port (not imported from conftest: with several conftest.py files
    the name resolves to whichever was loaded first)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reader(stream, lines: queue.Queue[str | None], kept: list[str]) -> None:
    for line in iter(stream.readline, ""):
        kept.append(line.rstrip("\n"))
        lines.put(line.rstrip("\n"))
    lines.put(None)


@pytest.fixture()
def small_corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.jsonl"
    with gzip.open(ROOT / "demo" / "scifact" / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        path.write_text("".join(next(f) for _ in range(30)))
    return path


def test_demo_writes_its_config_prints_once_and_serves_after_binding(
    opensearch_url, tiny_model_dir, small_corpus, tmp_path
):
    client = OpenSearch(opensearch_url, timeout=60)
    client.indices.delete(index=INDEX, ignore_unavailable=True)
    port = free_port()
    config_path = tmp_path / "cfg" / "demo.yaml"
    cmd = [
        sys.executable,
        "-m",
        "es_rerank.cli",
        "demo",
        "--opensearch-url",
        opensearch_url,
        "--port",
        str(port),
        "--model",
        str(tiny_model_dir),
        "--corpus",
        str(small_corpus),
        "--index",
        INDEX,
        "--window",
        "10",
        "--write-config",
        str(config_path),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    out_lines: queue.Queue[str | None] = queue.Queue()
    out: list[str] = []
    err: list[str] = []
    threads = [
        threading.Thread(target=_reader, args=(proc.stdout, out_lines, out), daemon=True),
        threading.Thread(target=_reader, args=(proc.stderr, queue.Queue(), err), daemon=True),
    ]
    for t in threads:
        t.start()
    try:
        while True:
            line = out_lines.get(timeout=300)
            assert line is not None, "demo ended early:\n" + "\n".join(out + err)
            if line.startswith("es-rerank serving on"):
                break
        # Said only once the port is bound and the proxy answers.
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        answer = httpx.post(
            f"http://127.0.0.1:{port}/{INDEX}/_search",
            json={"query": {"match": {"text": "cells"}}, "size": 3},
            timeout=60,
        )
        assert answer.status_code == 200 and answer.headers["x-rerank"] == "reranked"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for t in threads:
            t.join(timeout=10)
        client.indices.delete(index=INDEX, ignore_unavailable=True)

    assert f"wrote the config it serves to {config_path}" in out
    assert f"indexed 30 documents into [{INDEX}]" in out
    assert sum(line.startswith("es-rerank serving on") for line in out) == 1
    assert not any("_rerank/health" in line for line in out + err)  # the wait for the port makes no request
    # Every line printed is printed once: not again as a log line on stderr.
    printed = [line.strip() for line in out if line.strip()]
    assert len(printed) == len(set(printed)), out
    doubled = [line for line in printed if any(log.endswith(": " + line) for log in err)]
    assert not doubled, (doubled, err)
    # "loading the model" comes before the model's log line; "serving" after uvicorn bound the port.
    assert out.index("loading the model ...") < out.index(
        next(line for line in out if line.startswith("es-rerank serving on"))
    )

    settings = load_settings(config_path)
    assert settings.server.port == port and settings.upstream.url == opensearch_url
    spec = settings.index_for(INDEX)
    assert spec is not None and spec.window == 10 and settings.models["demo"].path == tiny_model_dir.resolve()
