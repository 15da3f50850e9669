"""Blending the first-stage score with the model's (es_rerank/blend.py), its config and
request options, and its place in the scorer: off by default, per index, per request."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from es_rerank.blend import Blend, blend_scores, first_stage_scores, parse_blend
from es_rerank.config import IndexSettings, ServerSettings
from es_rerank.errors import BadRequestError
from es_rerank.metrics import Metrics
from es_rerank.plan import plan_search
from es_rerank.scoring import Scorer

MODEL = np.array([3.0, 1.0, 2.0, 0.0])
FIRST = np.array([10.0, 20.0, 30.0, 40.0])


def test_weight_zero_keeps_the_model_order_and_one_the_first_stage_order():
    for method in ("minmax", "zscore", "rrf"):
        alone = blend_scores(MODEL, FIRST, Blend(method, 0.0))
        assert list(np.argsort(-alone, kind="stable")) == [0, 2, 1, 3]
        first = blend_scores(MODEL, FIRST, Blend(method, 1.0))
        assert list(np.argsort(-first, kind="stable")) == [3, 2, 1, 0]


def test_minmax_zscore_and_rrf_values():
    np.testing.assert_allclose(blend_scores(MODEL, FIRST, Blend("minmax", 0.5)), [0.5, 1 / 3, 2 / 3, 0.5])
    z = blend_scores(MODEL, FIRST, Blend("zscore", 0.25))
    zm, zf = (MODEL - MODEL.mean()) / MODEL.std(), (FIRST - FIRST.mean()) / FIRST.std()
    np.testing.assert_allclose(z, 0.75 * zm + 0.25 * zf)
    r = blend_scores(MODEL, FIRST, Blend("rrf", 0.5, rrf_k=60))
    np.testing.assert_allclose(r, [0.5 / 61 + 0.5 / 64, 0.5 / 63 + 0.5 / 63, 0.5 / 62 + 0.5 / 62, 0.5 / 64 + 0.5 / 61])


def test_constant_scores_and_one_hit_do_not_divide_by_zero():
    flat = blend_scores([1.0, 1.0], [5.0, 5.0], Blend("minmax", 0.3))
    assert np.all(np.isfinite(flat))
    assert np.all(np.isfinite(blend_scores([2.0], [7.0], Blend("zscore", 0.3))))


@pytest.mark.parametrize("bad", [{"method": "max"}, {"weight": 1.5}, {"weight": -0.1}, {"weight": True}, {"rrf_k": 0}])
def test_bad_blends_are_refused(bad):
    with pytest.raises(ValueError):
        Blend(**{"method": "minmax", "weight": 0.5, **bad})


def test_first_stage_scores_need_every_hit_scored():
    assert first_stage_scores([{"_score": 1}, {"_score": 2.5}]).tolist() == [1.0, 2.5]
    assert first_stage_scores([{"_score": 1}, {"_score": None}]) is None


def test_request_option_over_index_default():
    index = Blend("zscore", 0.2)
    assert parse_blend(None, index) is None and parse_blend(False, index) is None
    assert parse_blend(True, index) == index and parse_blend(True, None) == Blend("minmax", 0.5)
    assert parse_blend({"weight": 0.4}, index) == Blend("zscore", 0.4)
    assert parse_blend({"method": "rrf"}, index) == Blend("rrf", 0.2)
    with pytest.raises(ValueError, match="weight"):
        parse_blend({"method": "rrf"}, None)
    with pytest.raises(ValueError, match="unknown"):
        parse_blend({"weigth": 0.1}, None)


SPEC = IndexSettings(pattern="a*", fields=["text"], window=4)
BLENDED = IndexSettings(pattern="a*", fields=["text"], window=4, blend={"method": "minmax", "weight": 0.5})
BODY = {"query": {"match": {"text": "q"}}}


def _plan(spec, ext=None):
    body = dict(BODY, ext={"rerank": ext}) if ext is not None else BODY
    return plan_search(spec, body, [], models=["m"], default_model="m")


def test_off_by_default_on_per_index_and_per_request():
    assert _plan(SPEC).blend is None
    assert _plan(BLENDED).blend == Blend("minmax", 0.5)
    assert _plan(BLENDED, {"blend": False}).blend is None
    assert _plan(SPEC, {"blend": {"method": "rrf", "weight": 0.3}}).blend == Blend("rrf", 0.3)
    with pytest.raises(BadRequestError, match="blend"):
        _plan(SPEC, {"blend": {"weight": 2}})
    with pytest.raises(BadRequestError, match="blend"):
        _plan(SPEC, {"blend": "yes"})


class _Model:
    async def ascore(self, query, passages, **_):
        return np.array([3.0, 1.0, 2.0, 0.0][: len(passages)], dtype=np.float32)

    def queue_wait_s(self):
        return 0.0


DATA = {
    "took": 1,
    "hits": {
        "hits": [
            {"_id": str(i), "_score": s, "_source": {"text": f"t{i}"}} for i, s in enumerate([10.0, 20.0, 30.0, 40.0])
        ]
    },
}


def _rerank(spec, ext=None):
    scorer = Scorer(ServerSettings(), {"m": _Model()}, Metrics())
    rebuilt, _, _ = asyncio.run(scorer.rerank(_plan(spec, ext), spec, DATA, 0.0, 0.0))
    return [h["_id"] for h in rebuilt["hits"]["hits"]], rebuilt["hits"]["hits"]


def test_the_scorer_orders_by_the_blend_and_keeps_the_first_stage_score():
    assert _rerank(SPEC)[0] == ["0", "2", "1", "3"]  # the model alone
    ids, hits = _rerank(BLENDED)  # minmax halves: [0.5, 1/3, 2/3, 0.5], ties in first-stage order
    assert ids == ["2", "0", "3", "1"]
    assert hits[0]["_score"] == pytest.approx(2 / 3) and hits[0]["_rerank"]["first_stage_score"] == 30.0
    assert _rerank(BLENDED, {"blend": False})[0] == ["0", "2", "1", "3"]
