"""The rerank API: es-rerank's engine without an index, for RAG pipelines.

Two shapes, on the same models, batcher, caches, deadlines and metrics as a search:

- ``POST /v1/rerank`` (Cohere's, also Jina's and Voyage's):
  ``{model, query, documents, top_n, return_documents, rank_fields}`` ->
  ``{id, results: [{index, relevance_score, document?}], meta}``; documents are strings
  or objects (``text``, or the ``rank_fields`` joined); ``relevance_score`` in [0, 1].
  ``POST /v2/rerank`` is Cohere's v2 shape (strings only, no ``document`` echoed).
- ``POST /rerank`` (text-embeddings-inference's, served by Infinity too):
  ``{query, texts, raw_scores, return_text, truncate}`` -> ``[{index, score, text?}]``.

Scores: the model's logit through a sigmoid (for a two-logit head, the softmax of the
relevant class), or the logit itself with TEI's ``raw_scores``. Results come best
first; equal scores keep the order given.

Degradation: the request runs the model's degrade steps without ``shrink_window`` (an
API caller gets every document scored or none): the ``fallback_model`` when one is
configured and the model cannot make the deadline, else a 429 (overloaded: try again)
or a 503 (the model timed out or failed), with ``x-rerank-reason`` saying which, in
the error shape the client's library parses: Cohere's ``{"message": ...}``, TEI's
``{"error": ..., "error_type": ...}``.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.responses import Response

from .config import IndexSettings, Settings
from .forwarding import ClientRequest
from .metrics import RequestTimings
from .reranker import Reranker
from .responses import json_response, marks
from .scoring import Outcome, Reason, Scorer

__all__ = ["RerankApi", "ApiError", "COHERE_V1", "COHERE_V2", "TEI"]

COHERE_V1 = "cohere_v1"
COHERE_V2 = "cohere_v2"
TEI = "tei"
FLAVOURS = (COHERE_V1, COHERE_V2, TEI)

# The index label of the rerank API's outcomes in metrics (no index name starts with "_").
METRICS_LABEL = "_rerank_api"


class ApiError(Exception):
    """A request the rerank API refuses: ``status`` and a message, written in the
    client's error shape by :meth:`RerankApi.error`."""

    def __init__(self, status: int, message: str, kind: str = "Validation") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind  # TEI's error_type: Validation, Overloaded, Backend, Unhealthy


@dataclass(frozen=True)
class ApiRequest:
    """One rerank request, whatever its shape."""

    query: str
    texts: list[str]
    model: str
    top_n: int
    return_documents: bool
    documents: list[Any]  # as sent (Cohere echoes them back)
    raw_scores: bool = False


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _bool(body: Mapping[str, Any], key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"`{key}` must be a boolean, got {json.dumps(value)[:40]}")
    return value


def _int(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"`{key}` must be an integer, got {json.dumps(value)[:40]}")
    return value


def _document_text(doc: Any, position: int, rank_fields: list[str] | None) -> str:
    if isinstance(doc, str):
        return doc
    if isinstance(doc, Mapping):
        fields = rank_fields or ["text"]
        parts = []
        for field in fields:
            value = doc.get(field)
            if value is None:
                continue
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ApiError(400, f"documents[{position}].{field} must be a string")
            parts.append(f"{field}: {value}" if rank_fields else str(value))
        if not parts:
            raise ApiError(400, f"documents[{position}] has no {' or '.join(f'`{f}`' for f in fields)} field")
        return "\n".join(parts)
    raise ApiError(400, f"documents[{position}] must be a string or an object with a `text` field")


def relevance(scores: np.ndarray) -> np.ndarray:
    """Logits (log-odds of relevance) -> probabilities in [0, 1]."""
    return 1.0 / (1.0 + np.exp(-scores.astype(np.float64)))


