"""YAML configuration -> typed settings.

A bad file fails with one :class:`~es_rerank.errors.ConfigError` that lists every
problem found (pydantic collects them all), so ``check-config`` and ``serve`` can
say everything that is wrong at once.

Environment variables override the upstream connection (they win over the file):
``ES_RERANK_UPSTREAM_URL``, ``ES_RERANK_UPSTREAM_USERNAME``,
``ES_RERANK_UPSTREAM_PASSWORD``.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .blend import Blend
from .errors import ConfigError
from .experiments.config import ExperimentSettings, UbiSettings, experiment_problems  # experiments: A/B, interleaving

__all__ = [
    "Settings",
    "UpstreamSettings",
    "ModelSettings",
    "RemoteSettings",
    "IndexSettings",
    "ChunkSettings",
    "BlendSettings",
    "ServerSettings",
    "AdminSettings",
    "CorsSettings",
    "SupersedeSettings",
    "RerankApiSettings",
    "SharedCacheSettings",
    "load_settings",
    "settings_from_dict",
]

ENV_PREFIX = "ES_RERANK_"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UpstreamSettings(_Strict):
    """Where OpenSearch is and how long to wait for it."""

    url: str = "http://127.0.0.1:9200"
    # Used for es-rerank's own calls (index, health); never added to a client's
    # request, so the proxy cannot widen what a client may reach.
    username: str | None = None
    password: str | None = None
    connect_timeout: float = Field(2.0, gt=0, description="seconds to open a connection")
    timeout: float = Field(30.0, gt=0, description="seconds for a whole upstream answer")
    max_connections: int = Field(100, ge=1)
    verify_certs: bool = True

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        return url


class RemoteSettings(_Strict):
    """A model served by remote reranking servers (es_rerank/reranker/_remote.py)."""

    protocol: Literal["tei", "infinity"] = Field(
        "tei",
        description="tei: POST /rerank {query, texts} (text-embeddings-inference, es-rerank); "
        "infinity: POST /rerank {model, query, documents} (Infinity, Cohere's shape)",
    )
    endpoints: list[str] = Field(min_length=1, description="base URLs, e.g. http://10.0.0.5:8080")
    model: str | None = Field(None, description="the model name sent to the server (infinity)")
    concurrency: int = Field(4, ge=1, description="requests in flight per endpoint at most")
    timeout_s: float = Field(10.0, gt=0, description="seconds for one request; past it the endpoint is marked down")
    max_batch: int = Field(32, ge=1, description="texts per request (TEI's max_client_batch_size is 32 by default)")
    health_path: str = Field("/health", description="GET path of the health check")
    health_interval_s: float = Field(2.0, gt=0, description="seconds between health checks of each endpoint")
    api_key: str | None = Field(None, description="sent as Authorization: Bearer")

    @field_validator("endpoints")
    @classmethod
    def _check_endpoints(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"endpoint must start with http:// or https://, got {url!r}")
        return urls


class ModelSettings(_Strict):
    """One cross-encoder: an ONNX file and its tokenizer.json, or remote servers (``remote``)."""

    path: Path | None = Field(None, description="model directory (model.onnx + tokenizer.json)")
    remote: RemoteSettings | None = Field(None, description="served by remote reranking servers instead of in-process")
    onnx_file: str = "model.onnx"
    tokenizer_file: str = "tokenizer.json"
    providers: list[str] = Field(
        default_factory=lambda: ["auto"],
        description="ONNX Runtime providers in order; 'auto' = CUDA then CPU when CUDA is present",
    )
    cuda_options: dict[str, str | int] = Field(
        default_factory=dict,
        description="options for ONNX Runtime's CUDA provider, e.g. device_id, gpu_mem_limit, arena_extend_strategy",
    )
    max_length: int = Field(256, ge=8, le=8192)
    batch_size: int = Field(32, ge=1)
    head: Literal["auto", "single", "two"] = "auto"
    intra_op_threads: int = Field(0, ge=0, description="0 = physical cores")
    int8_onnx_file: str | None = Field(
        None,
        description="ONNX file (in `path`) used instead of onnx_file when the model runs on CPU, e.g. model.int8.onnx",
    )
    fp16_onnx_file: str | None = Field(
        None,
        description="ONNX file (in `path`) used instead of onnx_file when the model runs on CUDA, e.g. model.fp16.onnx",
    )
    max_batch_tokens: int | None = Field(
        None,
        ge=8,
        le=1_048_576,
        description="padded tokens per model run (rows x width; batch_size caps rows); default 1024 on CPU, 65536 on CUDA",
    )
    batch_wait_ms: float = Field(
        2.0, ge=0, le=1000, description="how long an idle model waits for concurrent requests to share a run"
    )
    cache_size: int = Field(10_000, ge=0, description="scores kept in the LRU score cache; 0 = off")
    token_cache_size: int = Field(
        20_000,
        ge=0,
        description="passages whose token ids are kept (LRU), so a document seen again is not re-tokenized; 0 = off",
    )
    warmup: bool = Field(
        True,
        description="run the model at load (on CUDA every padded width, with full and padded rows, so no request pays kernel loading)",
    )
    fuse_at_load: bool = Field(
        True,
        description="fuse an unfused transformer graph (attention, layer norms) in memory at load; needs the onnx package",
    )
    allow_spinning: bool = Field(
        False, description="let ONNX Runtime's idle intra-op threads spin (faster only on cores nothing else uses)"
    )

    @model_validator(mode="after")
    def _check_batching(self) -> ModelSettings:
        if (self.path is None) == (self.remote is None):
            raise ValueError("a model needs exactly one of path (in-process ONNX) and remote (reranking servers)")
        if self.max_batch_tokens is not None and self.max_batch_tokens < self.max_length:
            raise ValueError(
                f"max_batch_tokens ({self.max_batch_tokens}) must hold one pair of max_length ({self.max_length})"
            )
        for key in ("int8_onnx_file", "fp16_onnx_file"):
            value = getattr(self, key)
            if value is not None and (not value.strip() or Path(value).is_absolute() or ".." in Path(value).parts):
                raise ValueError(f"{key} must be a file name inside the model directory, got {value!r}")
        return self


class ChunkSettings(_Strict):
    """Long documents: truncate (default) or score windows of tokens and aggregate."""

    mode: Literal["truncate", "chunk"] = "truncate"
    chunk_tokens: int | None = Field(
        None, ge=16, description="passage tokens per chunk; default: what fits beside the query"
    )
    stride: int = Field(32, ge=0, description="tokens shared by neighbouring chunks")
    max_chunks: int = Field(8, ge=1, description="chunks scored per hit at most")
    aggregate: Literal["max", "first", "mean_top"] = "max"
    top_n: int = Field(2, ge=1, description="chunks averaged by mean_top")

    @model_validator(mode="after")
    def _check_stride(self) -> ChunkSettings:
        if self.chunk_tokens is not None and self.stride >= self.chunk_tokens:
            raise ValueError(f"stride ({self.stride}) must be smaller than chunk_tokens ({self.chunk_tokens})")
        return self


class BlendSettings(_Strict):
    """The first-stage score blended with the model's, normalized per query (es_rerank/blend.py)."""

    method: Literal["minmax", "zscore", "rrf"] = Field(
        "minmax", description="minmax or zscore per query, or rrf (reciprocal-rank fusion)"
    )
    weight: float = Field(
        ge=0.0, le=1.0, description="the first stage's share: 0 = the model alone, 1 = the first stage alone"
    )
    rrf_k: int = Field(60, ge=1, description="rrf's rank constant")

    def to_blend(self) -> Blend:
        return Blend(method=self.method, weight=self.weight, rrf_k=self.rrf_k)


