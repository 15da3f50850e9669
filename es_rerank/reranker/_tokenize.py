"""(query, passage) pairs -> padded numpy batches, with a Hugging Face tokenizer.json.

Pairs are encoded with ``encode_batch_fast`` (no character offsets) and
``only_second`` truncation (the passage is cut, never the query), sorted by token
length and padded per batch, so a batch of short passages is not padded to the
longest passage of the request.

A passage's tokens do not depend on the query, so they are computed once and kept
(an LRU keyed by a digest of the passage text): a pair is then the query's part of the template,
the passage's ids cut to what is left, and the template's tail, put together with
numpy. Tokenizing a long passage costs far more than running a small model over it on
a GPU, and the same documents come back query after query. The layout is read off the
tokenizer's own post-processor for each query and checked, and a tokenizer whose
template does not keep the passage in one piece falls back to ``encode_batch_fast``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

from ..errors import ModelError, ModelOptionError
from ._cache import passage_digest

__all__ = ["PairTokenizer", "Pair", "Batch", "iter_batches", "plan_batches", "make_feeds", "padded_width"]

# The ONNX inputs a cross-encoder may declare, all [batch, sequence] integers.
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

Batch = tuple[np.ndarray, dict[str, np.ndarray]]

# A passage longer than this many characters per token of max_length is cut (at a space)
# before tokenizing; English text averages 4 to 5 characters a token.
CLIP_CHARS_PER_TOKEN = 12

# A text the post-processor's layout is read from: any passage of at least one token.
_PROBE = "probe text"
# Fewest texts handed to one tokenizing thread: below this a thread hand-off costs more
# than it saves.
MIN_TEXTS_PER_THREAD = 4


class Pair:
    """One encoded (query, passage) pair: what the batcher and :func:`make_feeds` read of
    a ``tokenizers.Encoding``, as numpy arrays (no padding, so the mask is all ones)."""

    __slots__ = ("ids", "type_ids")

    def __init__(self, ids: np.ndarray, type_ids: np.ndarray) -> None:
        self.ids = ids
        self.type_ids = type_ids


Encoded = Pair | Encoding


class _Layout:
    """The post-processor's pair template for one query: ``head + passage[:room] + tail``."""

    __slots__ = ("head_ids", "head_types", "tail_ids", "tail_types", "passage_type", "room")

    def __init__(self, probe: Encoding, probe_ids: list[int], max_length: int) -> None:
        sequence = probe.sequence_ids
        block = [i for i, s in enumerate(sequence) if s == 1]
        if (
            not block
            or block != list(range(block[0], block[-1] + 1))
            or probe.ids[block[0] : block[-1] + 1] != probe_ids
        ):
            raise ValueError("the template does not keep the passage in one piece")
        start, stop = block[0], block[-1] + 1
        types = probe.type_ids
        if len(set(types[start:stop])) != 1:
            raise ValueError("the passage's token types vary")
        self.head_ids = np.asarray(probe.ids[:start], dtype=np.int64)
        self.head_types = np.asarray(types[:start], dtype=np.int64)
        self.tail_ids = np.asarray(probe.ids[stop:], dtype=np.int64)
        self.tail_types = np.asarray(types[stop:], dtype=np.int64)
        self.passage_type = types[start]
        self.room = max_length - start - (len(probe.ids) - stop)
        if self.room < 1:
            raise ValueError("no room left for the passage")

    def pair(self, passage_ids: np.ndarray) -> Pair:
        body = passage_ids[: self.room]
        ids = np.concatenate((self.head_ids, body, self.tail_ids), dtype=np.int64)
        types = np.concatenate(
            (self.head_types, np.full(len(body), self.passage_type, dtype=np.int64), self.tail_types)
        )
        return Pair(ids, types)


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

    Many texts are split over ``threads`` threads of its own, each calling
    ``encode_batch_fast`` on its share (the call releases the GIL). The tokenizers
    library parallelises a batch by itself, except where ``TOKENIZERS_PARALLELISM=false``
    (set in many images to quiet its warning after a fork) or after the process forked:
    then one batch runs on one core, which on a GPU host makes tokenizing the longest
    step of a search.
    """

    def __init__(self, path: Path, *, cache_size: int = 20_000, threads: int = 1) -> None:
        if cache_size < 0:
            raise ModelOptionError(f"cache_size must be 0 (off) or more, got {cache_size}")
        if threads < 1:
            raise ModelOptionError(f"threads must be at least 1, got {threads}")
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
        self.cache_size = cache_size
        # (max_length, passage digest) -> its token ids (no special tokens), at most max_length;
        # a digest, not the text, so a cache of long documents does not hold their text
        self._passages: OrderedDict[tuple[int, bytes], np.ndarray] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="tokenize") if threads > 1 else None
        self._probe = tokenizer.encode(_PROBE, add_special_tokens=False)
        self._templated = bool(self._probe.ids)  # False: every call goes through encode_batch_fast

    def _encode(self, tokenizer: Tokenizer, inputs: list[Any], **options: Any) -> list[Encoding]:
        """``tokenizer.encode_batch_fast(inputs)``, split over this tokenizer's threads."""
        pool = self._pool
        share = max(MIN_TEXTS_PER_THREAD, -(-len(inputs) // self.threads))
        if pool is None or len(inputs) <= share:
            return tokenizer.encode_batch_fast(inputs, **options)
        parts = [inputs[i : i + share] for i in range(0, len(inputs), share)]
        return [e for part in pool.map(lambda p: tokenizer.encode_batch_fast(p, **options), parts) for e in part]

    def close(self) -> None:
        """Stop the tokenizing threads (a later call tokenizes on the caller's thread)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)

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
        return self._clipped(query, max_length)[0]

    def _clipped(self, query: str, max_length: int) -> tuple[str, Encoding]:
        """:meth:`clip_query`'s result and its encoding (no special tokens)."""
        budget = self.query_budget(max_length)
        encoding = self._plain.encode(query, add_special_tokens=False)
        for _ in range(3):
            if len(encoding.ids) <= budget:
                break
            end = encoding.offsets[budget - 1][1]
            if end >= len(query):
                break
            query = query[:end]
            encoding = self._plain.encode(query, add_special_tokens=False)
        return query, encoding

    def encode_pairs(
        self, query: str, passages: Sequence[str], max_length: int, digests: Sequence[bytes] | None = None
    ) -> list[Encoded]:
        """One encoding per passage: ``[CLS] query [SEP] passage [SEP]`` (or the model's template).

        ``digests``, when the caller has them, are the passages' :func:`passage_digest`
        (the token cache's keys), so they are not computed twice.
        """
        query, query_encoding = self._clipped(query, max_length)
        tokenizer = self._for_length(max_length)
        try:
            if self._templated:
                layout = self._layout(tokenizer, query_encoding, max_length)
                if layout is not None:
                    return [layout.pair(ids) for ids in self._passage_ids(passages, max_length, digests)]
            encoded: list[Encoded] = list(self._encode(tokenizer, [(query, passage) for passage in passages]))
            return encoded
        except Exception as exc:
            raise ModelError(f"cannot tokenize with {self.path}: {exc}") from None

    def cache_info(self) -> dict[str, int]:
        """Passage token cache figures: size, entries, hits, misses."""
        return {
            "size": self.cache_size,
            "entries": len(self._passages),
            "hits": self.cache_hits,
            "misses": self.cache_misses,
        }

    def cache_clear(self) -> None:
        """Forget every passage and zero the counts."""
        with self._lock:
            self._passages.clear()
            self.cache_hits = self.cache_misses = 0

    def _layout(self, tokenizer: Tokenizer, query_encoding: Encoding, max_length: int) -> _Layout | None:
        probe = tokenizer.post_process(query_encoding, self._probe)
        try:
            return _Layout(probe, self._probe.ids, max_length)
        except ValueError:
            self._templated = False  # a property of the tokenizer: ask no more
            return None

    def _tokenize_heads(self, texts: list[str], max_length: int) -> list[np.ndarray]:
        """The first ``max_length`` token ids of each text.

        A long text is cut at a space past ``CLIP_CHARS_PER_TOKEN`` characters a token
        first: its head tokenizes the same as the whole (words are tokenized on their
        own), and a 50-page document costs what its first page costs. A cut text that
        gives fewer than ``max_length`` tokens is tokenized whole.
        """
        limit = max_length * CLIP_CHARS_PER_TOKEN
        heads = []
        for text in texts:
            cut = text.rfind(" ", 0, limit) if len(text) > limit else -1
            heads.append(text[:cut] if cut > 0 else text)
        encodings = self._encode(self._plain, heads, add_special_tokens=False)
        ids = [np.asarray(e.ids[:max_length], dtype=np.int32) for e in encodings]  # int32 halves the cache
        short = [i for i, (head, text) in enumerate(zip(heads, texts)) if len(ids[i]) < max_length and head is not text]
        if short:
            for i, e in zip(short, self._encode(self._plain, [texts[i] for i in short], add_special_tokens=False)):
                ids[i] = np.asarray(e.ids[:max_length], dtype=np.int32)
        return ids

    def _passage_ids(
        self, passages: Sequence[str], max_length: int, digests: Sequence[bytes] | None
    ) -> list[np.ndarray]:
        """Each passage's token ids, cut at ``max_length`` (no pair keeps more), from the
        cache where it has them; the others are tokenized in one ``encode_batch_fast``."""
        found: list[np.ndarray | None] = [None] * len(passages)
        missing: dict[str, list[int]] = {}
        if not self.cache_size:
            keys = []
        else:
            keys = [(max_length, d) for d in (digests if digests is not None else map(passage_digest, passages))]
        with self._lock:
            for i, text in enumerate(passages):
                ids = self._passages.get(keys[i]) if self.cache_size else None
                if ids is not None:
                    self._passages.move_to_end(keys[i])
                    found[i] = ids
                else:
                    missing.setdefault(text, []).append(i)
            self.cache_hits += len(passages) - sum(len(v) for v in missing.values())
            self.cache_misses += len(missing)
        if missing:
            texts = list(missing)
            fresh = self._tokenize_heads(texts, max_length)
            for text, ids in zip(texts, fresh):
                for i in missing[text]:
                    found[i] = ids
            if self.cache_size:
                with self._lock:
                    for text, ids in zip(texts, fresh):
                        self._passages[keys[missing[text][0]]] = ids
                    while len(self._passages) > self.cache_size:
                        self._passages.popitem(last=False)
        return found  # type: ignore[return-value]

    def query_token_budget(self, query: str, max_length: int) -> int:
        """Passage tokens that fit beside ``query`` (as :meth:`clip_query` cuts it) in ``max_length``."""
        used = len(self._clipped(query, max_length)[1].ids)
        return max(1, max_length - self.num_special_tokens - used)

    def chunk_text(self, text: str, chunk_tokens: int, stride: int, max_chunks: int) -> list[str]:
        """Windows of ``chunk_tokens`` tokens (no special tokens), ``stride`` tokens shared
        by neighbours, at most ``max_chunks``; each returned as a slice of ``text``.

        A text of at most ``chunk_tokens`` tokens comes back whole; a text with no
        token (empty, or only spaces) gives ``[]``.
        """
        if chunk_tokens < 1:
            raise ModelOptionError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
        if not 0 <= stride < chunk_tokens:
            raise ModelOptionError(
                f"stride must be at least 0 and smaller than chunk_tokens ({chunk_tokens}), got {stride}"
            )
        if max_chunks < 1:
            raise ModelOptionError(f"max_chunks must be at least 1, got {max_chunks}")
        try:
            encoding = self._plain.encode(text, add_special_tokens=False)
        except Exception as exc:
            raise ModelError(f"cannot tokenize with {self.path}: {exc}") from None
        offsets = encoding.offsets
        n = len(offsets)
        if n == 0:
            return []
        if n <= chunk_tokens:
            return [text]
        step = chunk_tokens - stride
        chunks: list[str] = []
        start = 0
        while len(chunks) < max_chunks:
            end = min(start + chunk_tokens, n)
            chunks.append(text[offsets[start][0] : offsets[end - 1][1]])
            if end >= n:
                break
            start += step
        return chunks


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple`` (``multiple`` <= 1: ``n``)."""
    if multiple <= 1:
        return n
    return -(-n // multiple) * multiple


def padded_width(length: int, pad_multiple: int, max_width: int | None = None) -> int:
    """The width a batch whose longest pair has ``length`` tokens is padded to.

    A multiple of ``pad_multiple`` (kernels like it) but never past ``max_width``
    (the call's max_length, which the model's position embeddings allow) unless the
    pair itself is longer.
    """
    width = round_up(length, pad_multiple)
    if max_width is not None and width > max_width:
        width = max(length, max_width)
    return width


def plan_batches(
    lengths: Sequence[int],
    batch_size: int,
    *,
    max_tokens: int | None = None,
    pad_multiple: int = 8,
    max_width: int | None = None,
) -> list[tuple[np.ndarray, int]]:
    """``(positions, width)`` per batch: pairs sorted longest first, cut by rows and tokens.

    A batch holds at most ``batch_size`` rows and, when ``max_tokens`` is given, at most
    ``max_tokens`` padded tokens (rows x width, width being its longest pair rounded up
    to ``pad_multiple``); a pair longer than the budget gets a batch of its own.
    """
    lengths_array = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths_array, kind="stable")
    plans: list[tuple[np.ndarray, int]] = []
    start = 0
    n = len(order)
    while start < n:
        width = padded_width(int(lengths_array[order[start]]), pad_multiple, max_width)
        rows = batch_size
        if max_tokens is not None:
            rows = max(1, min(rows, max_tokens // width))
        stop = min(n, start + rows)
        plans.append((order[start:stop], width))
        start = stop
    return plans


def make_feeds(
    encodings: Sequence[Encoded],
    width: int,
    pad_id: int,
    names: Sequence[str] = INPUT_NAMES,
    dtypes: dict[str, np.dtype] | None = None,
) -> dict[str, np.ndarray]:
    """The model's inputs for ``encodings`` padded to ``width``: ids, mask, token types."""
    dtypes = dtypes or {}
    rows = len(encodings)
    ids = np.full((rows, width), pad_id, dtype=np.int64)
    mask = np.zeros((rows, width), dtype=np.int64)
    types = np.zeros((rows, width), dtype=np.int64) if "token_type_ids" in names else None
    for row, encoding in enumerate(encodings):
        n = len(encoding.ids)
        ids[row, :n] = encoding.ids
        mask[row, :n] = 1  # pairs are never padded before this
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
    return feeds


def iter_batches(
    encodings: Sequence[Encoded],
    batch_size: int,
    pad_id: int,
    names: Sequence[str] = INPUT_NAMES,
    dtypes: dict[str, np.dtype] | None = None,
    *,
    max_tokens: int | None = None,
    pad_multiple: int = 1,
    max_width: int | None = None,
) -> Iterator[Batch]:
    """``(positions, feeds)`` per batch: longest pairs first, each batch padded to its own longest
    (rounded up to ``pad_multiple``) and holding at most ``batch_size`` rows and ``max_tokens``
    padded tokens.

    ``positions`` are the indices into ``encodings`` of the batch's rows, so scores go
    back to the caller's order with ``out[positions] = batch_scores``. ``names`` are the
    inputs the model declares; ``dtypes`` their integer types (int64 unless said).
    """
    lengths = [len(e.ids) for e in encodings]
    for positions, width in plan_batches(
        lengths, batch_size, max_tokens=max_tokens, pad_multiple=pad_multiple, max_width=max_width
    ):
        yield positions, make_feeds([encodings[p] for p in positions], width, pad_id, names, dtypes)
