"""Cross-encoder rerankers: tokenizer.json + ONNX Runtime, batched, off the event loop.

``onnxruntime`` is imported only when a model is loaded, so the rest of es-rerank
(config checks, pass-through) works without it; :func:`import_onnxruntime` turns a
missing install into a :class:`~es_rerank.errors.ModelError` that says what to install.
"""

from __future__ import annotations

from ._base import Reranker
from ._cache import ScoreCache
from ._onnx import OnnxReranker, import_onnxruntime, physical_cores, resolve_providers
from ._stats import ScoreStats

__all__ = [
    "Reranker",
    "ScoreStats",
    "ScoreCache",
    "OnnxReranker",
    "import_onnxruntime",
    "resolve_providers",
    "physical_cores",
]
