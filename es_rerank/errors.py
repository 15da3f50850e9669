"""One error hierarchy for es-rerank, rendered in OpenSearch's error shape.

Every error the proxy raises itself carries an HTTP status and a ``type`` of its
own, so a client sees the same ``{"error": {"root_cause": [...], "type", "reason"},
"status"}`` body it gets from OpenSearch. Errors from OpenSearch are never wrapped:
they are passed through unchanged.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "RerankError",
    "ConfigError",
    "BadRequestError",
    "UnknownModelError",
    "BodyTooDeepError",
    "ModelError",
    "ModelOverloadedError",
    "ModelOptionError",
    "UpstreamError",
    "UpstreamUnavailableError",
    "UpstreamTimeoutError",
    "UpstreamBadResponseError",
    "ContentTooLongError",
    "MethodNotAllowedError",
    "ClientTimeoutError",
    "AccessDeniedError",
    "ToolError",
    "DatasetError",
    "EvaluationError",
    "BenchError",
    "LocalNodeError",
    "error_body",
]


class RerankError(Exception):
    """Base of every error es-rerank raises itself."""

    status: int = 500
    type: str = "rerank_exception"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def to_body(self) -> dict[str, Any]:
        return error_body(self.type, self.reason, self.status)


class ConfigError(RerankError):
    """The configuration file is missing, unreadable or invalid."""

    type = "rerank_config_exception"

    def __init__(self, reason: str, problems: list[str] | None = None) -> None:
        self.problems = problems or []
        if self.problems:
            reason = reason + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(reason)


class BadRequestError(RerankError):
    """The request asks es-rerank for something it cannot do (bad ``ext.rerank``)."""

    status = 400
    type = "rerank_illegal_argument_exception"


class UnknownModelError(BadRequestError):
    """The request or the config names a model es-rerank does not serve."""

    type = "rerank_unknown_model_exception"


class BodyTooDeepError(BadRequestError):
    """A request body nested deeper than OpenSearch survives (it dies of a stack overflow)."""

    type = "rerank_parse_exception"


class ModelError(RerankError):
    """A model could not be loaded or run (missing file, missing onnxruntime...)."""

    type = "rerank_model_exception"


class ModelOptionError(ModelError, ValueError):
    """An engine option is out of range (batch_size 0, a negative wait...); a ValueError too."""


class ModelOverloadedError(ModelError):
    """A model's queue would not score a call within its time budget: the call was not queued."""

    status = 503
    type = "rerank_model_overloaded_exception"


class UpstreamError(RerankError):
    """OpenSearch could not be asked: the proxy never got an answer."""

    status = 502
    type = "rerank_upstream_exception"


class UpstreamUnavailableError(UpstreamError):
    """OpenSearch refused or dropped the connection."""

    status = 502
    type = "rerank_upstream_unavailable_exception"


class UpstreamTimeoutError(UpstreamError):
    """OpenSearch did not answer within the configured timeout."""

    status = 504
    type = "rerank_upstream_timeout_exception"


class UpstreamBadResponseError(UpstreamError):
    """OpenSearch answered something the proxy could not read (truncated, not JSON, bad gzip, odd shape)."""

    status = 502
    type = "rerank_upstream_bad_response_exception"


class ContentTooLongError(RerankError):
    """A request body past ``server.max_content_length`` (OpenSearch's http.max_content_length)."""

    status = 413
    type = "rerank_content_too_long_exception"


class MethodNotAllowedError(RerankError):
    """An HTTP method OpenSearch has no handler for."""

    status = 405
    type = "rerank_method_not_allowed_exception"


class ClientTimeoutError(RerankError):
    """The client stopped sending its body for longer than ``server.idle_timeout``."""

    status = 408
    type = "rerank_request_timeout_exception"


class AccessDeniedError(RerankError):
    """The credentials do not open es-rerank's own endpoints."""

    status = 401
    type = "rerank_security_exception"


class ToolError(RerankError):
    """An offline tool (es_rerank.tools, the CLI) cannot do what it was asked.

    Tool errors are never answered over HTTP: they declare no ``status`` or ``type`` of
    their own, and the CLI prints their ``reason`` and exits 1.
    """


class DatasetError(ToolError):
    """A BEIR file (corpus, queries, qrels) or a saved run is missing, unreadable or malformed."""


class EvaluationError(ToolError):
    """The evaluation's options or targets are unusable (K too large, no proxy, a failing search...)."""


class BenchError(ToolError):
    """The benchmark cannot run: missing first stage, a missing peer library, bad options."""


class LocalNodeError(ToolError):
    """The local OpenSearch node could not be fetched, started or stopped."""


def error_body(type_: str, reason: str, status: int) -> dict[str, Any]:
    """OpenSearch's error shape: one root cause equal to the error itself."""
    cause = {"type": type_, "reason": reason}
    return {"error": {"root_cause": [cause], **cause}, "status": status}
