"""A client's newest search wins the model over its older ones (es_rerank/supersession.py),
on the scorer with a gated fake model: every wait is on an event, never on a clock."""

from __future__ import annotations

import asyncio

import numpy as np

from es_rerank.config import IndexSettings, ServerSettings
from es_rerank.metrics import Metrics
from es_rerank.scoring import Outcome, Reason, Scorer
from es_rerank.search import plan_search
from es_rerank.supersession import Claims, client_key

SPEC = IndexSettings(pattern="a*", fields=["text"], window=3)
DATA = {
    "took": 1,
    "hits": {
        "total": {"value": 3},
        "hits": [{"_id": str(i), "_score": 3.0 - i, "_source": {"text": f"t{i}"}} for i in range(3)],
    },
}


class GatedModel:
    """Holds every call at ``gate`` after saying it arrived; records cancelled calls."""

    name = "m"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.arrived: asyncio.Queue[str] = asyncio.Queue()
        self.cancelled: list[str] = []

    async def ascore(self, query, passages, **_):
        await self.arrived.put(query)
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(query)
            raise
        return np.arange(len(passages), dtype=np.float32)  # reversed order: reranked is visible

    def queue_wait_s(self):
        return 0.0

    def info(self):
        return {"name": "m", "max_length": 64}


def _plan(text: str):
    return plan_search(SPEC, {"query": {"match": {"text": text}}}, [], models=["m"], default_model="m")


def test_client_key_order_ubi_then_header_then_browser_address():
    ubi = {"ext": {"ubi": {"client_id": "c-1"}}}
    browser = {"origin": "http://app", "x-user": "u"}
    assert client_key(browser, "10.0.0.1", [ubi], ["a*"], header="x-user") == "ubi:c-1"
    assert client_key(browser, "10.0.0.1", [{}], ["a*"], header="x-user") == "header:u"
    assert client_key(browser, "10.0.0.1", [{}], ["b*", "a*"]) == "addr:10.0.0.1 http://app a*,b*"
    # A backend or a script (no Origin, no key of its own): nobody's newer search.
    assert client_key({}, "10.0.0.1", [{}], ["a*"]) is None


def test_the_newest_search_of_a_client_wins_and_the_older_answers_first_stage():
    async def run():
        model = GatedModel()
        scorer = Scorer(ServerSettings(), {"m": model}, Metrics())
        first_claim = await scorer.claim("ubi:c")
        first = asyncio.ensure_future(scorer.rerank(_plan("A"), SPEC, DATA, 0.0, 0.0, claim=first_claim))
        assert await model.arrived.get() == "A"  # queued at the model
        other = asyncio.ensure_future(
            scorer.rerank(_plan("B"), SPEC, DATA, 0.0, 0.0, claim=await scorer.claim("ubi:d"))
        )
        assert await model.arrived.get() == "B"
        # The same client types on: its newer claim returns once "A" has left the model.
        second_claim = await scorer.claim("ubi:c")
        assert model.cancelled == ["A"]
        rebuilt, scored, _ = await first
        assert (scored.outcome, scored.reason) == (Outcome.FALLBACK, Reason.SUPERSEDED)
        assert [h["_id"] for h in rebuilt["hits"]["hits"]] == ["0", "1", "2"]  # first-stage order
        second = asyncio.ensure_future(scorer.rerank(_plan("AL"), SPEC, DATA, 0.0, 0.0, claim=second_claim))
        assert await model.arrived.get() == "AL"
        model.gate.set()
        for task in (second, other):  # the newest, and another client's search, are reranked
            rebuilt, scored, _ = await task
            assert (scored.outcome, scored.reason) == (Outcome.RERANKED, Reason.RERANKED)
            assert [h["_id"] for h in rebuilt["hits"]["hits"]] == ["2", "1", "0"]
        scorer.release(second_claim)
        assert scorer.claims.superseded == 1

    asyncio.run(run())


def test_a_search_superseded_before_it_reaches_the_model_never_queues():
    async def run():
        model = GatedModel()
        scorer = Scorer(ServerSettings(), {"m": model}, Metrics())
        old = await scorer.claim("header:u")  # still waiting for OpenSearch, say
        new = await scorer.claim("header:u")  # nothing of "old" at the model: no wait
        _, scored, _ = await scorer.rerank(_plan("A"), SPEC, DATA, 0.0, 0.0, claim=old)
        assert scored.reason == Reason.SUPERSEDED and model.arrived.empty()
        model.gate.set()
        _, scored, _ = await scorer.rerank(_plan("AB"), SPEC, DATA, 0.0, 0.0, claim=new)
        assert scored.reason == Reason.RERANKED

    asyncio.run(run())


def test_items_of_one_msearch_share_a_claim_and_do_not_supersede_each_other():
    async def run():
        model = GatedModel()
        scorer = Scorer(ServerSettings(), {"m": model}, Metrics())
        claim = await scorer.claim("ubi:c")
        items = [asyncio.ensure_future(scorer.rerank(_plan(q), SPEC, DATA, 0.0, 0.0, claim=claim)) for q in ("x", "y")]
        assert {await model.arrived.get(), await model.arrived.get()} == {"x", "y"}
        newer = await scorer.claim("ubi:c")  # the next keystroke's _msearch: both items stop
        assert sorted(model.cancelled) == ["x", "y"]
        assert [(await t)[1].reason for t in items] == [Reason.SUPERSEDED, Reason.SUPERSEDED]
        assert newer is not None

    asyncio.run(run())


def test_off_nothing_is_superseded():
    async def run():
        scorer = Scorer(ServerSettings(supersede={"enabled": False}), {"m": GatedModel()}, Metrics())
        assert await scorer.claim("ubi:c") is None

    asyncio.run(run())


def test_the_registry_is_bounded():
    async def run():
        claims = Claims(max_clients=2)
        for key in ("a", "b", "c"):
            await claims.claim(key)
        assert list(claims._latest) == ["b", "c"]

    asyncio.run(run())
