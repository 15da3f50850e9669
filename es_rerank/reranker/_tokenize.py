"""(query, passage) pairs -> padded numpy batches, with a Hugging Face tokenizer.json.

Pairs are encoded with ``encode_batch`` and ``only_second`` truncation (the passage
is cut, never the query), sorted by token length and padded per batch, so a batch of
short passages is not padded to the longest passage of the request.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tokenizers import Encoding, Tokenizer

from ..errors import ModelError

__all__ = ["PairTokenizer", "Batch", "iter_batches"]

# The ONNX inputs a cross-encoder may declare, all [batch, sequence] integers.
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

Batch = tuple[np.ndarray, dict[str, np.ndarray]]


def _pad_id(tokenizer: Tokenizer) -> int:
    padding = tokenizer.padding
    if padding and padding.get("pad_id") is not None:
        return int(padding["pad_id"])
    for token in ("[PAD]", "<pad>"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    return 0


class PairTokenizer:
    """A tokenizer.json set up for cross-encoder pairs, one truncating copy per max_length.

    A tokenizer's truncation is state on the object, so a per-call ``max_length`` gets
    its own copy (made once, kept) instead of changing a tokenizer another thread uses.
    """

    def __init__(self, path: Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"tokenizer file {path} does not exist")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception
            raise ModelError(f"cannot load tokenizer {path}: {exc}") from None
        self.path = path
        self.pad_id = _pad_id(tokenizer)
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._json = tokenizer.to_str()
        # Untruncated: measures the query alone.
        self._plain = tokenizer
        self.num_special_tokens = tokenizer.num_special_tokens_to_add(True)
        self._truncating: dict[int, Tokenizer] = {}
        self._lock = threading.Lock()

    def min_length(self) -> int:
        """The smallest max_length that leaves one token to the query and one to the passage."""
        return self.num_special_tokens + 2

    def query_budget(self, max_length: int) -> int:
        """Most tokens a query keeps: half of what the special tokens leave."""
        return max(1, (max_length - self.num_special_tokens) // 2)

    def _for_length(self, max_length: int) -> Tokenizer:
        tokenizer = self._truncating.get(max_length)
        if tokenizer is None:
            with self._lock:
                tokenizer = self._truncating.get(max_length)
                if tokenizer is None:
                    tokenizer = Tokenizer.from_str(self._json)
                    tokenizer.enable_truncation(max_length, strategy="only_second")
                    self._truncating[max_length] = tokenizer
        return tokenizer

    def prepare(self, max_length: int) -> None:
        """Build the truncating copy for ``max_length`` now rather than on first use."""
        self._for_length(max_length)

    def clip_query(self, query: str, max_length: int) -> str:
        """The query, cut at a token boundary when it would leave too little to the passage.

        ``only_second`` truncation cannot shorten the query and fails when the query
        alone overflows ``max_length``; a query longer than :meth:`query_budget` tokens
        is cut here first, so every pair fits and the passage keeps at least as many
        tokens as the query.
        """
        budget = self.query_budget(max_length)
        for _ in range(3):
            encoding = self._plain.encode(query, add_special_tokens=False)
            if len(encoding.ids) <= budget:
                return query
            end = encoding.offsets[budget - 1][1]
            if end >= len(query):
                break
            query = query[:end]
        return query

    def encode_pairs(self, query: str, passages: Sequence[str], max_length: int) -> list[Encoding]:
        """One encoding per passage: ``[CLS] query [SEP] passage [SEP]`` (or the model's template)."""
        query = self.clip_query(query, max_length)
        tokenizer = self._for_length(max_length)
        try:
            return tokenizer.encode_batch([(query, passage) for passage in passages])
        except Exception as exc:
            raise ModelError(f"cannot tokenize with {self.path}: {exc}") from None


def iter_batches(
    encodings: Sequence[Encoding],
    batch_size: int,
    pad_id: int,
    names: Sequence[str] = INPUT_NAMES,
    dtypes: dict[str, np.dtype] | None = None,
) -> Iterator[Batch]:
    """``(positions, feeds)`` per batch: longest pairs first, each batch padded to its own longest.

    ``positions`` are the indices into ``encodings`` of the batch's rows, so scores go
    back to the caller's order with ``out[positions] = batch_scores``. ``names`` are the
    inputs the model declares; ``dtypes`` their integer types (int64 unless said).
    """
    dtypes = dtypes or {}
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    order = np.argsort(-lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        positions = order[start : start + batch_size]
        width = int(lengths[positions[0]])
        rows = len(positions)
        ids = np.full((rows, width), pad_id, dtype=np.int64)
        mask = np.zeros((rows, width), dtype=np.int64)
        types = np.zeros((rows, width), dtype=np.int64) if "token_type_ids" in names else None
        for row, position in enumerate(positions):
            encoding = encodings[position]
            n = len(encoding.ids)
            ids[row, :n] = encoding.ids
            mask[row, :n] = encoding.attention_mask
            if types is not None:
                types[row, :n] = encoding.type_ids
        arrays: dict[str, np.ndarray] = {"input_ids": ids, "attention_mask": mask}
        if types is not None:
            arrays["token_type_ids"] = types
        feeds: dict[str, np.ndarray] = {}
        for name in names:
            array = arrays[name]
            dtype = dtypes.get(name, np.dtype(np.int64))
            feeds[name] = array if array.dtype == dtype else array.astype(dtype)
        yield positions, feeds
