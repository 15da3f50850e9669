"""The UBI recorder: a bounded queue written to OpenSearch in ``_bulk`` batches.

:meth:`Recorder.record` only appends to a queue (no I/O, never raises), so
recording never delays or fails a search. A background task writes the queue in
batches; when the queue is full, OpenSearch refuses a document (a read-only
block, a mapping conflict) or cannot be reached, the documents are dropped and
counted in ``es_rerank_ubi_documents_total{outcome=...}``. The first drop after a
good write is logged once, and so is the first good write after drops: recording
resumes by itself with the next batch.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
from collections.abc import Iterable
from typing import Any

from ..bodies import dumps, loads_response
from ..config import UpstreamSettings
from ..errors import RerankError
from ..metrics import Metrics
from .config import UbiSettings
from .ubi import EVENTS_MAPPING, QUERIES_MAPPING, index_body

__all__ = ["Recorder", "own_auth_headers", "Drop"]

logger = logging.getLogger("es_rerank.ubi")


class Drop:
    """Why documents were not written (the ``outcome`` label)."""

    QUEUE_FULL = "queue_full"
    REFUSED = "refused"  # OpenSearch answered with an error for the document or the batch
    UNAVAILABLE = "unavailable"  # no answer from OpenSearch
    STOPPED = "stopped"  # still queued when the proxy stopped


def own_auth_headers(settings: UpstreamSettings) -> list[tuple[str, str]]:
    """es-rerank's own credentials for its own writes (never a client's)."""
    if not settings.username:
        return []
    token = base64.b64encode(f"{settings.username}:{settings.password or ''}".encode()).decode()
    return [("authorization", f"Basic {token}")]


class Recorder:
    """Writes UBI documents for the proxy; ``upstream`` is any object with the
    :class:`~es_rerank.upstream.Upstream` ``request`` coroutine."""

    def __init__(
        self, upstream, settings: UbiSettings, metrics: Metrics, *, credentials: UpstreamSettings | None = None
    ) -> None:
        self.upstream = upstream
        self.credentials = credentials  # es-rerank's own, never a client's
        self.settings = settings
        self.metrics = metrics
        self._queue: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._ready: set[str] = set()  # indices known to exist
        self._dropping = False
        self._dropped_since_ok = 0
        self._written_event = asyncio.Event()  # set after every batch (tests wait on it)
        metrics.watch_ubi_queue(lambda: len(self._queue))

    # -- the search side: no I/O -------------------------------------------------

    def record_query(self, doc: dict[str, Any]) -> None:
        self._put(self.settings.queries_index, doc)

    def _put(self, index: str, doc: dict[str, Any]) -> None:
        if len(self._queue) >= self.settings.queue_size:
            self._drop(index, Drop.QUEUE_FULL, 1, "the queue is full")
            return
        self._queue.append((index, doc))
        if len(self._queue) >= self.settings.batch_size:
            self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Create the indices if missing (a failure is retried before each write) and start writing."""
        if self._task is None:
            try:
                await self.ensure_indices()
            except RerankError as exc:
                logger.warning("UBI indices not checked yet (%s); retried before each write", exc.reason)
            self._task = asyncio.create_task(self._run(), name="es-rerank-ubi-recorder")

    async def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued (within ``timeout``), then stop; what is left is counted as dropped."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        try:
            await asyncio.wait_for(self.flush(), timeout)
        except TimeoutError:
            pass
        left: dict[str, int] = collections.Counter(index for index, _ in self._queue)
        self._queue.clear()
        for index, n in left.items():
            self._drop(index, Drop.STOPPED, n, "the proxy stopped")

    async def flush(self) -> None:
        """Write everything queued now (batch by batch)."""
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.settings.batch_size))]
            await self._write(batch)

    async def wait_written(self) -> None:
        """Return after the next batch is written or dropped (tests wait on this, not on time)."""
        self._written_event.clear()
        await self._written_event.wait()

    async def _run(self) -> None:
        interval = self.settings.flush_interval_ms / 1000
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the writer die: log, and go on with the next batch
                logger.exception("UBI recorder: unexpected error while writing")

    # -- writing -----------------------------------------------------------------

    async def ensure_indices(self, indices: Iterable[str] | None = None) -> None:
        """Create the UBI indices that do not exist yet (with UBI's mappings)."""
        wanted = {self.settings.queries_index: QUERIES_MAPPING, self.settings.events_index: EVENTS_MAPPING}
        for name in indices or wanted:
            if name in self._ready:
                continue
            if not self.settings.create_indices:
                self._ready.add(name)
                continue
            headers = self._auth()
            answer = await self.upstream.request(
                "HEAD", f"/{name}".encode(), headers=headers, timeout=self.settings.write_timeout
            )
            if answer.status == 404:
                answer = await self.upstream.request(
                    "PUT",
                    f"/{name}".encode(),
                    headers=[*headers, ("content-type", "application/json")],
                    content=dumps(index_body(wanted[name])),
                    timeout=self.settings.write_timeout,
                )
                if answer.status not in (200, 201) and b"resource_already_exists_exception" not in answer.content:
                    raise RerankError(f"cannot create index [{name}]: HTTP {answer.status} {answer.content[:200]!r}")
                logger.info("created UBI index [%s]", name)
            elif answer.status != 200:
                raise RerankError(f"cannot check index [{name}]: HTTP {answer.status}")
            self._ready.add(name)

    def _auth(self) -> list[tuple[str, str]]:
        return own_auth_headers(self.credentials) if self.credentials is not None else []

    async def write_now(
        self, index: str, docs: list[dict[str, Any]], *, refresh: str | None = None
    ) -> tuple[int, list[str]]:
        """Bulk-write ``docs`` to ``index`` now (the events endpoint): (written, errors).
        Raises :class:`RerankError` when OpenSearch cannot be reached."""
        await self.ensure_indices([index])
        written, errors = await self._bulk([(index, d) for d in docs], refresh=refresh)
        return sum(n for n in written.values() if n > 0), [reason for _, reason in errors]

    async def _write(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        try:
            try:
                await self.ensure_indices({index for index, _ in batch})
                _, errors = await self._bulk(batch)
            except RerankError as exc:
                for index, n in collections.Counter(i for i, _ in batch).items():
                    self._drop(index, Drop.UNAVAILABLE, n, exc.reason)
                return
            if errors:
                for index, n in collections.Counter(i for i, _ in errors).items():
                    self._drop(index, Drop.REFUSED, n, errors[0][1])
            if len(errors) < len(batch):
                self._ok()
        finally:
            self._written_event.set()

    async def _bulk(self, batch: list[tuple[str, dict[str, Any]]], *, refresh: str | None = None):
        lines = []
        for index, doc in batch:
            lines.append(dumps({"index": {"_index": index}}))
            lines.append(dumps(_encoded(doc)))
        headers = [*self._auth(), ("content-type", "application/x-ndjson")]
        query = b"" if refresh is None else b"refresh=" + refresh.encode("ascii", "ignore")
        answer = await self.upstream.request(
            "POST",
            b"/_bulk",
            query,
            headers=headers,
            content=b"\n".join(lines) + b"\n",
            decode=True,
            timeout=self.settings.write_timeout,
        )
        if answer.status != 200:
            reason = f"HTTP {answer.status}: {answer.content[:300].decode('utf-8', 'replace')}"
            errors = [(index, reason) for index, _ in batch]
        else:
            data = loads_response(answer.content)
            errors = []
            if data.get("errors"):
                for (index, _), item in zip(batch, data.get("items", [])):
                    result: dict[str, Any] = next(iter(item.values()), {})
                    if "error" in result:
                        err = result["error"]
                        errors.append(
                            (index, f"{err.get('type')}: {err.get('reason')}" if isinstance(err, dict) else str(err))
                        )
        written = collections.Counter(index for index, _ in batch)
        for index, _ in errors:
            written[index] -= 1
        for index, n in written.items():
            if n > 0:
                self.metrics.observe_ubi(index, "written", n)
        return written, errors

    def _drop(self, index: str, why: str, n: int, detail: str) -> None:
        self.metrics.observe_ubi(index, why, n)
        self._dropped_since_ok += n
        if not self._dropping:
            self._dropping = True
            logger.warning(
                "UBI recording: dropping documents for [%s] (%s: %s); searches are served as usual, "
                "drops are counted in es_rerank_ubi_documents_total; logged once until writes succeed again",
                index,
                why,
                detail,
            )

    def _ok(self) -> None:
        if self._dropping:
            logger.info("UBI recording resumed (%d documents dropped meanwhile)", self._dropped_since_ok)
        self._dropping = False
        self._dropped_since_ok = 0


def _encoded(doc: dict[str, Any]) -> dict[str, Any]:
    """UBI keeps the query DSL as a string."""
    query = doc.get("query")
    if query is not None and not isinstance(query, str):
        return {**doc, "query": dumps(query).decode("utf-8")}
    return doc