class IndexSettings(_Strict):
    """Reranking for the indices whose names match ``pattern`` (fnmatch)."""

    pattern: str
    rerank: bool = True
    model: str | None = None
    fields: list[str] = Field(default_factory=lambda: ["title", "text"], min_length=1)
    template: str | None = Field(None, description="passage template such as '{title}. {text}'; default joins fields")
    window: int = Field(100, ge=1, description="first-stage hits reranked (K)")
    max_window: int = Field(500, ge=1, description="largest ext.rerank.window_size allowed")
    max_tokens: int | None = Field(None, ge=8, description="overrides the model's max_length")
    batch_size: int | None = Field(None, ge=1)
    query_text_path: str | None = Field(None, description="dotted path in the request body to take the query text from")
    expose_first_stage: bool = Field(True, description="add _rerank.first_stage_score/rank to each reranked hit")
    chunking: ChunkSettings = ChunkSettings()
    blend: BlendSettings | None = Field(
        None,
        description="blend the first-stage score into the model's (off by default; choose the weight with `es-rerank blend`)",
    )
    first_stage_query: dict | None = Field(
        None,
        description="query DSL `eval` sends, with the string {{query_text}} where the text goes; "
        "default: multi_match over `fields`, best_fields, tie_breaker 0.5 (BEIR's baseline)",
    )
    fallback_model: str | None = Field(
        None, description="a cheaper model (under `models`) that `degrade: [fallback_model]` scores with"
    )
    degrade: list[Literal["fallback_model", "shrink_window", "first_stage"]] | None = Field(
        None,
        description="what a search gets, in order, when the model cannot score its window in time: "
        "fallback_model (the whole window on the cheaper model), shrink_window (the first hits that fit), "
        "first_stage (OpenSearch's order); default [fallback_model, shrink_window, first_stage] with a "
        "fallback_model, else [shrink_window, first_stage]",
    )

    @model_validator(mode="after")
    def _check_window(self) -> IndexSettings:
        if self.window > self.max_window:
            raise ValueError(f"window ({self.window}) is larger than max_window ({self.max_window})")
        if self.degrade is not None:
            if len(set(self.degrade)) != len(self.degrade):
                raise ValueError(f"degrade lists a step twice: {self.degrade}")
            if "first_stage" in self.degrade[:-1]:
                raise ValueError("degrade: first_stage can only be the last step")
            if "fallback_model" in self.degrade and self.fallback_model is None:
                raise ValueError("degrade: fallback_model needs the index's fallback_model")
        return self

    def degrade_steps(self) -> tuple[str, ...]:
        """The ``degrade`` steps in order, the default filled in."""
        if self.degrade is not None:
            return tuple(self.degrade)
        if self.fallback_model is not None:
            return ("fallback_model", "shrink_window", "first_stage")
        return ("shrink_window", "first_stage")


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    rerank_timeout: float = Field(
        10.0, gt=0, description="seconds for scoring; past it the first-stage order is answered"
    )
    shed_overload: bool = Field(
        True,
        description="when the model's queue would not score the search within 90% of rerank_timeout at the rate "
        "it has been running, degrade as the index's `degrade` says (or answer first-stage order at once); "
        "false: queue it and wait out the timeout, no degradation",
    )
    # Limits, with OpenSearch's defaults where it has one (http.max_content_length,
    # http.max_header_size, http.max_initial_line_length).
    max_content_length: int = Field(
        100 * 1024 * 1024, ge=1, description="largest request body in bytes (also once decompressed); past it 413"
    )
    max_header_size: int = Field(8192, ge=1024, description="bytes of request headers; past them 400")
    max_initial_line_length: int = Field(4096, ge=256, description="bytes of the request line; past them 400")
    header_timeout: float = Field(30.0, gt=0, description="seconds a connection may take to send its headers")
    idle_timeout: float = Field(
        60.0, gt=0, description="seconds an idle connection (or a stalled request body) is kept open"
    )
    max_connections: int = Field(1000, ge=1, description="client connections open at once; one more is answered 503")
    admin: AdminSettings = Field(default_factory=lambda: AdminSettings())
    cors: CorsSettings = Field(default_factory=lambda: CorsSettings())
    supersede: SupersedeSettings = Field(default_factory=lambda: SupersedeSettings())


