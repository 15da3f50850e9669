"""Prometheus metrics and the per-request timing headers, from one place.

Each proxy owns its registry (no process globals), so two apps in one process, as
in tests, count separately.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .reranker import ScoreStats

__all__ = ["Metrics", "RequestTimings", "CONTENT_TYPE_LATEST"]

# Sub-millisecond pass-through up to multi-second CPU reranking.
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_PAIRS = (1, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


@dataclass
class RequestTimings:
    """What one reranked search spent: the upstream call, the whole rerank stage, and
    the engine's own breakdown (sent as ``x-rerank-*`` headers)."""

    upstream_ms: float = 0.0
    rerank_ms: float = 0.0
    stats: ScoreStats = field(default_factory=ScoreStats)

    def headers(self) -> list[tuple[str, str]]:
        return [
            ("x-rerank-upstream-ms", f"{self.upstream_ms:.1f}"),
            ("x-rerank-tokenize-ms", f"{self.stats.tokenize_ms:.1f}"),
            ("x-rerank-queue-ms", f"{self.stats.queue_ms:.1f}"),
            ("x-rerank-inference-ms", f"{self.rerank_ms:.1f}"),
            ("x-rerank-pairs", str(self.stats.pairs)),
            ("x-rerank-cache-hits", str(self.stats.cache_hits)),
        ]


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "es_rerank_requests",
            "Requests by route, index, outcome and reason.",
            ["route", "index", "outcome", "reason"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "es_rerank_request_seconds", "Whole request time in es-rerank.", ["route"], buckets=_SECONDS, registry=r
        )
        self.first_stage_seconds = Histogram(
            "es_rerank_first_stage_seconds", "The first-stage search call to OpenSearch.", buckets=_SECONDS, registry=r
        )
        self.tokenize_seconds = Histogram(
            "es_rerank_tokenize_seconds", "Tokenization per reranked search.", buckets=_SECONDS, registry=r
        )
        self.queue_seconds = Histogram(
            "es_rerank_queue_seconds", "Wait for the model's worker per reranked search.", buckets=_SECONDS, registry=r
        )
        self.inference_seconds = Histogram(
            "es_rerank_inference_seconds", "Model inference per reranked search.", buckets=_SECONDS, registry=r
        )
        self.rerank_seconds = Histogram(
            "es_rerank_rerank_seconds", "The whole rerank stage per search.", buckets=_SECONDS, registry=r
        )
        self.pairs = Histogram(
            "es_rerank_pairs_per_request", "Model passes per reranked search.", buckets=_PAIRS, registry=r
        )
        self.outcomes = Counter(
            "es_rerank_rerank_outcomes",
            "Searches and _msearch items that asked for reranking, by index, the model that scored "
            "(the search's own when none did), outcome (reranked, fallback) and reason "
            "(reranked, fallback_model, partial, overloaded, rerank_timeout, rerank_error, client_closed).",
            ["index", "model", "outcome", "reason"],
            registry=r,
        )
        self.cache_hits = Counter("es_rerank_cache_hits", "Pairs answered from the score cache.", registry=r)
        self.queue_wait = Gauge(
            "es_rerank_model_queue_seconds",
            "Estimated seconds for the work queued at each model (0 until the model has run once).",
            ["model"],
            registry=r,
        )
        # Experiments (es_rerank/experiments/record.py): UBI documents by index and outcome.
        self.ubi_documents = Counter(
            "es_rerank_ubi_documents",
            "UBI documents (ubi_queries, ubi_events) by index and outcome: written, or dropped "
            "(queue_full, refused, unavailable, stopped).",
            ["index", "outcome"],
            registry=r,
        )
        self.ubi_queue = Gauge("es_rerank_ubi_queue", "UBI documents waiting to be written.", registry=r)
        self.experiment_searches = Counter(
            "es_rerank_experiment_searches",
            "Searches and _msearch items served under an experiment, by arm.",
            ["experiment", "arm"],
            registry=r,
        )

    def watch_queue(self, model: str, seconds: Callable[[], float | None]) -> None:
        """Read ``seconds()`` for ``model``'s queue gauge at each scrape."""
        self.queue_wait.labels(model).set_function(lambda: seconds() or 0.0)

    def watch_ubi_queue(self, length: Callable[[], int]) -> None:
        self.ubi_queue.set_function(length)

    def observe_ubi(self, index: str, outcome: str, n: int = 1) -> None:
        self.ubi_documents.labels(index, outcome).inc(n)

    def observe_arm(self, experiment: str, arm: str) -> None:
        self.experiment_searches.labels(experiment, arm).inc()

    def observe_request(self, route: str, index: str, outcome: str, reason: str, seconds: float) -> None:
        self.requests.labels(route, index, outcome, reason).inc()
        self.request_seconds.labels(route).observe(seconds)

    def observe_outcome(self, index: str, model: str, outcome: str, reason: str) -> None:
        """One search or item through the scoring stage (labels are closed sets: config names, enums)."""
        self.outcomes.labels(index, model, str(outcome), str(reason)).inc()

    def observe_rerank(self, t: RequestTimings) -> None:
        self.first_stage_seconds.observe(t.upstream_ms / 1000)
        self.tokenize_seconds.observe(t.stats.tokenize_ms / 1000)
        self.queue_seconds.observe(t.stats.queue_ms / 1000)
        self.inference_seconds.observe(t.stats.inference_ms / 1000)
        self.rerank_seconds.observe(t.rerank_ms / 1000)
        self.pairs.observe(t.stats.pairs)
        if t.stats.cache_hits:
            self.cache_hits.inc(t.stats.cache_hits)

    def render(self) -> bytes:
        return generate_latest(self.registry)
