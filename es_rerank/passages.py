"""Hit -> the text the model reads: fields, template, chunks for long documents."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from .config import ChunkSettings

__all__ = ["field_values", "hit_text", "Chunker", "split_passages", "aggregate_scores"]

_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


def _from_source(node: Any, parts: list[str]) -> list[Any]:
    """Values at a dotted path of ``_source``: through objects and arrays of objects,
    and keys that themselves hold dots (``{"meta.author": ...}``), as OpenSearch reads them."""
    if not parts:
        return list(node) if isinstance(node, list) else [node]
    if isinstance(node, list):
        return [v for item in node for v in _from_source(item, parts)]
    if not isinstance(node, Mapping):
        return []
    out: list[Any] = []
    for i in range(1, len(parts) + 1):
        key = ".".join(parts[:i])
        if key in node:
            out.extend(_from_source(node[key], parts[i:]))
    return out


def field_values(hit: Mapping[str, Any], field: str) -> list[str]:
    """A field's text values: from ``fields`` (what the proxy asks for), else ``_source``."""
    values = (hit.get("fields") or {}).get(field)
    if values is None:
        values = _from_source(hit.get("_source") or {}, field.split("."))
    elif not isinstance(values, list):
        values = [values]
    return [str(v) for v in values if v is not None and not isinstance(v, (dict, list))]


def hit_text(hit: Mapping[str, Any], fields: Sequence[str], template: str | None = None) -> str:
    """The passage for one hit: the template filled in, or the fields joined by a space."""
    if template is None:
        return " ".join(v for f in fields for v in field_values(hit, f) if v)
    return _PLACEHOLDER.sub(lambda m: " ".join(field_values(hit, m.group(1).strip())), template)


class Chunker(Protocol):
    """What chunking needs from a model: its own tokenizer's view of a text."""

    def chunk_text(self, text: str, chunk_tokens: int, stride: int, max_chunks: int) -> list[str]: ...

    def query_token_budget(self, query: str, max_length: int) -> int: ...


def split_passages(
    passages: Sequence[str], query: str, chunking: ChunkSettings, model: Chunker, max_length: int
) -> tuple[list[str], list[int]]:
    """Chunks to score and, for each, the index of the passage it came from.

    ``truncate`` keeps one pass per passage (the model truncates it). ``chunk``
    cuts each passage into windows of tokens that fit beside the query, at most
    ``max_chunks`` each, so the passes per search stay bounded by K x max_chunks.
    """
    if chunking.mode == "truncate":
        return list(passages), list(range(len(passages)))
    size = chunking.chunk_tokens or model.query_token_budget(query, max_length)
    stride = min(chunking.stride, size - 1)
    chunks: list[str] = []
    owners: list[int] = []
    for i, text in enumerate(passages):
        pieces = model.chunk_text(text, size, stride, chunking.max_chunks) or [text]
        chunks.extend(pieces)
        owners.extend([i] * len(pieces))
    return chunks, owners


def aggregate_scores(
    scores: np.ndarray, owners: Sequence[int], n: int, rule: str = "max", top_n: int = 2
) -> np.ndarray:
    """One score per passage from its chunks' scores: max, first, or mean of the top n."""
    grouped: list[list[float]] = [[] for _ in range(n)]
    for score, owner in zip(np.asarray(scores, dtype=np.float64), owners):
        grouped[owner].append(float(score))
    out = np.empty(n, dtype=np.float32)
    for i, chunk_scores in enumerate(grouped):
        if not chunk_scores:
            raise ValueError(f"passage {i} has no scored chunk")
        if rule == "max":
            out[i] = max(chunk_scores)
        elif rule == "first":
            out[i] = chunk_scores[0]
        elif rule == "mean_top":
            out[i] = float(np.mean(sorted(chunk_scores, reverse=True)[:top_n]))
        else:
            raise ValueError(f"unknown aggregation {rule!r}")
    return out