class AdminSettings(_Strict):
    """Who may read es-rerank's own endpoints past health's public part (status, upstream reachable)."""

    auth: Literal["none", "opensearch", "api_key"] = Field(
        "none",
        description="none: open to all; opensearch: the client's own credentials must be accepted by "
        "OpenSearch (GET /); api_key: the header x-rerank-api-key must equal api_key",
    )
    api_key: str | None = Field(None, description="for auth: api_key (or ES_RERANK_ADMIN_API_KEY)")

    @model_validator(mode="after")
    def _check_key(self) -> AdminSettings:
        if self.auth == "api_key" and not self.api_key:
            raise ValueError("auth: api_key needs api_key (or ES_RERANK_ADMIN_API_KEY)")
        return self


# OpenSearch's http.cors.* defaults, widened to what search UIs send (Elastic's
# connector sends x-elastic-client-meta; a compare page sends x-rerank-enabled).
CORS_ALLOW_HEADERS = (
    "X-Requested-With", "Content-Type", "Content-Length", "Authorization", "Accept", "User-Agent",
    "X-Elastic-Client-Meta", "X-Rerank-Enabled", "X-Rerank-Arm",
)  # fmt: skip
# What page code may read of an answer: every x-rerank-* header es-rerank writes.
CORS_EXPOSE_HEADERS = (
    "x-rerank", "x-rerank-reason", "x-rerank-model", "x-rerank-provider", "x-rerank-window",
    "x-rerank-upstream-ms", "x-rerank-tokenize-ms", "x-rerank-queue-ms", "x-rerank-inference-ms",
    "x-rerank-pairs", "x-rerank-cache-hits", "x-rerank-total-ms", "x-rerank-items", "x-rerank-item-outcomes",
    "x-rerank-arm", "x-rerank-query-id",
)  # fmt: skip


