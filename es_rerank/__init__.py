"""es-rerank: a drop-in reranking proxy for OpenSearch and Elasticsearch."""

from .app import RerankProxy, create_app, load_rerankers
from .config import IndexSettings, ModelSettings, Settings, load_settings, settings_from_dict
from .errors import (
    BadRequestError,
    ConfigError,
    LocalNodeError,
    ModelError,
    ModelOverloadedError,
    RerankError,
    UnknownModelError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from .reranker import OnnxReranker, Reranker
from .upstream import Upstream

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "BadRequestError",
    "ConfigError",
    "IndexSettings",
    "LocalNodeError",
    "ModelError",
    "ModelOverloadedError",
    "ModelSettings",
    "OnnxReranker",
    "RerankError",
    "RerankProxy",
    "Reranker",
    "Settings",
    "UnknownModelError",
    "Upstream",
    "UpstreamError",
    "UpstreamTimeoutError",
    "UpstreamUnavailableError",
    "create_app",
    "load_rerankers",
    "load_settings",
    "settings_from_dict",
]
