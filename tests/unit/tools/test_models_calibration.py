"""Calibration sets from a BEIR folder and static int8 of a model directory (tools.models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from tinybeir import TRAIN_QRELS, write_tiny_beir  # noqa: E402  # tests/ is on sys.path (conftest)
from tinymodel import build_tiny_model  # noqa: E402

from es_rerank.errors import DatasetError, ModelError  # noqa: E402
from es_rerank.reranker.modeldir import read_model_config  # noqa: E402
from es_rerank.tools.models import calibration_batches, calibration_pairs, quantize_static_model  # noqa: E402

TOKENIZER_JSON = Path(__file__).resolve().parents[3] / "demo" / "model" / "tokenizer.json"
pytestmark = pytest.mark.skipif(not TOKENIZER_JSON.is_file(), reason=f"demo tokenizer not found at {TOKENIZER_JSON}")


@pytest.fixture(scope="module")
def beir(tmp_path_factory) -> Path:
    return write_tiny_beir(tmp_path_factory.mktemp("beir"))


@pytest.fixture()
def model_dir(tmp_path) -> Path:
    return build_tiny_model(tmp_path / "model", tokenizer_json=TOKENIZER_JSON)


def test_pairs_are_the_same_for_a_seed_and_hold_every_relevant_document(beir):
    pairs = calibration_pairs(beir, pairs=100, negatives=2, seed=0)
    assert pairs == calibration_pairs(beir, pairs=100, negatives=2, seed=0)
    assert pairs != calibration_pairs(beir, pairs=100, negatives=2, seed=1)
    relevant = sum(1 for judged in TRAIN_QRELS.values() for grade in judged.values() if grade > 0)
    assert len(pairs) == relevant + 2 * len(TRAIN_QRELS)  # every train query, its positives and 2 others
    by_query: dict[str, list[str]] = {}
    for query, passage in pairs:
        by_query.setdefault(query, []).append(passage)
    assert by_query["vitamin d and multiple sclerosis"][:2] == [  # positives first, title + " " + text
        "Title 1 Abstract number 1 word",
        "Title 2 Abstract number 2 word word",
    ]
    assert "Title 9" not in " ".join(by_query["vitamin d and multiple sclerosis"])  # judged 0: neither side
    assert by_query["how vaccines train the immune system"][0] == "Abstract number 3 word word word"  # no title
    assert "coffee and heart rhythm" not in by_query  # a dev query


def test_pairs_stop_at_the_count_and_need_the_split(beir, tmp_path):
    assert len(calibration_pairs(beir, pairs=3)) == 3
    assert [q for q, _ in calibration_pairs(beir, split="dev", pairs=2, negatives=0)] in (
        ["coffee and heart rhythm", "exercise and depression"],
        ["exercise and depression", "coffee and heart rhythm"],
    )
    no_qrels = write_tiny_beir(tmp_path / "beir")
    (no_qrels / "queries-test.jsonl").write_text('{"_id": "q9", "text": "unjudged"}\n')
    with pytest.raises(DatasetError, match="no qrels for split 'test'"):
        calibration_pairs(no_qrels, split="test")
    with pytest.raises(DatasetError, match="pairs must be at least 1"):
        calibration_pairs(beir, pairs=0)


def test_batches_are_the_model_inputs_padded_per_batch(beir, model_dir):
    batches = calibration_batches(model_dir, beir, pairs=11, batch_size=4, seed=3)
    assert [len(b["input_ids"]) for b in batches] == [4, 4, 3]
    for batch in batches:
        assert list(batch) == ["input_ids", "attention_mask", "token_type_ids"]
        assert all(a.dtype == np.int64 for a in batch.values())
        lengths = batch["attention_mask"].sum(axis=1)
        assert batch["input_ids"].shape[1] == lengths.max()  # padded to the batch's own longest
        assert (batch["token_type_ids"][batch["attention_mask"] == 0] == 0).all()
    widths = [b["input_ids"].shape[1] for b in batches]
    assert widths == sorted(widths, reverse=True)  # longest pairs first, as the engine batches
    again = calibration_batches(model_dir, beir, pairs=11, batch_size=4, seed=3)
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(batches, again) for k in a)


def test_batches_follow_the_inputs_the_model_declares(beir, tmp_path):
    two_inputs = build_tiny_model(tmp_path / "m2", tokenizer_json=TOKENIZER_JSON, with_token_type_ids=False)
    batches = calibration_batches(two_inputs, beir, pairs=5, max_length=16)
    assert {tuple(b) for b in batches} == {("input_ids", "attention_mask")}
    assert max(b["input_ids"].shape[1] for b in batches) <= 16
    with pytest.raises(ModelError, match="batch_size must be at least 1"):
        calibration_batches(two_inputs, beir, batch_size=0)


def test_quantize_static_model_writes_and_records_a_qdq_file(beir, model_dir):
    lines: list[str] = []
    result = quantize_static_model(
        model_dir, beir, calibration_pairs=12, batch_size=4, fusions_first=False, progress=lines.append
    )
    assert result.output == model_dir / "model.qdq.onnx" and result.output.is_file()
    assert lines[0] == f"calibration set: 12 pairs of train from {beir}, 3 batches"
    assert result.options["ops"]["QuantizeLinear"] > 0 and result.options["ops"]["DequantizeLinear"] > 0
    variant = read_model_config(model_dir).variants["model.qdq.onnx"]
    assert variant["kind"] == "int8-static" and variant["from"] == "model.onnx"
    assert variant["calibration"] == {
        "corpus": str(beir), "split": "train", "pairs": 12, "batch_size": 4, "seed": 0, "method": "minmax",
    }  # fmt: skip
    assert variant["op_types"] == ["MatMul", "Gemm"] and variant["fusions_first"] is False
    assert 0 <= result.max_abs_diff < 0.5
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".quantize-")]
