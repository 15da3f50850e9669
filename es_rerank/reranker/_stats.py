"""Per-call figures the engine fills in: what the proxy turns into metrics and headers."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ScoreStats"]


@dataclass
class ScoreStats:
    """What one ``score``/``ascore`` call cost; pass one in with ``stats=`` and read it after.

    ``pairs`` counts model passes actually run for this call (cache hits and repeated
    passages excluded); ``cache_hits`` the passages answered from the score cache.
    ``tokenize_ms`` is the time spent tokenizing, ``queue_ms`` the time the call's
    pairs waited for the model (other requests ahead of it, and at most the batcher's
    wait bound while the model was idle), ``inference_ms`` the wall time of the model
    runs that carried its pairs (shared with the requests batched alongside).
    ``hold_ms`` is the part of ``queue_ms`` the batcher spent waiting for company
    while the model was idle (bounded by ``batch_wait_ms``), ``batches`` the model runs
    that carried this call's pairs and ``merged`` how many of those also carried
    another request's pairs.
    """

    pairs: int = 0
    cache_hits: int = 0
    tokenize_ms: float = 0.0
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    hold_ms: float = 0.0
    batches: int = 0
    merged: int = 0

    def add(self, other: ScoreStats) -> None:
        """Accumulate another call's figures into this one (for totals over calls)."""
        self.pairs += other.pairs
        self.cache_hits += other.cache_hits
        self.tokenize_ms += other.tokenize_ms
        self.queue_ms += other.queue_ms
        self.inference_ms += other.inference_ms
        self.hold_ms += other.hold_ms
        self.batches += other.batches
        self.merged += other.merged
