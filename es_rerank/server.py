"""Serving the proxy with uvicorn, and the demo that wires everything together."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import uvicorn

from .app import create_app
from .config import Settings, check_model_files, settings_from_dict
from .errors import ConfigError

__all__ = ["serve", "demo_settings", "repo_root"]

logger = logging.getLogger("es_rerank")


def serve(settings: Settings, *, host: str | None = None, port: int | None = None, log_level: str = "info") -> None:
    """Load the models and serve until interrupted."""
    problems = check_model_files(settings)
    if problems:
        raise ConfigError("invalid configuration", problems)
    app = create_app(settings)
    for name, reranker in app.rerankers.items():
        logger.info("model %s ready on %s", name, reranker.info().get("provider"))
    uvicorn.run(
        app,
        host=host or settings.server.host,
        port=settings.server.port if port is None else port,
        log_level=log_level,
        # OpenSearch sends neither header; a drop-in answer does not either.
        server_header=False,
        date_header=False,
    )


def repo_root() -> Path:
    """The checkout es-rerank runs from (editable install): home of demo/ and mappings/."""
    return Path(__file__).resolve().parent.parent


def demo_settings(*, upstream_url: str, model_dir: Path, port: int, window: int = 20) -> Settings:
    return settings_from_dict(
        {
            "upstream": {"url": upstream_url},
            "server": {"port": port},
            "models": {"demo": {"path": str(model_dir)}},
            "indices": [{"pattern": "scifact", "model": "demo", "fields": ["title", "text"], "window": window}],
        },
        env={},
    )


def prepare_demo_index(
    upstream_url: str, corpus: Path, mapping: Path, *, index: str = "scifact", echo: Callable[[str], None] = print
) -> None:
    """Create and fill the demo index unless it is already there."""
    from opensearchpy import OpenSearch

    from .indexing import index_corpus, load_mapping

    client = OpenSearch(upstream_url, timeout=120)
    if client.indices.exists(index=index):
        count = client.count(index=index)["count"]
        echo(f"index [{index}] already holds {count} documents")
        return
    echo(f"indexing {corpus} into [{index}] ...")
    n = index_corpus(client, index, corpus, mapping=load_mapping(mapping))
    echo(f"indexed {n} documents into [{index}]")
