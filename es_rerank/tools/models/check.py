"""Load a model directory as the proxy does; provider, latency and drift against a reference."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ...errors import ModelError
from ._common import CHECK_PAIRS, _load, _open_model_dir, _same_order, _score_pairs


@dataclass(frozen=True)
class CheckResult:
    """What :func:`check_model` measured."""

    onnx_path: Path
    provider: str
    providers: list[str]
    head: str
    max_length: int
    load_seconds: float
    latency_seconds: float  # median time to score every built-in pair once
    pairs: int
    scores: np.ndarray
    reference: Path | None = None
    reference_scores: np.ndarray | None = None
    max_abs_diff: float | None = None
    same_order: bool | None = None  # every query's passages ranked the same as the reference
    runs: int = field(default=0)
    cache_hits: int = 0  # score and token cache hits during the timed runs (0: every pair computed)

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / self.latency_seconds if self.latency_seconds > 0 else float("inf")


def check_model(
    model_dir: Path,
    *,
    onnx_file: str | None = None,
    reference: Path | None = None,
    providers: Sequence[str] = ("auto",),
    repeats: int = 5,
    pairs: Sequence[tuple[str, str]] = CHECK_PAIRS,
) -> CheckResult:
    """Load a model directory with es-rerank's own :class:`OnnxReranker` and score ``pairs``.

    Measures the load time and the median time (over ``repeats`` runs after one warm-up)
    to score every pair, one ``score`` call per query. The model is loaded without its
    score and token caches, and each timed run asks distinct queries (the run's number
    is appended), so every pair is tokenized and run through the model: pairs/s is the
    model's, not a cache's. ``reference`` is another model
    directory (its own ONNX file and tokenizer) or an ONNX file (scored with this
    directory's tokenizer); its scores give ``max_abs_diff`` and ``same_order``.

    Long on purpose: load, score, time and report one model directory, as ``model check`` prints it.
    """
    if repeats < 1:
        raise ModelError(f"repeats must be at least 1, got {repeats}")
    md = _open_model_dir(model_dir, onnx_file)
    start = time.perf_counter()
    reranker = _load(
        "model", md.onnx, md.tokenizer, max_length=md.max_length, head=md.head, providers=providers, caches=False
    )
    load_seconds = time.perf_counter() - start
    with reranker:
        scores = _score_pairs(reranker, pairs)  # warm-up
        hits_before = reranker.cache.hits + reranker.token_cache_info()["hits"]
        timings = []
        for run in range(1, repeats + 1):
            distinct = [(f"{query} {run}", passage) for query, passage in pairs]
            start = time.perf_counter()
            _score_pairs(reranker, distinct)
            timings.append(time.perf_counter() - start)
        hits = reranker.cache.hits + reranker.token_cache_info()["hits"] - hits_before
        provider, used, head, max_length = (
            reranker.provider,
            list(reranker.providers),
            reranker.head,
            reranker.max_length,
        )

    result = CheckResult(
        md.onnx,
        provider,
        used,
        head,
        max_length,
        load_seconds,
        statistics.median(timings),
        len(pairs),
        scores,
        runs=repeats,
        cache_hits=hits,
    )
    if reference is None:
        return result
    reference = Path(reference)
    if reference.is_dir():
        ref = _open_model_dir(reference)
        ref_onnx, ref_tokenizer, ref_head = ref.onnx, ref.tokenizer, ref.head
    elif reference.is_file():
        ref_onnx, ref_tokenizer, ref_head = reference, md.tokenizer, "auto"
    else:
        raise ModelError(f"reference {reference} does not exist")
    with _load(
        "reference", ref_onnx, ref_tokenizer, max_length=max_length, head=ref_head, providers=providers
    ) as ref_model:
        ref_scores = _score_pairs(ref_model, pairs)
    return replace(
        result,
        reference=ref_onnx,
        reference_scores=ref_scores,
        max_abs_diff=float(np.max(np.abs(scores - ref_scores))),
        same_order=_same_order(pairs, scores, ref_scores),
    )
