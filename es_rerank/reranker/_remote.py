"""A model served by remote reranking servers instead of an in-process ONNX Runtime session.

Protocols (``models.<name>.remote.protocol``):

- ``tei``: text-embeddings-inference's ``POST /rerank`` ``{query, texts, raw_scores,
  truncate}`` -> ``[{index, score}]`` (also es-rerank's own ``/rerank``);
- ``infinity``: Infinity's ``POST /rerank`` ``{model, query, documents, raw_scores}`` ->
  ``{results: [{index, relevance_score}]}`` (Cohere's shape).

Raw scores (logits) are asked for, so a remote model orders and scores as the same
checkpoint does in-process. Several endpoints share the work: each call's pairs go in
requests of at most ``max_batch`` texts to the healthy endpoint with the fewest requests
in flight, at most ``concurrency`` per endpoint; a request that fails (refused, reset,
5xx, past ``timeout_s``) marks its endpoint down and is sent to another. A health check
(``GET health_path`` every ``health_interval_s``) brings endpoints back. The score cache
and the deadline rules are the local model's: with ``budget_s`` a call the endpoints
would not finish in time (at the rate they have been answering) is refused with
:class:`ModelOverloadedError`, and so is a call when no endpoint is up, so an index's
degrade steps (``fallback_model``, ``first_stage``) apply as they do to a local model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from ..errors import ModelError, ModelOverloadedError
from ._cache import ScoreCache
from ._stats import ScoreStats

__all__ = ["RemoteReranker", "Endpoint"]

logger = logging.getLogger("es_rerank")


@dataclass
class Endpoint:
    url: str
    concurrency: int
    up: bool = True
    in_flight: int = 0
    failures: int = 0
    requests: int = 0
    last_error: str = ""
    semaphore: asyncio.Semaphore | None = field(default=None, repr=False)

    def info(self) -> dict[str, Any]:
        return {"url": self.url, "up": self.up, "in_flight": self.in_flight, "requests": self.requests,
                "failures": self.failures, "last_error": self.last_error}  # fmt: skip


class _Failed(Exception):
    """One request to one endpoint failed (the endpoint is marked down)."""


class RemoteReranker:
    """The :class:`~es_rerank.reranker.Reranker` protocol over HTTP reranking servers."""

    def __init__(
        self,
        name: str,
        endpoints: Sequence[str],
        *,
        protocol: str = "tei",
        model: str | None = None,
        concurrency: int = 4,
        timeout_s: float = 10.0,
        max_batch: int = 32,
        health_path: str = "/health",
        health_interval_s: float = 2.0,
        api_key: str | None = None,
        cache_size: int = 10_000,
        max_length: int = 512,
    ) -> None:
        if protocol not in ("tei", "infinity"):
            raise ValueError(f"protocol must be 'tei' or 'infinity', got {protocol!r}")
        if not endpoints:
            raise ValueError("a remote model needs at least one endpoint")
        self.name = name
        self.protocol = protocol
        self.model = model
        self.timeout_s = timeout_s
        self.max_batch = max_batch
        self.health_path = health_path
        self.health_interval_s = health_interval_s
        self.max_length = max_length
        self.endpoints = [Endpoint(u.rstrip("/"), concurrency) for u in endpoints]
        self.cache = ScoreCache(cache_size)
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._health: asyncio.Task | None = None
        self._closed = False
        self._queued_pairs = 0
        self._seconds_per_pair: float | None = None  # moving average over answered requests

    @classmethod
    def from_settings(cls, name: str, settings: Any) -> RemoteReranker:
        remote = settings.remote
        return cls(
            name, remote.endpoints, protocol=remote.protocol, model=remote.model, concurrency=remote.concurrency,
            timeout_s=remote.timeout_s, max_batch=remote.max_batch, health_path=remote.health_path,
            health_interval_s=remote.health_interval_s, api_key=remote.api_key, cache_size=settings.cache_size,
            max_length=settings.max_length,
        )  # fmt: skip

    # -- plumbing -------------------------------------------------------------------

    def _ensure_started(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._loop = loop
            limits = httpx.Limits(max_connections=sum(e.concurrency for e in self.endpoints) + len(self.endpoints))
            self._client = httpx.AsyncClient(timeout=self.timeout_s, limits=limits, headers=self._headers)
            for e in self.endpoints:
                e.semaphore = asyncio.Semaphore(e.concurrency)
            self._health = loop.create_task(self._health_loop())
        return self._client

    def _mark(self, endpoint: Endpoint, up: bool, error: str = "") -> None:
        if endpoint.up != up:
            if up:
                logger.warning("model %s: endpoint %s is up again", self.name, endpoint.url)
            else:
                logger.warning("model %s: endpoint %s is down: %s", self.name, endpoint.url, error)
        endpoint.up = up
        if error:
            endpoint.last_error = error

    async def _health_loop(self) -> None:
        while not self._closed:
            await asyncio.gather(*(self.check(e) for e in self.endpoints), return_exceptions=True)
            await asyncio.sleep(self.health_interval_s)

    async def check(self, endpoint: Endpoint) -> bool:
        """One health check of ``endpoint``; marks it up or down."""
        client = self._ensure_started()
        try:
            r = await client.get(endpoint.url + self.health_path, timeout=min(self.timeout_s, 2.0))
            ok = r.status_code == 200
            self._mark(endpoint, ok, "" if ok else f"health check answered {r.status_code}")
        except httpx.HTTPError as exc:
            self._mark(endpoint, False, f"health check: {type(exc).__name__}: {exc}")
            ok = False
        return ok

    # -- one request ----------------------------------------------------------------

    def _body(self, query: str, texts: list[str]) -> dict[str, Any]:
        if self.protocol == "tei":
            return {"query": query, "texts": texts, "raw_scores": True, "truncate": True}
        body: dict[str, Any] = {"query": query, "documents": texts, "raw_scores": True, "return_documents": False}
        if self.model:
            body["model"] = self.model
        return body

    def _scores(self, data: Any, n: int) -> np.ndarray:
        items = data if self.protocol == "tei" else (data or {}).get("results")
        if not isinstance(items, list) or len(items) != n:
            raise ValueError(f"expected {n} scores, got {str(data)[:200]}")
        out = np.full(n, np.nan, dtype=np.float32)
        key = "score" if self.protocol == "tei" else "relevance_score"
        for item in items:
            out[int(item["index"])] = float(item[key])
        if np.isnan(out).any():
            raise ValueError("an index is missing from the answer")
        return out

    def _pick(self, tried: set[int]) -> Endpoint | None:
        candidates = [e for i, e in enumerate(self.endpoints) if e.up and i not in tried]
        if not candidates:
            return None
        return min(candidates, key=lambda e: e.in_flight / e.concurrency)

    async def _request(self, query: str, texts: list[str]) -> np.ndarray:
        """Scores of one batch, from the first endpoint that answers."""
        client = self._ensure_started()
        tried: set[int] = set()
        errors: list[str] = []
        while True:
            endpoint = self._pick(tried)
            if endpoint is None:
                raise ModelOverloadedError(
                    f"model {self.name!r}: no remote endpoint can score ({'; '.join(errors) or 'all down'})"
                )
            tried.add(self.endpoints.index(endpoint))
            endpoint.in_flight += 1
            try:
                assert endpoint.semaphore is not None
                async with endpoint.semaphore:
                    t0 = time.perf_counter()
                    r = await client.post(endpoint.url + "/rerank", json=self._body(query, texts))
                    seconds = time.perf_counter() - t0
                endpoint.requests += 1
                if r.status_code >= 500 or r.status_code == 429:
                    raise _Failed(f"answered {r.status_code}: {r.text[:200]}")
                if r.status_code != 200:
                    raise ModelError(
                        f"model {self.name!r}: {endpoint.url} refused the request ({r.status_code}: {r.text[:200]})"
                    )
                try:
                    scores = self._scores(r.json(), len(texts))
                except (ValueError, KeyError, TypeError) as exc:
                    raise _Failed(f"unreadable answer: {exc}") from None
                per_pair = seconds / max(1, len(texts))
                spp = self._seconds_per_pair
                self._seconds_per_pair = per_pair if spp is None else 0.8 * spp + 0.2 * per_pair
                return scores
            except (_Failed, httpx.HTTPError) as exc:
                endpoint.failures += 1
                reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, _Failed) else str(exc)
                errors.append(f"{endpoint.url}: {reason}")
                self._mark(endpoint, False, reason)
            finally:
                endpoint.in_flight -= 1

    # -- the Reranker protocol --------------------------------------------------------

    def _slots(self) -> int:
        return max(1, sum(e.concurrency for e in self.endpoints if e.up))

    def queue_wait_s(self) -> float | None:
        if self._seconds_per_pair is None:
            return None
        return self._queued_pairs * self._seconds_per_pair / self._slots()

    async def ascore(
        self,
        query: str,
        passages: Sequence[str],
        *,
        max_length: int | None = None,
        batch_size: int | None = None,
        stats: ScoreStats | None = None,
        budget_s: float | None = None,
        partial: bool = False,
        admit_idle: bool = True,
    ) -> np.ndarray:
        if self._closed:
            raise ModelError(f"model {self.name!r} is closed")
        stats = stats if stats is not None else ScoreStats()
        passages = list(passages)
        t0 = time.perf_counter()
        keys = [ScoreCache.key(self.name, self.max_length, query, p) for p in passages]
        # A shared cache asks Redis: off the event loop.
        cached = (
            self.cache.get_many(keys)
            if isinstance(self.cache, ScoreCache)
            else await asyncio.to_thread(self.cache.get_many, keys)
        )
        out = np.array([np.nan if v is None else v for v in cached], dtype=np.float32)
        todo = [i for i in range(len(passages)) if np.isnan(out[i])]
        stats.cache_hits += len(passages) - len(todo)
        stats.tokenize_ms += (time.perf_counter() - t0) * 1000
        if not todo:
            return out
        self._ensure_started()
        if not any(e.up for e in self.endpoints):
            raise ModelOverloadedError(f"model {self.name!r}: every remote endpoint is down")
        if budget_s is not None and self._seconds_per_pair is not None:
            idle = self._queued_pairs == 0
            wait = (self._queued_pairs + len(todo)) * self._seconds_per_pair / self._slots()
            if wait > budget_s and not (idle and admit_idle):
                fits = int(budget_s * self._slots() / max(self._seconds_per_pair, 1e-9)) - self._queued_pairs
                if partial and fits >= 2 and len(todo) == len(passages):
                    todo = todo[:fits]
                else:
                    raise ModelOverloadedError(
                        f"model {self.name!r} is overloaded: {wait:.2f}s of remote work for a budget of {budget_s:.2f}s"
                    )
        self._queued_pairs += len(todo)
        t1 = time.perf_counter()
        try:
            batches = [todo[i : i + self.max_batch] for i in range(0, len(todo), self.max_batch)]
            results = await asyncio.gather(*(self._request(query, [passages[i] for i in b]) for b in batches))
        finally:
            self._queued_pairs -= len(todo)
        for batch, scores in zip(batches, results):
            out[batch] = scores
        stats.pairs += len(todo)
        stats.batches += len(batches)
        stats.inference_ms += (time.perf_counter() - t1) * 1000
        self.cache.put_many([(keys[i], float(out[i])) for i in todo if not np.isnan(out[i])])
        if np.isnan(out).any():  # partial: the first passages that were scored
            return out[: int(np.argmax(np.isnan(out)))]
        return out

    def score(
        self,
        query: str,
        passages: Sequence[str],
        *,
        max_length: int | None = None,
        batch_size: int | None = None,
        stats: ScoreStats | None = None,
    ) -> np.ndarray:
        """Blocking :meth:`ascore` (for tools; never on the event loop)."""

        async def run() -> np.ndarray:
            try:
                return await self.ascore(query, passages, stats=stats)
            finally:
                await self._stop()

        return asyncio.run(run())

    async def _stop(self) -> None:
        if self._health is not None:
            self._health.cancel()
        if self._client is not None:
            await self._client.aclose()
        self._client = self._loop = self._health = None

    def info(self) -> dict[str, Any]:
        up = sum(e.up for e in self.endpoints)
        return {
            "name": self.name,
            "provider": f"remote:{self.protocol}",
            "status": "closed" if self._closed else ("ready" if up else "unavailable"),
            "max_length": self.max_length,
            "batch_size": self.max_batch,
            "endpoints": [e.info() for e in self.endpoints],
            "seconds_per_pair": self._seconds_per_pair,
        }

    def engine_info(self) -> dict[str, Any]:
        return {
            "cache": self.cache.info(),
            "queued_pairs": self._queued_pairs,
            "endpoints_up": sum(e.up for e in self.endpoints),
        }

    def query_token_budget(self, query: str, max_length: int) -> int:
        raise ModelError(
            f"model {self.name!r} is remote: chunking needs a local tokenizer (use chunking.mode: truncate)"
        )

    def chunk_text(self, text: str, chunk_tokens: int, stride: int, max_chunks: int) -> list[str]:
        raise ModelError(
            f"model {self.name!r} is remote: chunking needs a local tokenizer (use chunking.mode: truncate)"
        )

    def close(self) -> None:
        self._closed = True
        if self._health is not None:
            self._health.cancel()
        client, loop = self._client, self._loop
        if client is not None and loop is not None and not loop.is_closed():
            try:
                if loop.is_running():
                    loop.call_soon_threadsafe(lambda: loop.create_task(client.aclose()))
            except RuntimeError:
                pass

    def __repr__(self) -> str:
        return f"<RemoteReranker {self.name!r} {self.protocol} {[e.url for e in self.endpoints]}>"