class CorsSettings(_Strict):
    """CORS answered by es-rerank itself, as OpenSearch's ``http.cors.*`` would (es_rerank/cors.py).
    Off: OpenSearch's own CORS headers are relayed and preflights forwarded to it."""

    enabled: bool = Field(
        False, description="http.cors.enabled: answer preflights and add CORS headers to every answer"
    )
    allow_origin: str | list[str] = Field(
        default_factory=list,
        description="http.cors.allow-origin: '*', origins (a list, or one string, comma-separated), "
        "or a regular expression between slashes, e.g. '/https?:\\/\\/localhost(:[0-9]+)?/'",
    )
    allow_methods: list[str] = Field(
        default_factory=lambda: ["OPTIONS", "HEAD", "GET", "POST", "PUT", "DELETE"],
        description="http.cors.allow-methods",
    )
    allow_headers: list[str] = Field(
        default_factory=lambda: list(CORS_ALLOW_HEADERS), description="http.cors.allow-headers ('*': any)"
    )
    allow_credentials: bool = Field(False, description="http.cors.allow-credentials")
    max_age: int = Field(1728000, ge=0, description="http.cors.max-age: seconds a browser may cache a preflight")
    expose_headers: list[str] = Field(
        default_factory=lambda: list(CORS_EXPOSE_HEADERS),
        description="headers page code may read (Access-Control-Expose-Headers); default the x-rerank-* set",
    )

    @model_validator(mode="after")
    def _check_origin(self) -> CorsSettings:
        if self.enabled and not self.allow_origin:
            raise ValueError("enabled needs allow_origin ('*', a list of origins or /regex/)")
        if (
            isinstance(self.allow_origin, str)
            and len(self.allow_origin) > 1
            and self.allow_origin[0] == self.allow_origin[-1] == "/"
        ):
            import re

            try:
                re.compile(self.allow_origin[1:-1])
            except re.error as exc:
                raise ValueError(f"allow_origin is not a valid regular expression: {exc}") from None
        return self


class SupersedeSettings(_Strict):
    """Search-as-you-type: a client's newest search wins the model over its older queued ones."""

    enabled: bool = Field(
        True,
        description="a search queued behind the model is answered in first-stage order (reason superseded) "
        "when the same client sends a newer one",
    )
    client_header: str | None = Field(
        None, description="request header naming the client (else ext.ubi.client_id, else address and index)"
    )


