"""The demo: its config, its index, and announcing when es-rerank serves (``es-rerank demo``)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..config import Settings, settings_from_dict
from ..errors import RerankError

__all__ = [
    "run_demo",
    "demo_settings",
    "demo_config",
    "write_demo_config",
    "when_serving",
    "prepare_demo_index",
    "repo_root",
    "DEMO_CONFIG",
]

logger = logging.getLogger("es_rerank")


def repo_root() -> Path:
    """The checkout es-rerank runs from (editable install): home of demo/ and mappings/."""
    return Path(__file__).resolve().parent.parent.parent


DEMO_CONFIG = "es-rerank.demo.yaml"


def demo_config(*, upstream_url: str, model_dir: Path, port: int, window: int = 20, index: str = "scifact") -> dict:
    """The demo's config as a plain mapping (what :func:`write_demo_config` writes)."""
    return {
        "upstream": {"url": upstream_url},
        "server": {"port": port},
        # Absolute: the file works from any directory (paths are relative to the file otherwise).
        "models": {"demo": {"path": str(Path(model_dir).resolve())}},
        "indices": [{"pattern": index, "model": "demo", "fields": ["title", "text"], "window": window}],
    }


def demo_settings(
    *, upstream_url: str, model_dir: Path, port: int, window: int = 20, index: str = "scifact"
) -> Settings:
    return settings_from_dict(
        demo_config(upstream_url=upstream_url, model_dir=model_dir, port=port, window=window, index=index), env={}
    )


def write_demo_config(path: Path, config: dict) -> Path:
    """Write the config the demo serves, so ``serve``, ``eval`` and ``plan`` can be given the same."""
    import yaml

    path = Path(path)
    text = (
        "# Written by `es-rerank demo`: the config it serves.\n"
        f"# es-rerank serve --config {path}   (es-rerank eval / plan --config {path} ...)\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise RerankError(f"cannot write the demo config to {path}: {exc.strerror}") from None
    return path


def when_serving(host: str, port: int, callback: Callable[[], None], *, timeout: float = 600.0) -> threading.Thread:
    """Call ``callback`` once ``host:port`` accepts a connection (uvicorn binds after the app's startup).

    A daemon thread trying every 0.2 s, for at most ``timeout`` seconds: the serving
    code is left as it is, and nothing is announced before a client could connect. A
    bare connection, not a request: no access-log line for it.
    """
    import socket

    def wait() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((host, port), timeout=2.0):
                    pass
            except OSError:  # not bound yet
                time.sleep(0.2)
                continue
            callback()
            return

    thread = threading.Thread(target=wait, name="es-rerank-demo-announce", daemon=True)
    thread.start()
    return thread


def prepare_demo_index(
    upstream_url: str, corpus: Path, mapping: Path, *, index: str = "scifact", echo: Callable[[str], None] | None = None
) -> None:
    """Create and fill the demo index unless it is already there; ``echo`` shows progress (default: the log)."""
    from opensearchpy import OpenSearch

    from .indexing import index_corpus, load_mapping

    say = echo or logger.info
    client = OpenSearch(upstream_url, timeout=120)
    if client.indices.exists(index=index):
        count = client.count(index=index)["count"]
        say(f"index [{index}] already holds {count} documents")
        return
    say(f"indexing {corpus} into [{index}] ...")
    n = index_corpus(client, index, corpus, mapping=load_mapping(mapping))
    say(f"indexed {n} documents into [{index}]")


def run_demo(
    *,
    port: int = 8000,
    opensearch_port: int = 9200,
    opensearch_url: str | None = None,
    model_dir: Path | None = None,
    corpus: Path | None = None,
    index: str = "scifact",
    window: int = 20,
    config_out: Path = Path(DEMO_CONFIG),
    log_level: str = "info",
    echo: Callable[[str], None] = print,
) -> None:
    """``es-rerank demo``: start OpenSearch (or use ``opensearch_url``), index SciFact, serve es-rerank.

    ``echo`` tells the user each step; serving runs until interrupted.
    """
    import socket

    from ..server import serve
    from .localnode import LocalOpenSearch

    root = repo_root()
    model_dir = model_dir or root / "demo" / "model"
    corpus = corpus or root / "demo" / "scifact" / "corpus.jsonl.gz"
    mapping = root / "mappings" / "scifact.json"
    # The demo tells its own progress; the indexer's log lines would say it a second time.
    logging.getLogger("es_rerank.tools.indexing").setLevel(max(logging.WARNING, logging.getLogger().level))
    for path in (model_dir, corpus, mapping):
        if not path.exists():
            raise RerankError(f"{path} not found: run the demo from a checkout of es-rerank, or pass --model/--corpus")
    with socket.socket() as probe:  # a taken port would answer the "serving" check for someone else
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise RerankError(f"port {port} is taken: pass another --port") from None
    if opensearch_url is None:
        status = LocalOpenSearch(port=opensearch_port, on_progress=echo).start()
        if status.url is None:  # start() returns a running node, whose status has its URL
            raise RerankError("the local OpenSearch started but gave no URL")
        upstream, where = status.url, f"OpenSearch {status.version} at {status.url}"
    else:
        upstream, where = opensearch_url.rstrip("/"), f"OpenSearch at {opensearch_url}"
    echo(where)
    prepare_demo_index(upstream, corpus, mapping, index=index, echo=echo)
    config = demo_config(upstream_url=upstream, model_dir=model_dir, port=port, window=window, index=index)
    settings = settings_from_dict(config, env={})
    written = write_demo_config(config_out, config)
    echo(f"wrote the config it serves to {written}")
    echo("loading the model ...")
    banner = _banner(upstream, port, index, window, written, opensearch_url, opensearch_port)
    when_serving("127.0.0.1", port, lambda: echo(banner))
    serve(settings, port=port, log_level=log_level)


def _banner(
    upstream: str, port: int, index: str, window: int, written: Path, opensearch_url: str | None, opensearch_port: int
) -> str:
    proxy = f"http://127.0.0.1:{port}"
    query = '{"query":{"match":{"text":"vitamin D deficiency and depression"}},"size":5,"_source":["title"]}'
    stop = (
        "Stop with Ctrl-C."
        if opensearch_url
        else f"Stop with Ctrl-C; `es-rerank opensearch stop --port {opensearch_port}` stops OpenSearch."
    )
    return (
        f"\nes-rerank serving on {proxy}: index [{index}] reranked with K = {window} on CPU "
        f"(about a second a search; raise --window for quality, lower it for speed).\n"
        f"Try the same query direct and through es-rerank:\n"
        f"  curl -s -H 'content-type: application/json' '{upstream}/{index}/_search?pretty' -d '{query}'\n"
        f"  curl -s -H 'content-type: application/json' '{proxy}/{index}/_search?pretty' -d '{query}'\n"
        f"Or side by side in a browser: {proxy}/_rerank/ui/?index={index}\n"
        f"Measure it: es-rerank eval --config {written} --index {index} ...  (see README)\n{stop}\n"
    )
