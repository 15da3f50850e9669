"""What every reranker offers the rest of es-rerank."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ._stats import ScoreStats

__all__ = ["Reranker"]


@runtime_checkable
class Reranker(Protocol):
    """Scores (query, passage) pairs: higher means more relevant."""

    name: str

    def score(
        self,
        query: str,
        passages: Sequence[str],
        *,
        max_length: int | None = None,
        batch_size: int | None = None,
        stats: ScoreStats | None = None,
    ) -> np.ndarray:
        """One float32 score per passage, in the order of ``passages``; ``stats``, when given, is filled in."""
        ...

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
        """:meth:`score` without blocking the event loop; with ``budget_s``, a call that
        would not be scored within that many seconds raises ``ModelOverloadedError``, or
        with ``partial`` returns the scores of only its first passages that fit. A call
        with nothing queued ahead is taken whatever the estimate unless ``admit_idle`` is False."""
        ...

    def queue_wait_s(self) -> float | None:
        """Seconds the work queued now will take; None when not known."""
        ...

    def info(self) -> dict[str, Any]:
        """A JSON-serialisable description (name, provider, status...)."""
        ...

    def query_token_budget(self, query: str, max_length: int) -> int:
        """Tokens left for a passage beside ``query`` in a pair of ``max_length`` (for chunking)."""
        ...

    def chunk_text(self, text: str, chunk_tokens: int, stride: int, max_chunks: int) -> list[str]:
        """``text`` cut into windows of ``chunk_tokens`` tokens sharing ``stride`` (for chunking)."""
        ...

    def close(self) -> None:
        """Stop the model's worker; later calls fail."""
        ...
