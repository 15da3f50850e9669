"""Token-budget batching: pairs sorted by length, padded per batch to a multiple of 8."""

from __future__ import annotations

import numpy as np
import pytest
from samplepairs import PASSAGES as SAMPLE_PASSAGES
from samplepairs import QUERY

from es_rerank.reranker import OnnxReranker
from es_rerank.reranker._onnx import cuda_warmup_batches
from es_rerank.reranker._tokenize import iter_batches, padded_width, plan_batches

PASSAGES = SAMPLE_PASSAGES + [f"passage number {i} about vitamin d and " + "words " * (i * 7) for i in range(25)]


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    """Scores of one pair per model run: no batching, no padding."""
    with OnnxReranker(
        "ref", tiny_model_dir / "model.onnx", tiny_model_dir / "tokenizer.json", cache_size=0, pad_multiple=1
    ) as reranker:
        return np.concatenate([reranker.score(QUERY, [p]) for p in PASSAGES])


@pytest.mark.parametrize(
    "max_batch_tokens, batch_size, pad_multiple",
    [(8192, 32, 8), (256, 32, 8), (100, 4, 8), (64, 32, 1), (4096, 3, 16), (10, 32, 8)],
)
def test_batched_scores_equal_unbatched_scores(tiny_model_dir, reference, max_batch_tokens, batch_size, pad_multiple):
    with OnnxReranker(
        "tiny", tiny_model_dir / "model.onnx", tiny_model_dir / "tokenizer.json",
        max_batch_tokens=max_batch_tokens, batch_size=batch_size, pad_multiple=pad_multiple, cache_size=0,
    ) as reranker:  # fmt: skip
        scores = reranker.score(QUERY, PASSAGES)
        assert reranker.engine_info()["runs"] >= 1
    np.testing.assert_allclose(scores, reference, atol=1e-5, rtol=0)


def _check_plan(lengths, batch_size, max_tokens, pad_multiple, max_width=None):
    plans = plan_batches(lengths, batch_size, max_tokens=max_tokens, pad_multiple=pad_multiple, max_width=max_width)
    seen = np.concatenate([positions for positions, _ in plans])
    assert sorted(seen.tolist()) == list(range(len(lengths)))  # every pair exactly once
    ordered = [lengths[p] for p in seen]
    assert ordered == sorted(lengths, reverse=True)  # longest first
    for positions, width in plans:
        longest = max(lengths[p] for p in positions)
        assert width >= longest
        if max_width is None or width < max_width:
            assert width % pad_multiple == 0 and width - longest < pad_multiple
        assert len(positions) <= batch_size
        if len(positions) > 1:
            assert len(positions) * width <= max_tokens
    return plans


@pytest.mark.parametrize("seed", range(5))
def test_plan_batches_respects_the_budget(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 300, size=int(rng.integers(1, 200))).tolist()
    for batch_size, max_tokens, multiple in [(32, 8192, 8), (8, 1000, 8), (64, 512, 1), (32, 100, 8)]:
        _check_plan(lengths, batch_size, max_tokens, multiple)


def test_plan_batches_fills_batches_of_short_pairs():
    plans = plan_batches([10] * 100, 64, max_tokens=512, pad_multiple=8)
    # width 16, 512 // 16 = 32 rows a batch
    assert [len(p) for p, _ in plans] == [32, 32, 32, 4]
    assert {w for _, w in plans} == {16}


def test_a_pair_longer_than_the_budget_gets_its_own_batch():
    plans = _check_plan([300, 20, 20], 32, 100, 8)
    assert [len(p) for p, _ in plans] == [1, 2]


def test_padded_width_never_passes_max_length():
    assert padded_width(250, 8) == 256
    assert padded_width(250, 8, max_width=252) == 252
    assert padded_width(256, 8, max_width=256) == 256
    assert padded_width(13, 1) == 13
    assert padded_width(1, 8) == 8


def test_iter_batches_pads_to_a_multiple_of_8(tiny_model_dir):
    with OnnxReranker("tiny", tiny_model_dir / "model.onnx", tiny_model_dir / "tokenizer.json") as reranker:
        encodings = reranker._tokenizer.encode_pairs(QUERY, PASSAGES, 256)
    batches = list(iter_batches(encodings, 32, 0, max_tokens=1024, pad_multiple=8, max_width=256))
    for positions, feeds in batches:
        rows, width = feeds["input_ids"].shape
        assert width % 8 == 0 and rows * width <= 1024 or rows == 1
        for row, p in enumerate(positions):
            n = len(encodings[p].ids)
            assert feeds["input_ids"][row, :n].tolist() == list(encodings[p].ids)
            assert feeds["attention_mask"][row, n:].sum() == 0
            assert feeds["attention_mask"][row, :n].all()
    assert sum(len(p) for p, _ in batches) == len(PASSAGES)


def test_cuda_warm_up_runs_every_padded_width(tiny_model_dir):
    """On CUDA each new shape, and padding within a batch, may load kernels: the warm-up
    covers every width a batch can take, with full rows and with padded rows."""
    with OnnxReranker(
        "tiny", tiny_model_dir / "model.onnx", tiny_model_dir / "tokenizer.json",
        max_length=64, batch_size=16, max_batch_tokens=256, warmup=False,
    ) as reranker:  # fmt: skip
        runs = []
        reranker._io_binding = True  # as on CUDA; the runs are recorded, not executed
        reranker._run_batch = lambda pairs, width: (
            runs.append((width, [len(p.ids) for p in pairs])) or np.zeros(len(pairs))
        )
        reranker._warm_up()
    shapes = [(len(lengths), width) for width, lengths in runs]
    widths = {w for _, w in shapes}
    assert set(range(8, 65, 8)) <= widths
    assert (16, 8) in shapes and (4, 64) in shapes and (1, 64) in shapes  # most rows the budget allows, and one
    assert all(rows * width <= 256 or rows == 1 for rows, width in shapes)
    for width, lengths in runs:
        assert max(lengths) == width and min(lengths) >= 1  # the widest row sets the width, as in a request
    for width in widths:
        row_counts = {len(lengths) for w, lengths in runs if w == width and len(lengths) > 1}
        full = {len(lengths) for w, lengths in runs if w == width and len(lengths) > 1 and min(lengths) == width}
        padded = {len(lengths) for w, lengths in runs if w == width and min(lengths) < width}
        assert full == padded == row_counts  # each row count with full rows and with padded rows


def test_cuda_warm_up_batches_run_on_the_model(tiny_model_dir):
    """The warm-up batches are valid model input: padded rows score as they do alone."""
    with OnnxReranker(
        "tiny", tiny_model_dir / "model.onnx", tiny_model_dir / "tokenizer.json", max_length=64, warmup=False
    ) as reranker:  # fmt: skip
        (full,) = reranker._tokenizer.encode_pairs("warm up", ["warm up " * 64], 64)
        batches = cuda_warmup_batches(full, 8, 16, 256)
        pairs, width = next(b for b in batches if len(b[0]) == 4 and b[1] == 64 and len(b[0][-1].ids) < 64)
        together = reranker._run_batch(pairs, width)
        alone = [reranker._run_batch([p], len(p.ids))[0] for p in pairs]
    np.testing.assert_allclose(together, alone, atol=1e-5)
