"""es-rerank's own endpoints under ``/_rerank/``: health and metrics, and who may read them.

Health has a public part (is es-rerank up, can it reach OpenSearch) that load
balancers read without credentials; model paths, providers, threads, the upstream's
last error and the metrics are behind ``server.admin.auth`` when it is set:
``opensearch`` asks OpenSearch whether the client's own credentials are good (so
whoever may read the cluster may read its proxy), ``api_key`` compares a key of
es-rerank's own.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import Response

from .config import AdminSettings, UpstreamSettings
from .errors import AccessDeniedError, RerankError, error_body
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .reranker import Reranker
from .responses import json_response
from .ui import ui_response
from .upstream import Transport

__all__ = ["Admin"]

_CREDENTIAL_HEADERS = ("authorization", "cookie", "security-tenant")
_HEALTH_PROBE_TIMEOUT_S = 2.0


class Admin:
    def __init__(
        self,
        settings: AdminSettings,
        *,
        upstream: Transport,
        credentials: UpstreamSettings,
        rerankers: Mapping[str, Reranker],
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self.credentials = credentials  # es-rerank's own, for its health probe only
        self.rerankers = rerankers
        self.metrics = metrics

    async def handle(self, request: Request, name: str) -> Response:
        if name == "health" and request.method in ("GET", "HEAD"):
            return await self.health(request)
        if name == "ui" or name.startswith("ui/"):
            page = ui_response(request, name[3:])  # the compare page (es_rerank/ui/)
            if page is not None:
                return page
        if name == "metrics" and request.method == "GET":
            await self._authorize(request)
            return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)
        return json_response(
            error_body("rerank_resource_not_found_exception", f"no es-rerank endpoint [/_rerank/{name}]", 404), 404
        )

    async def health(self, request: Request) -> Response:
        """200 when OpenSearch answers, 503 when it does not; details for the authorized."""
        await self._probe()
        state = self.upstream.state
        status = "ok" if state.reachable else "upstream_unavailable"
        body: dict = {"status": status, "upstream": state.public()}
        # A model not running as configured (CUDA asked for, CPU in use): serving, but said.
        infos = {name: r.info() for name, r in self.rerankers.items()}
        warnings = [f"model {name}: {i['warning']}" for name, i in infos.items() if i.get("warning")]
        if warnings:
            body["warnings"] = warnings
            if state.reachable:
                body["status"] = "degraded"
        try:
            await self._authorize(request)
        except AccessDeniedError:
            pass  # the public part only
        else:
            body["upstream"] = {"url": self.upstream.base_url, **state.details()}
            body["models"] = {
                name: {**r.info(), "queue_wait_s": r.queue_wait_s()} for name, r in self.rerankers.items()
            }
        return json_response(body, 200 if state.reachable else 503)

    async def _probe(self) -> None:
        """Ask OpenSearch ``GET /`` with es-rerank's own credentials; the answer updates its state."""
        settings = self.credentials
        headers = []
        if settings.username:
            token = base64.b64encode(f"{settings.username}:{settings.password or ''}".encode()).decode()
            headers.append(("authorization", f"Basic {token}"))
        try:
            await self.upstream.request("GET", b"/", headers=headers, timeout=_HEALTH_PROBE_TIMEOUT_S)
        except RerankError:
            pass  # recorded in upstream.state

    async def _authorize(self, request: Request) -> None:
        auth = self.settings.auth
        if auth == "none":
            return
        if auth == "api_key":
            given = request.headers.get("x-rerank-api-key", "")
            if not hmac.compare_digest(given.encode(), (self.settings.api_key or "").encode()):
                raise AccessDeniedError("missing or wrong x-rerank-api-key for es-rerank's own endpoints")
            return
        # Whatever the client brings (maybe nothing): a cluster open to all opens these too.
        credentials = [(k, v) for k, v in request.headers.items() if k.lower() in _CREDENTIAL_HEADERS]
        answer = await self.upstream.request("GET", b"/", headers=credentials, timeout=_HEALTH_PROBE_TIMEOUT_S)
        if not 200 <= answer.status < 300:
            raise AccessDeniedError(f"OpenSearch refused these credentials (HTTP {answer.status})")
