"""A score cache shared by several proxies through Redis (or Valkey, or anything that
speaks the Redis protocol), in front of each model's own LRU.

A look-up asks the local LRU first, then Redis for what it missed (one ``MGET``, on the
model's tokenizer thread, never the event loop); what Redis had goes into the LRU. A
new score goes into the LRU at once and into a bounded queue that a writer thread
sends to Redis in pipelines of ``SET key value EX ttl``. Keys carry the model's name,
the pair length, the query text and the passage's digest, hashed under a prefix.

Redis never fails a search: a look-up or write that errs or takes longer than
``timeout_ms`` counts as a failure, and Redis is then left alone for
``retry_after_s`` (look-ups miss, writes are dropped and counted) before it is tried
again. One log line when it goes away, one when it is back. Bounded: every key has a
TTL; the Redis server's ``maxmemory`` with ``allkeys-lru`` bounds the whole (see README).
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
import time
from collections.abc import Hashable, Sequence
from typing import Any, cast

from ._cache import ScoreCache

__all__ = ["SharedScoreCache", "RedisStore", "shared_key", "attach_shared_cache"]

logger = logging.getLogger("es_rerank")


def shared_key(prefix: str, key: Hashable) -> bytes:
    """The Redis key of a :class:`ScoreCache` key ``(model, max_length, query, digest)``."""
    model, max_length, query, digest = cast("tuple[str, int, str, bytes]", key)
    h = hashlib.blake2b(digest_size=20)
    for part in (model.encode(), str(max_length).encode(), query.encode("utf-8", "surrogatepass")):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    h.update(digest)
    return prefix.encode() + h.hexdigest().encode()


class RedisStore:
    """One Redis connection pool shared by every model's cache, with the back-off and
    the writer thread. ``client`` is a ``redis.Redis`` (tests pass their own)."""

    def __init__(self, client: Any, *, ttl_s: int, prefix: str, retry_after_s: float, max_pending: int) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.prefix = prefix
        self.retry_after_s = retry_after_s
        self.max_pending = max_pending
        self.down_until = 0.0
        self.failures = 0
        self.dropped = 0
        self.written = 0
        self._down = False
        self._pending: collections.deque[tuple[bytes, float]] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="rerank-shared-cache", daemon=True)
        self._writer.start()

    @classmethod
    def from_settings(cls, settings: Any) -> RedisStore:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        timeout = settings.timeout_ms / 1000
        client = redis.Redis.from_url(
            settings.url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # a failure backs off here, not inside the client
            health_check_interval=0,
        )
        return cls(
            client,
            ttl_s=settings.ttl_s,
            prefix=settings.prefix,
            retry_after_s=settings.retry_after_s,
            max_pending=settings.max_pending,
        )

    # -- state ----------------------------------------------------------------------

    def available(self) -> bool:
        return time.monotonic() >= self.down_until

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self.failures += 1
            self.down_until = time.monotonic() + self.retry_after_s
            first = not self._down
            self._down = True
        if first:
            logger.warning(
                "shared score cache unavailable (%s: %s); searches go on without it, retrying in %.0fs",
                type(exc).__name__, exc, self.retry_after_s,
            )  # fmt: skip

    def _succeeded(self) -> None:
        if self._down:
            with self._lock:
                was, self._down = self._down, False
            if was:
                logger.warning("shared score cache reachable again")

    # -- reads and writes -------------------------------------------------------------

    def get_many(self, keys: Sequence[bytes]) -> list[float | None]:
        if not keys or not self.available():
            return [None] * len(keys)
        try:
            values = self.client.mget(list(keys))
        except Exception as exc:  # redis errors, timeouts, OSError: never the search's problem
            self._failed(exc)
            return [None] * len(keys)
        self._succeeded()
        out: list[float | None] = []
        for value in values:
            try:
                out.append(None if value is None else float(value))
            except ValueError:
                out.append(None)
        return out

    def put_many(self, items: Sequence[tuple[bytes, float]]) -> None:
        if not items:
            return
        if not self.available():
            self.dropped += len(items)
            return
        with self._lock:
            room = self.max_pending - len(self._pending)
            self._pending.extend(items[: max(room, 0)])
            self.dropped += max(len(items) - max(room, 0), 0)
        self._wake.set()

    def _write_loop(self) -> None:
        while not self._closed:
            self._wake.wait(1.0)
            self._wake.clear()
            while self._pending and not self._closed:
                with self._lock:
                    batch = [self._pending.popleft() for _ in range(min(500, len(self._pending)))]
                if not self.available():
                    self.dropped += len(batch)
                    continue
                try:
                    pipe = self.client.pipeline(transaction=False)
                    for key, value in batch:
                        pipe.set(key, repr(float(value)), ex=self.ttl_s)
                    pipe.execute()
                except Exception as exc:
                    self.dropped += len(batch)
                    self._failed(exc)
                    continue
                self.written += len(batch)
                self._succeeded()

    def flush(self, timeout: float = 5.0) -> None:
        """Wait (bounded) until the queued writes are sent (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self.flush(1.0)
        self._closed = True
        self._wake.set()
        try:
            self.client.close()
        except Exception:
            pass

    def info(self) -> dict[str, Any]:
        return {
            "available": self.available(),
            "failures": self.failures,
            "written": self.written,
            "dropped": self.dropped,
            "pending": len(self._pending),
            "ttl_s": self.ttl_s,
        }


class SharedScoreCache:
    """A model's :class:`ScoreCache` with ``store`` behind it: the same interface."""

    def __init__(self, local: ScoreCache, store: RedisStore) -> None:
        self.local = local
        self.store = store
        self.shared_hits = 0
        self.shared_misses = 0

    key = staticmethod(ScoreCache.key)

    @property
    def maxsize(self) -> int:
        return self.local.maxsize

    @property
    def hits(self) -> int:
        return self.local.hits + self.shared_hits

    @property
    def misses(self) -> int:
        return self.shared_misses

    def get_many(self, keys: Sequence[Hashable]) -> list[float | None]:
        out = self.local.get_many(keys)
        missing = [i for i, v in enumerate(out) if v is None]
        if not missing:
            return out
        found = self.store.get_many([shared_key(self.store.prefix, keys[i]) for i in missing])
        back = []
        for i, value in zip(missing, found):
            if value is None:
                self.shared_misses += 1
            else:
                self.shared_hits += 1
                out[i] = value
                back.append((keys[i], value))
        self.local.put_many(back)
        return out

    def put_many(self, items: Sequence[tuple[Hashable, float]]) -> None:
        self.local.put_many(items)
        self.store.put_many([(shared_key(self.store.prefix, k), float(v)) for k, v in items])

    def clear(self) -> None:
        self.local.clear()
        self.shared_hits = self.shared_misses = 0

    def __len__(self) -> int:
        return len(self.local)

    def info(self) -> dict[str, Any]:
        return {
            **self.local.info(),
            "shared": {**self.store.info(), "hits": self.shared_hits, "misses": self.shared_misses},
        }


def attach_shared_cache(rerankers: dict[str, Any], settings: Any) -> RedisStore:
    """Put one Redis store (``settings``: :class:`~es_rerank.config.SharedCacheSettings`)
    behind the score cache of every model that has one."""
    store = RedisStore.from_settings(settings)
    for reranker in rerankers.values():
        cache = getattr(reranker, "cache", None)
        if isinstance(cache, ScoreCache):
            reranker.cache = SharedScoreCache(cache, store)
    logger.info("score cache shared through %s (ttl %ds)", settings.url.split("@")[-1], settings.ttl_s)
    return store
