"""The score cache: a repeated query costs no model pass; a changed passage is rescored."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from es_rerank.config import ModelSettings
from es_rerank.reranker import OnnxReranker, ScoreCache, ScoreStats

QUERY = "vitamin d deficiency and the risk of multiple sclerosis"
PASSAGES = [
    "Vitamin D deficiency raises the risk of multiple sclerosis in young adults.",
    "Football clubs spent record sums on transfers this summer.",
    "multiple sclerosis risk factors include smoking, obesity and low vitamin d",
    "sclerosis",
    "",
]


class CountingSession:
    """Wraps an ONNX Runtime session and counts its runs and the pairs they carried."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.runs = 0
        self.pairs = 0

    def run(self, output_names, feeds, *args, **kwargs):
        self.runs += 1
        self.pairs += len(feeds["input_ids"])
        return self.inner.run(output_names, feeds, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _load(model_dir, **kw) -> tuple[OnnxReranker, CountingSession]:
    counters: list[CountingSession] = []

    def wrap(session: Any) -> CountingSession:
        counters.append(CountingSession(session))
        return counters[-1]

    reranker = OnnxReranker("tiny", model_dir / "model.onnx", model_dir / "tokenizer.json", wrap_session=wrap, **kw)
    return reranker, counters[0]


def test_repeating_a_query_costs_no_model_pass(tiny_model_dir):
    reranker, session = _load(tiny_model_dir, cache_size=100)
    with reranker:
        first_stats, again_stats = ScoreStats(), ScoreStats()
        first = reranker.score(QUERY, PASSAGES, stats=first_stats)
        runs = session.runs
        assert runs >= 1 and first_stats.pairs == len(PASSAGES) and first_stats.cache_hits == 0
        again = reranker.score(QUERY, PASSAGES, stats=again_stats)
        assert session.runs == runs  # no inference at all
        assert again_stats.pairs == 0 and again_stats.cache_hits == len(PASSAGES)
        np.testing.assert_array_equal(again, first)
        # the async path reads the same cache
        stats = ScoreStats()
        np.testing.assert_array_equal(asyncio.run(reranker.ascore(QUERY, PASSAGES[::-1], stats=stats)), first[::-1])
        assert session.runs == runs and stats.cache_hits == len(PASSAGES)
        info = reranker.engine_info()["cache"]
        assert info["hits"] == 2 * len(PASSAGES) and info["misses"] == len(PASSAGES)


def test_a_changed_passage_is_rescored(tiny_model_dir):
    reranker, session = _load(tiny_model_dir, cache_size=100)
    fresh, _ = _load(tiny_model_dir, cache_size=0)
    with reranker, fresh:
        reranker.score(QUERY, PASSAGES)
        changed = list(PASSAGES)
        changed[1] = "Vitamin D and multiple sclerosis: a cohort study of deficiency and risk."
        pairs_before = session.pairs
        stats = ScoreStats()
        scores = reranker.score(QUERY, changed, stats=stats)
        assert stats.pairs == 1 and stats.cache_hits == len(PASSAGES) - 1
        assert session.pairs - pairs_before == 1  # only the changed text reached the model
        np.testing.assert_allclose(scores, fresh.score(QUERY, changed), atol=1e-5)
        assert scores[1] != pytest.approx(reranker.score(QUERY, PASSAGES)[1])


def test_the_key_holds_query_and_max_length(tiny_model_dir):
    reranker, session = _load(tiny_model_dir, cache_size=100)
    with reranker:
        reranker.score(QUERY, PASSAGES)
        stats = ScoreStats()
        reranker.score(QUERY + " in adults", PASSAGES, stats=stats)
        assert stats.cache_hits == 0 and stats.pairs == len(PASSAGES)
        stats = ScoreStats()
        short = reranker.score(QUERY, PASSAGES, max_length=16, stats=stats)
        assert stats.cache_hits == 0 and stats.pairs == len(PASSAGES)
        np.testing.assert_array_equal(reranker.score(QUERY, PASSAGES, max_length=16), short)


def test_cache_off_and_duplicates(tiny_model_dir):
    reranker, session = _load(tiny_model_dir, cache_size=0)
    with reranker:
        stats = ScoreStats()
        scores = reranker.score(QUERY, PASSAGES + PASSAGES[:2], stats=stats)
        assert stats.pairs == len(PASSAGES)  # a passage given twice is scored once
        np.testing.assert_array_equal(scores[-2:], scores[:2])
        stats = ScoreStats()
        reranker.score(QUERY, PASSAGES, stats=stats)
        assert stats.pairs == len(PASSAGES) and stats.cache_hits == 0
        assert len(reranker.cache) == 0


def test_lru_eviction(tiny_model_dir):
    reranker, _ = _load(tiny_model_dir, cache_size=3)
    with reranker:
        reranker.score(QUERY, PASSAGES[:3])
        stats = ScoreStats()
        reranker.score(QUERY, [PASSAGES[0]], stats=stats)  # PASSAGES[0] is now the most recent
        assert stats.cache_hits == 1
        reranker.score(QUERY, [PASSAGES[3], PASSAGES[4]])  # evicts PASSAGES[1] and [2]
        stats = ScoreStats()
        reranker.score(QUERY, PASSAGES[:3], stats=stats)
        assert stats.cache_hits == 1 and stats.pairs == 2
        assert len(reranker.cache) == 3


def test_score_cache_unit():
    cache = ScoreCache(2)
    a, b, c = (ScoreCache.key("m", 256, "q", t) for t in ("a", "b", "c"))
    assert a != ScoreCache.key("m", 256, "q", "a ") and a == ScoreCache.key("m", 256, "q", "a")
    assert a != ScoreCache.key("m", 128, "q", "a") and a != ScoreCache.key("other", 256, "q", "a")
    assert cache.get_many([a, b]) == [None, None]
    cache.put_many([(a, 1.0), (b, 2.0)])
    assert cache.get_many([a]) == [1.0]
    cache.put_many([(c, 3.0)])  # b was the least recently used
    assert cache.get_many([a, b, c]) == [1.0, None, 3.0]
    assert cache.info() == {"size": 2, "maxsize": 2, "hits": 3, "misses": 3}
    cache.clear()
    assert len(cache) == 0 and cache.hits == 0
    with pytest.raises(ValueError):
        ScoreCache(-1)
    off = ScoreCache(0)
    off.put_many([(a, 1.0)])
    assert off.get_many([a]) == [None] and len(off) == 0


def test_settings_reach_the_engine(tiny_model_dir):
    settings = ModelSettings(
        path=tiny_model_dir, cache_size=7, max_batch_tokens=512, batch_wait_ms=0.5, max_length=64, warmup=False
    )
    with OnnxReranker.from_settings("tiny", settings) as reranker:
        info = reranker.engine_info()
        assert info["cache"]["maxsize"] == 7
        assert info["max_batch_tokens"] == 512 and info["batch_wait_ms"] == 0.5
        assert reranker.onnx_path == tiny_model_dir / "model.onnx"
    with OnnxReranker.from_settings("tiny", ModelSettings(path=tiny_model_dir, providers=["cpu"])) as reranker:
        info = reranker.engine_info()
        assert info["max_batch_tokens"] == 1024 and info["cache"]["maxsize"] == 10_000  # the CPU defaults
        assert info["batch_wait_ms"] == 2.0 and not info["allow_spinning"]


def test_provider_variant_files(tiny_model_dir, tmp_path):
    import shutil

    for name in ("model.onnx", "tokenizer.json"):
        shutil.copyfile(tiny_model_dir / name, tmp_path / name)
    shutil.copyfile(tiny_model_dir / "model.onnx", tmp_path / "model.int8.onnx")
    settings = ModelSettings(
        path=tmp_path, int8_onnx_file="model.int8.onnx", fp16_onnx_file="model.fp16.onnx", providers=["cpu"]
    )
    with OnnxReranker.from_settings("tiny", settings) as reranker:
        assert reranker.onnx_path == tmp_path / "model.int8.onnx"  # CPU runs the int8 file
        assert reranker.info()["onnx"] == str(tmp_path / "model.int8.onnx")
    missing = ModelSettings(path=tmp_path, int8_onnx_file="nope.onnx", providers=["cpu"])
    from es_rerank.errors import ModelError

    with pytest.raises(ModelError, match="nope.onnx"):
        OnnxReranker.from_settings("tiny", missing)


@pytest.mark.parametrize(
    "bad",
    [
        {"max_batch_tokens": 100},  # below max_length 256
        {"batch_wait_ms": -1},
        {"cache_size": -5},
        {"int8_onnx_file": "../elsewhere.onnx"},
        {"fp16_onnx_file": "/abs/model.fp16.onnx"},
    ],
)
def test_bad_engine_settings(tmp_path, bad):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        ModelSettings(path=tmp_path, **bad)