class RerankApi:
    """Serves the rerank API's routes on ``scorer``'s models."""

    def __init__(self, settings: Settings, *, scorer: Scorer, rerankers: Mapping[str, Reranker]) -> None:
        self.settings = settings
        self.api = settings.rerank_api
        self.scorer = scorer
        self.rerankers = rerankers
        self._specs: dict[str, IndexSettings] = {}

    def spec_for(self, model: str) -> IndexSettings:
        """The degrade steps and token limits a request on ``model`` runs under, as an
        index's: ``fallback_model`` when configured, never ``shrink_window``."""
        spec = self._specs.get(model)
        if spec is None:
            fallback = self.api.fallback_model if self.api.fallback_model not in (None, model) else None
            spec = IndexSettings.model_validate(
                {
                    "pattern": METRICS_LABEL,
                    "model": model,
                    "fallback_model": fallback,
                    "degrade": ["fallback_model", "first_stage"] if fallback else ["first_stage"],
                    "max_tokens": self.api.max_tokens,
                    "batch_size": self.api.batch_size,
                }
            )
            self._specs[model] = spec
        return spec

    # -- requests -------------------------------------------------------------------

    def parse(self, flavour: str, body: Any) -> ApiRequest:
        if not isinstance(body, Mapping):
            raise ApiError(400, "the request body must be a JSON object")
        query = body.get("query")
        if not isinstance(query, str) or not query.strip():
            raise ApiError(400, "`query` must be a non-empty string")
        requested = body.get("model")
        if requested is not None and not _is_str(requested):
            raise ApiError(400, "`model` must be a string")
        model = self.settings.api_model_for(requested)
        if model is None or model not in self.rerankers:
            known = sorted({*self.rerankers, *self.api.aliases})
            raise ApiError(400, f"unknown model {requested!r}; models: {', '.join(known)}")

        if flavour == TEI:
            texts = body.get("texts")
            if not isinstance(texts, list) or not all(_is_str(t) for t in texts):
                raise ApiError(400, "`texts` must be a list of strings")
            if not texts:
                raise ApiError(400, "`texts` cannot be empty")
            self._check_count(len(texts), "texts")
            _bool(body, "truncate", False)  # pairs are always cut to the model's length
            return ApiRequest(
                query=query,
                texts=list(texts),
                model=model,
                top_n=len(texts),
                return_documents=_bool(body, "return_text", False),
                documents=list(texts),
                raw_scores=_bool(body, "raw_scores", False),
            )

        documents = body.get("documents")
        if not isinstance(documents, list):
            raise ApiError(400, "`documents` must be a list of strings or objects with a `text` field")
        self._check_count(len(documents), "documents")
        rank_fields = body.get("rank_fields")
        if rank_fields is not None and (
            flavour == COHERE_V2
            or not isinstance(rank_fields, list)
            or not rank_fields
            or not all(_is_str(f) for f in rank_fields)
        ):
            raise ApiError(400, "`rank_fields` must be a non-empty list of field names")
        if flavour == COHERE_V2 and not all(_is_str(d) for d in documents):
            raise ApiError(400, "`documents` must be a list of strings")
        texts = [_document_text(doc, i, rank_fields) for i, doc in enumerate(documents)]
        top_n = _int(body, "top_n")
        if top_n is not None and top_n < 1:
            raise ApiError(400, f"`top_n` must be at least 1, got {top_n}")
        return_documents = flavour == COHERE_V1 and _bool(body, "return_documents", False)
        if flavour == COHERE_V2:
            _bool(body, "return_documents", False)  # not in v2; accepted and ignored
        max_tokens = _int(body, "max_tokens_per_doc")
        if max_tokens is not None and max_tokens < 1:
            raise ApiError(400, f"`max_tokens_per_doc` must be at least 1, got {max_tokens}")
        return ApiRequest(
            query=query,
            texts=texts,
            model=model,
            top_n=len(texts) if top_n is None else min(top_n, len(texts)),
            return_documents=return_documents,
            documents=list(documents),
        )

    def _check_count(self, n: int, key: str) -> None:
        if n > self.api.max_documents:
            raise ApiError(400, f"`{key}` holds {n} items, more than the limit of {self.api.max_documents}")

    def _authorize(self, request: ClientRequest) -> None:
        key = self.api.api_key
        if key is None:
            return
        given = request.header("authorization")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or token.strip() != key:
            raise ApiError(401, "invalid api token", "Unauthorized")

    # -- answers --------------------------------------------------------------------

    def error(self, flavour: str, exc: ApiError, headers: list[tuple[str, str]] | None = None) -> Response:
        body: Any = {"error": exc.message, "error_type": exc.kind} if flavour == TEI else {"message": exc.message}
        extra = list(headers or [])
        if exc.status == 429:
            extra.append(("retry-after", "1"))
        return json_response(body, exc.status, extra)

    async def __call__(self, request: ClientRequest, flavour: str) -> Response:
        started = time.perf_counter()
        try:
            self._authorize(request)
            try:
                raw = request.decoded_body(self.settings.server.max_content_length)
                body = json.loads(raw) if raw.strip() else None
            except (ValueError, UnicodeDecodeError) as exc:
                raise ApiError(400, f"the request body is not JSON: {exc}") from None
            parsed = self.parse(flavour, body)
        except ApiError as exc:
            return self.error(flavour, exc, marks(Outcome.ERROR, "bad_request"))

        reranker = self.rerankers[parsed.model]
        timings = RequestTimings()
        if parsed.texts:
            spec = self.spec_for(parsed.model)
            gone = request.disconnected() if request.disconnected is not None else None
            scored = await self.scorer.score_texts(parsed.query, parsed.texts, parsed.model, spec, timings, gone)
            self.scorer.metrics.observe_rerank(timings)
            self.scorer.metrics.observe_outcome(METRICS_LABEL, scored.model, scored.outcome, scored.reason)
            headers = [
                *marks(scored.outcome, scored.reason),
                ("x-rerank-model", scored.model),
                ("x-rerank-provider", str(self.rerankers[scored.model].info().get("provider", ""))),
                *(h for h in timings.headers() if h[0] != "x-rerank-upstream-ms"),  # no first stage here
                ("x-rerank-total-ms", f"{(time.perf_counter() - started) * 1000:.1f}"),
            ]
            if scored.scores is None:
                if scored.reason == Reason.OVERLOADED:
                    refusal = ApiError(429, f"model {parsed.model!r} is overloaded; try again", "Overloaded")
                elif scored.reason == Reason.CLIENT_CLOSED:
                    refusal = ApiError(499, "client closed the connection", "Backend")
                else:
                    refusal = ApiError(
                        503, f"model {parsed.model!r} could not score in time ({scored.reason})", "Backend"
                    )
                return self.error(flavour, refusal, headers)
            scores = np.asarray(scored.scores, dtype=np.float64)
        else:  # Cohere: no documents, no results
            scores = np.zeros(0)
            headers = [*marks(Outcome.SKIPPED, "no_documents"), ("x-rerank-model", reranker.name)]

        shown = scores if parsed.raw_scores else relevance(scores)
        order = sorted(range(len(shown)), key=lambda i: (-shown[i], i))[: parsed.top_n]
        if flavour == TEI:
            results: Any = []
            for i in order:
                item: dict[str, Any] = {"index": i, "score": _finite(shown[i])}
                if parsed.return_documents:
                    item["text"] = parsed.texts[i]
                results.append(item)
            return json_response(results, 200, headers)
        items = []
        for i in order:
            item = {"index": i, "relevance_score": _finite(shown[i])}
            if parsed.return_documents:
                doc = parsed.documents[i]
                item["document"] = {"text": doc} if isinstance(doc, str) else doc
            items.append(item)
        answer = {
            "id": str(uuid.uuid4()),
            "results": items,
            "meta": {
                "api_version": {"version": "2" if flavour == COHERE_V2 else "1"},
                "billed_units": {"search_units": 1},
            },
        }
        return json_response(answer, 200, headers)


def _finite(value: float) -> float:
    value = float(value)
    return value if math.isfinite(value) else (0.0 if math.isnan(value) else math.copysign(3.4e38, value))
