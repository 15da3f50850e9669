"""The UBI recorder against a scripted fake OpenSearch: never raises on the search
side, drops are counted and logged once, writing resumes by itself."""

from __future__ import annotations

import asyncio
import json
import logging

from es_rerank.config import UpstreamSettings
from es_rerank.errors import UpstreamUnavailableError
from es_rerank.experiments.config import UbiSettings
from es_rerank.experiments.record import Recorder
from es_rerank.metrics import Metrics
from es_rerank.upstream import UpstreamResponse


class FakeOpenSearch:
    """``mode``: ok, down (connection refused), blocked (every bulk item refused)."""

    def __init__(self) -> None:
        self.settings = UpstreamSettings()
        self.mode = "ok"
        self.docs: list[dict] = []
        self.indices: set[str] = set()

    async def request(self, method, raw_path, query=b"", *, headers=None, content=None, decode=False, timeout=None):
        if self.mode == "down":
            raise UpstreamUnavailableError("connection refused")
        path = raw_path.decode()
        if method == "HEAD":
            return UpstreamResponse(200 if path[1:] in self.indices else 404, [], b"")
        if method == "PUT":
            self.indices.add(path[1:])
            return UpstreamResponse(200, [], b'{"acknowledged":true}')
        lines = content.decode().strip().split("\n")
        items = []
        for _action, doc in zip(lines[::2], lines[1::2]):
            if self.mode == "blocked":
                items.append(
                    {"index": {"status": 403, "error": {"type": "cluster_block_exception", "reason": "blocked"}}}
                )
            else:
                self.docs.append(json.loads(doc))
                items.append({"index": {"status": 201}})
        body = {"errors": self.mode == "blocked", "items": items}
        return UpstreamResponse(200, [], json.dumps(body).encode())


def _count(metrics: Metrics, outcome: str) -> float:
    return (
        metrics.registry.get_sample_value("es_rerank_ubi_documents_total", {"index": "ubi_queries", "outcome": outcome})
        or 0.0
    )


def test_queue_full_refused_down_and_resume(caplog):
    async def scenario():
        fake, metrics = FakeOpenSearch(), Metrics()
        rec = Recorder(fake, UbiSettings(queue_size=3, batch_size=2, flush_interval_ms=10), metrics)
        for i in range(5):  # nothing started: two over the queue's bound
            rec.record_query({"query_id": f"q{i}", "query": {"match_all": {}}})
        assert rec.queued == 3 and _count(metrics, "queue_full") == 2
        await rec.start()
        assert fake.indices == {"ubi_queries", "ubi_events"}
        while rec.queued:
            await rec.wait_written()
        assert [d["query_id"] for d in fake.docs] == ["q0", "q1", "q2"]
        assert fake.docs[0]["query"] == '{"match_all":{}}'  # UBI keeps the DSL as a string
        fake.mode = "blocked"
        rec.record_query({"query_id": "b1"})
        await rec.wait_written()
        fake.mode = "down"
        rec.record_query({"query_id": "d1"})
        await rec.wait_written()
        assert _count(metrics, "refused") == 1 and _count(metrics, "unavailable") == 1
        fake.mode = "ok"
        rec.record_query({"query_id": "ok"})
        await rec.wait_written()
        assert fake.docs[-1]["query_id"] == "ok" and _count(metrics, "written") == 4
        rec.record_query({"query_id": "last"})
        await rec.stop()  # flushes what is queued
        assert fake.docs[-1]["query_id"] == "last"

    with caplog.at_level(logging.INFO, logger="es_rerank.ubi"):
        asyncio.run(scenario())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # once for the queue-full run, once for the blocked/down run
    assert sum("resumed" in r.getMessage() for r in caplog.records) == 2


def test_start_with_opensearch_down_creates_indices_later():
    async def scenario():
        fake = FakeOpenSearch()
        fake.mode = "down"
        rec = Recorder(fake, UbiSettings(flush_interval_ms=10), Metrics())
        await rec.start()  # does not raise
        fake.mode = "ok"
        rec.record_query({"query_id": "x"})
        await rec.wait_written()
        assert "ubi_queries" in fake.indices and fake.docs == [{"query_id": "x"}]
        await rec.stop()

    asyncio.run(scenario())