class RerankApiSettings(_Strict):
    """``POST /v1/rerank`` (Cohere's shape; ``/v2/rerank`` too) and ``POST /rerank`` (TEI's):
    the engine without an index, for RAG pipelines (es_rerank/rerank_api.py)."""

    enabled: bool = Field(
        True, description="answer /v1/rerank, /v2/rerank and /rerank (POST); false: pass them to OpenSearch"
    )
    model: str | None = Field(
        None, description="the model used when a request names none (default: default_model, or the only one)"
    )
    aliases: dict[str, str] = Field(
        default_factory=dict, description="names clients send (e.g. rerank-english-v3.0) -> a model under `models`"
    )
    strict_model: bool = Field(
        False, description="a request naming an unknown model is refused 400; false: it is scored by `model`"
    )
    fallback_model: str | None = Field(
        None, description="a cheaper model scoring the request when `model` cannot in time"
    )
    max_documents: int = Field(1000, ge=1, description="documents per request at most; past it 400")
    max_tokens: int | None = Field(
        None, ge=8, description="tokens per (query, document) pair; default the model's max_length"
    )
    batch_size: int | None = Field(None, ge=1)
    api_key: str | None = Field(
        None, description="when set, requests must send `Authorization: Bearer <api_key>` (or ES_RERANK_RERANK_API_KEY)"
    )


class SharedCacheSettings(_Strict):
    """A score cache shared by several proxies through Redis (or Valkey), beside each model's own LRU."""

    url: str = Field(description="redis://host:port/db (rediss:// for TLS)")
    ttl_s: int = Field(86_400, ge=1, description="seconds a score is kept")
    prefix: str = Field("es-rerank:score:", description="key prefix: one per deployment sharing a Redis")
    timeout_ms: float = Field(50.0, gt=0, description="a look-up or write slower than this counts as a failure")
    retry_after_s: float = Field(
        5.0, gt=0, description="after a failure, Redis is left alone this long (searches go on without it)"
    )
    max_pending: int = Field(
        10_000, ge=1, description="scores waiting to be written at most; more are dropped (counted)"
    )


class Settings(_Strict):
    upstream: UpstreamSettings = UpstreamSettings()
    server: ServerSettings = ServerSettings()
    models: dict[str, ModelSettings] = Field(default_factory=dict)
    indices: list[IndexSettings] = Field(default_factory=list)
    default_model: str | None = None
    experiments: list[ExperimentSettings] = Field(default_factory=list)  # es_rerank/experiments/
    ubi: UbiSettings = UbiSettings()
    rerank_api: RerankApiSettings = RerankApiSettings()
    shared_cache: SharedCacheSettings | None = None

    @model_validator(mode="after")
    def _check_models(self) -> Settings:
        problems = _reference_problems(self.model_dump())
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def model_for(self, spec: IndexSettings) -> str:
        """The model name an index uses (its own, the default, or the only one)."""
        if spec.model:
            return spec.model
        if self.default_model:
            return self.default_model
        return next(iter(self.models))

    def api_model_for(self, requested: str | None) -> str | None:
        """The model ``/v1/rerank`` and ``/rerank`` use for a request naming ``requested``
        (None: an unknown name refused under ``strict_model``)."""
        api = self.rerank_api
        if requested:
            if requested in self.models:
                return requested
            if requested in api.aliases:
                return api.aliases[requested]
            if api.strict_model:
                return None
        return api.model or self.default_model or next(iter(self.models), None)

    def index_for(self, target: str) -> IndexSettings | None:
        """The settings that apply to a search target (``a``, ``a,b``, ``logs-*``).

        Every comma-separated part must match the same entry; otherwise the request
        spans indices configured differently and is not reranked.
        """
        parts = [p for p in target.split(",") if p]
        if not parts:
            return None
        chosen: IndexSettings | None = None
        for part in parts:
            match = next((s for s in self.indices if fnmatch.fnmatchcase(part, s.pattern)), None)
            if match is None or (chosen is not None and match is not chosen):
                return None
            chosen = match
        return chosen


