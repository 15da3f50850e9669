"""The degrade steps and how a search's scoring walks them, with fake models passed in."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from es_rerank.config import IndexSettings, ServerSettings, settings_from_dict
from es_rerank.errors import ConfigError, ModelError, ModelOverloadedError
from es_rerank.metrics import Metrics
from es_rerank.plan import plan_search
from es_rerank.scoring import Outcome, Reason, Scorer, Step, degrade_steps


def test_default_steps_shrink_then_first_stage_or_fallback_model_first():
    assert degrade_steps(IndexSettings(pattern="a"), "big") == [Step("big", partial=True, last=True)]
    spec = IndexSettings(pattern="a", fallback_model="small")
    assert degrade_steps(spec, "big") == [Step("big"), Step("small", partial=True, last=True)]
    # a search that names the fallback model itself has no cheaper model to fall to
    assert degrade_steps(spec, "small") == [Step("small", partial=True, last=True)]


@pytest.mark.parametrize(
    "degrade, steps",
    [
        (["first_stage"], [Step("big", last=True)]),
        ([], [Step("big", last=True)]),
        (["shrink_window", "fallback_model"], [Step("big", partial=True), Step("small", last=True)]),
        (["fallback_model", "first_stage"], [Step("big"), Step("small", last=True)]),
    ],
)
def test_steps_follow_the_configured_order(degrade, steps):
    assert degrade_steps(IndexSettings(pattern="a", fallback_model="small", degrade=degrade), "big") == steps


@pytest.mark.parametrize(
    "index, problem",
    [
        ({"degrade": ["first_stage", "shrink_window"]}, "first_stage can only be the last step"),
        ({"degrade": ["shrink_window", "shrink_window"]}, "twice"),
        ({"degrade": ["fallback_model"]}, "needs the index's fallback_model"),
        ({"fallback_model": "nope"}, "fallback_model 'nope' is not under models"),
        ({"degrade": ["later"]}, "indices.0.degrade.0"),
    ],
)
def test_bad_degrade_settings_are_reported(index, problem, tmp_path):
    with pytest.raises(ConfigError) as err:
        settings_from_dict({"models": {"m": {"path": str(tmp_path)}}, "indices": [{"pattern": "a", **index}]}, env={})
    assert problem in str(err.value)


class FakeModel:
    """Answers as told: ``refuse`` raises ModelOverloadedError, ``fit`` scores only the first
    ``fit`` passages of a partial call, ``fail`` raises a ModelError. Records each call's admission."""

    def __init__(self, name: str, *, refuse: bool = False, fit: int | None = None, fail: bool = False) -> None:
        self.name, self.refuse, self.fit, self.fail = name, refuse, fit, fail
        self.calls: list[dict] = []

    async def ascore(self, query, passages, *, budget_s=None, partial=False, admit_idle=True, **_):
        self.calls.append({"budget_s": budget_s, "partial": partial, "admit_idle": admit_idle})
        if self.fail:
            raise ModelError("boom")
        if self.refuse and not (partial and self.fit):
            raise ModelOverloadedError(f"model {self.name!r} is overloaded")
        n = len(passages) if not partial or self.fit is None else min(self.fit, len(passages))
        return -np.arange(n, dtype=np.float32)  # first-stage order, so the rebuild is easy to read

    def queue_wait_s(self):
        return 0.0

    def info(self):
        return {"name": self.name, "max_length": 256}


SPEC = IndexSettings(pattern="a*", fields=["text"], window=5, fallback_model="small")
DATA = {
    "took": 1,
    "hits": {
        "total": {"value": 7},
        "hits": [{"_id": str(i), "_score": 10.0 - i, "_source": {"text": f"t{i}"}} for i in range(7)],
    },
}


def _score(big: FakeModel, small: FakeModel, spec: IndexSettings = SPEC, **server):
    metrics = Metrics()
    scorer = Scorer(ServerSettings(**server), {"big": big, "small": small}, metrics)
    plan = plan_search(spec, {"query": {"match": {"text": "q"}}}, [], models=["big", "small"], default_model="big")
    rebuilt, scored, _ = asyncio.run(scorer.rerank(plan, spec, DATA, 0.0, 0.0))
    return rebuilt, scored, metrics


def test_the_search_model_scores_when_it_can():
    _, scored, _ = _score(FakeModel("big"), FakeModel("small"))
    assert (scored.outcome, scored.reason, scored.model, scored.window) == (Outcome.RERANKED, Reason.RERANKED, "big", 5)


def test_refused_on_its_model_the_fallback_model_scores_the_whole_window():
    big, small = FakeModel("big", refuse=True), FakeModel("small")
    _, scored, metrics = _score(big, small)
    assert (scored.outcome, scored.reason, scored.model, scored.window) == ("reranked", "fallback_model", "small", 5)
    assert big.calls[0]["admit_idle"] is False  # a step with a way out may be refused even on an idle model
    assert small.calls[0] == {"budget_s": small.calls[0]["budget_s"], "partial": True, "admit_idle": True}
    assert 0 < small.calls[0]["budget_s"] <= 0.9 * 10.0
    assert metrics.outcomes.labels("a*", "small", "reranked", "fallback_model")._value.get() == 1


def test_a_partial_window_reorders_the_scored_hits_and_keeps_the_rest_in_first_stage_order():
    big, small = FakeModel("big", refuse=True), FakeModel("small", refuse=True, fit=2)
    rebuilt, scored, _ = _score(big, small)
    assert (scored.outcome, scored.reason, scored.model, scored.window) == ("reranked", "partial", "small", 2)
    hits = rebuilt["hits"]["hits"]
    assert [h["_id"] for h in hits] == ["0", "1", "2", "3", "4", "5", "6"]
    assert [h["_score"] for h in hits[:2]] == [0.0, -1.0] and hits[2]["_score"] == 8.0  # only two rescored
    assert "_rerank" in hits[1] and "_rerank" not in hits[2]


def test_nothing_admitted_is_first_stage_order_marked_overloaded():
    _, scored, metrics = _score(FakeModel("big", refuse=True), FakeModel("small", refuse=True))
    assert (scored.outcome, scored.reason, scored.model, scored.scores) == ("fallback", "overloaded", "big", None)
    assert metrics.outcomes.labels("a*", "big", "fallback", "overloaded")._value.get() == 1


def test_a_failing_model_is_first_stage_order_marked_rerank_error():
    _, scored, _ = _score(FakeModel("big", fail=True), FakeModel("small"))
    assert (scored.outcome, scored.reason) == ("fallback", "rerank_error")


def test_without_shedding_there_is_no_deadline_and_no_degradation():
    big, small = FakeModel("big"), FakeModel("small")
    _, scored, _ = _score(big, small, shed_overload=False)
    assert scored.reason == "reranked" and big.calls == [{"budget_s": None, "partial": False, "admit_idle": True}]
    assert small.calls == []


def test_outcome_and_reason_are_closed_string_enums():
    assert {o.value for o in Outcome} == {"reranked", "fallback", "skipped", "error"}
    assert f"{Reason.PARTIAL}" == "partial" and Reason("fallback_model") is Reason.FALLBACK_MODEL
