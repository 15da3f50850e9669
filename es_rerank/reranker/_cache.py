"""An LRU cache of scores: (model, max length, query text, passage hash) -> score."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence

from ..errors import ModelOptionError

__all__ = ["ScoreCache", "passage_digest"]


def passage_digest(text: str) -> bytes:
    """A 16-byte BLAKE2b digest of a passage: a changed text gets a different key."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


CacheKey = tuple[str, int, str, bytes]


class ScoreCache:
    """A thread-safe LRU map from ``(model, max_length, query, passage digest)`` to a score.

    ``maxsize`` 0 turns it off (every lookup misses, nothing is stored). ``hits`` and
    ``misses`` count lookups since creation (or :meth:`clear`).
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 0:
            raise ModelOptionError(f"cache size must be 0 (off) or more, got {maxsize}")
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._data: OrderedDict[Hashable, float] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(model: str, max_length: int, query: str, passage: str) -> CacheKey:
        return (model, max_length, query, passage_digest(passage))

    def get_many(self, keys: Sequence[Hashable]) -> list[float | None]:
        """The cached score for each key, or None; counts hits and misses."""
        if not self.maxsize:
            self.misses += len(keys)
            return [None] * len(keys)
        out: list[float | None] = []
        with self._lock:
            data = self._data
            for key in keys:
                value = data.get(key)
                if value is None:
                    self.misses += 1
                else:
                    data.move_to_end(key)
                    self.hits += 1
                out.append(value)
        return out

    def put_many(self, items: Sequence[tuple[Hashable, float]]) -> None:
        """Store scores, evicting the least recently used entries past ``maxsize``."""
        if not self.maxsize:
            return
        with self._lock:
            data = self._data
            for key, value in items:
                data[key] = float(value)
                data.move_to_end(key)
            while len(data) > self.maxsize:
                data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def info(self) -> dict[str, int]:
        return {"size": len(self._data), "maxsize": self.maxsize, "hits": self.hits, "misses": self.misses}