def _reference_problems(data: Mapping) -> list[str]:
    """Names that point nowhere (index -> model, default_model). Works on the raw
    mapping too, so it is reported even when other fields fail validation."""
    models: Mapping[str, Any] = data["models"] if isinstance(data.get("models"), Mapping) else {}
    default = data.get("default_model")
    problems = []
    if isinstance(default, str) and default not in models:
        problems.append(f"default_model {default!r} is not under models")
    indices: list[Any] = data["indices"] if isinstance(data.get("indices"), list) else []
    for spec in indices:
        if not isinstance(spec, Mapping) or spec.get("rerank") is False:
            continue
        pattern = spec.get("pattern")
        name = spec.get("model") or default
        if name is None:
            if len(models) != 1:
                problems.append(f"index {pattern!r}: name a model (models: {sorted(models)})")
        elif name not in models:
            problems.append(f"index {pattern!r}: model {name!r} is not under models")
        fallback = spec.get("fallback_model")
        if isinstance(fallback, str) and fallback not in models:
            problems.append(f"index {pattern!r}: fallback_model {fallback!r} is not under models")
    api: Mapping[str, Any] = data["rerank_api"] if isinstance(data.get("rerank_api"), Mapping) else {}
    for key in ("model", "fallback_model"):
        if isinstance(api.get(key), str) and api[key] not in models:
            problems.append(f"rerank_api.{key} {api[key]!r} is not under models")
    aliases: Mapping[str, Any] = api["aliases"] if isinstance(api.get("aliases"), Mapping) else {}
    for alias, target in aliases.items():
        if isinstance(target, str) and target not in models:
            problems.append(f"rerank_api.aliases.{alias}: {target!r} is not under models")
    problems += experiment_problems(data)
    return problems


def _format_errors(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        out.append(f"{where}: {msg}")
    return out


def _apply_env(data: dict, env: Mapping[str, str]) -> dict:
    key = env.get(f"{ENV_PREFIX}ADMIN_API_KEY")
    if key:
        server = dict(data.get("server") or {})
        server["admin"] = {"auth": "api_key", **dict(server.get("admin") or {}), "api_key": key}
        data = {**data, "server": server}
    key = env.get(f"{ENV_PREFIX}RERANK_API_KEY")
    if key:
        data = {**data, "rerank_api": {**dict(data.get("rerank_api") or {}), "api_key": key}}
    upstream = dict(data.get("upstream") or {})
    for key in ("url", "username", "password"):
        value = env.get(f"{ENV_PREFIX}UPSTREAM_{key.upper()}")
        if value:
            upstream[key] = value
    if upstream:
        data = {**data, "upstream": upstream}
    return data


def _resolve_paths(data: dict, base: Path) -> dict:
    """Model paths in a file are relative to that file's folder."""
    models = data.get("models")
    if not isinstance(models, dict):
        return data
    resolved = {}
    for name, spec in models.items():
        if isinstance(spec, dict) and isinstance(spec.get("path"), str):
            spec = {**spec, "path": str((base / os.path.expanduser(spec["path"])).resolve())}
        resolved[name] = spec
    return {**data, "models": resolved}


def settings_from_dict(data: Mapping, *, base: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Validate a config mapping (as read from YAML) into :class:`Settings`."""
    if not isinstance(data, Mapping):
        raise ConfigError("invalid configuration", ["the top level must be a mapping"])
    data = _apply_env(dict(data), os.environ if env is None else env)
    if base is not None:
        data = _resolve_paths(data, base)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = _format_errors(exc)
        # Cross-field checks do not run once a field fails: add them from the raw data.
        problems += [p for p in _reference_problems(data) if not any(p in q for q in problems)]
        raise ConfigError("invalid configuration", problems) from None


def load_settings(path: str | Path, *, env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML", [str(exc)]) from None
    return settings_from_dict(data, base=path.resolve().parent, env=env)


def check_model_files(settings: Settings) -> list[str]:
    """Problems with model files on disk (checked by check-config and at start)."""
    problems = []
    for name, spec in settings.models.items():
        if spec.path is None:
            continue  # remote: checked by its health checks
        for filename in (spec.onnx_file, spec.tokenizer_file):
            if not (spec.path / filename).is_file():
                problems.append(f"models.{name}: {spec.path / filename} does not exist")
    return problems
