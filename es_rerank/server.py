"""Serving the proxy with uvicorn, and the demo that wires everything together."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

import uvicorn

from .app import create_app
from .config import Settings, check_model_files, settings_from_dict
from .errors import ConfigError
from .httpserver import limits_from, uvicorn_config

__all__ = ["serve", "demo_settings", "demo_config", "write_demo_config", "when_serving", "prepare_demo_index", "repo_root"]

logger = logging.getLogger("es_rerank")


def serve(settings: Settings, *, host: str | None = None, port: int | None = None, log_level: str = "info") -> None:
    """Load the models and serve until interrupted."""
    problems = check_model_files(settings)
    if problems:
        raise ConfigError("invalid configuration", problems)
    app = create_app(settings)
    for name, reranker in app.rerankers.items():
        logger.info("model %s ready on %s", name, reranker.info().get("provider"))
    config = uvicorn_config(
        app,
        host=host or settings.server.host,
        port=settings.server.port if port is None else port,
        limits=limits_from(settings.server),
        log_level=log_level,
    )
    uvicorn.Server(config).run()


def repo_root() -> Path:
    """The checkout es-rerank runs from (editable install): home of demo/ and mappings/."""
    return Path(__file__).resolve().parent.parent


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

    from .errors import RerankError

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
