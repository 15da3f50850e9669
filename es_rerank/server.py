"""Serving the proxy with uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from .app import create_app
from .config import Settings, check_model_files
from .errors import ConfigError
from .httpserver import limits_from, uvicorn_config

__all__ = ["serve"]

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
