"""Attention fusion, the optimised graph and the int8 recipe, on the small SDPA-style
encoder of tests/sdpaencoder.py and, when present, on the shared real model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto  # noqa: E402
from sdpaencoder import HEADS, build_sdpa_encoder  # noqa: E402  # tests/ is on sys.path (conftest)
from sdpaencoder import sdpa_feeds as _feeds  # noqa: E402  # test_quantize_static imports it from here

from es_rerank.reranker.optimize import convert_fp16, fuse_attention, fused_operator_counts, optimize_onnx  # noqa: E402
from es_rerank.reranker.quantize import INT8_RECIPE, quantize_int8  # noqa: E402

REAL_MODEL = Path(__file__).resolve().parents[3].parent / "shared/models/scifact-minilm-l6-ce"


def _run(path: Path, feeds) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def test_fuse_attention_rewrites_each_layer_and_keeps_the_scores(tmp_path):
    source = build_sdpa_encoder(tmp_path / "model.onnx", layers=2)
    model = onnx.load(str(source))
    assert fuse_attention(model) == 2
    ops = fused_operator_counts(model)
    assert ops["Attention"] == 2
    assert "Softmax" not in ops and "IsNaN" not in ops and "Where" not in ops
    attention = [n for n in model.graph.node if n.op_type == "Attention"]
    assert all(n.domain == "com.microsoft" for n in attention)
    assert {a.i for n in attention for a in n.attribute if a.name == "num_heads"} == {HEADS}
    onnx.save(model, str(tmp_path / "fused.onnx"))
    feeds = _feeds()
    np.testing.assert_allclose(_run(tmp_path / "fused.onnx", feeds), _run(source, feeds), atol=1e-4, rtol=1e-4)
    # nothing left to fuse the second time
    assert fuse_attention(model) == 0


def test_optimize_onnx_writes_a_fused_model(tmp_path):
    source = build_sdpa_encoder(tmp_path / "model.onnx", layers=1)
    ops = optimize_onnx(source, tmp_path / "model.opt.onnx")
    assert ops.get("Attention") == 1
    feeds = _feeds(2)
    np.testing.assert_allclose(_run(tmp_path / "model.opt.onnx", feeds), _run(source, feeds), atol=1e-4, rtol=1e-4)


def test_quantize_int8_recipe(tmp_path):
    source = build_sdpa_encoder(tmp_path / "model.onnx", layers=2)
    ops = quantize_int8(source, tmp_path / "model.int8.onnx")
    assert INT8_RECIPE["per_channel"] and INT8_RECIPE["fuse"]
    assert ops.get("QAttention") == 2 and ops.get("MatMulInteger", 0) >= 4
    assert "Gather" in ops  # the embeddings stay fp32
    feeds = _feeds(3)
    reference = _run(source, feeds)
    quantized = _run(tmp_path / "model.int8.onnx", feeds)
    assert np.corrcoef(reference[:, 0], quantized[:, 0])[0, 1] > 0.95
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".es-rerank-int8-")]  # temp dir cleaned


def test_convert_fp16_keeps_int64_inputs_and_fp32_logits(tmp_path):
    source = build_sdpa_encoder(tmp_path / "model.onnx", layers=1)
    ops = convert_fp16(source, tmp_path / "model.fp16.onnx")
    assert ops.get("Attention") == 1
    model = onnx.load(str(tmp_path / "model.fp16.onnx"))
    assert {i.name: i.type.tensor_type.elem_type for i in model.graph.input} == {
        "input_ids": TensorProto.INT64,
        "attention_mask": TensorProto.INT64,
    }
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer)


@pytest.mark.skipif(not (REAL_MODEL / "model.onnx").is_file(), reason=f"shared model not at {REAL_MODEL}")
def test_the_real_model_fuses_fully_and_scores_alike(tmp_path):
    from es_rerank.reranker import OnnxReranker

    ops = optimize_onnx(REAL_MODEL / "model.onnx", tmp_path / "model.opt.onnx")
    assert ops["Attention"] == 6 and ops["LayerNormalization"] == 12 and ops["EmbedLayerNormalization"] == 1
    assert "Softmax" not in ops and "SkipLayerNormalization" not in ops  # kept apart for CPU
    assert convert_fp16(REAL_MODEL / "model.onnx", tmp_path / "model.fp16.onnx")["SkipLayerNormalization"] == 12  # CUDA
    query = "Vitamin D deficiency is associated with an increased risk of multiple sclerosis."
    passages = [
        "In a prospective cohort, high serum 25-hydroxyvitamin D levels were associated with a lower risk of MS.",
        "Football clubs in the English Premier League spent record sums on transfers.",
        "The recipe calls for fresh tomatoes, garlic and olive oil. " * 30,
    ]
    tokenizer = REAL_MODEL / "tokenizer.json"
    with OnnxReranker("fp32", REAL_MODEL / "model.onnx", tokenizer, cache_size=0, fuse_at_load=False) as plain:
        assert not plain.engine_info()["fused_at_load"]
        expected = plain.score(query, passages)
    with OnnxReranker("opt", tmp_path / "model.opt.onnx", tokenizer, cache_size=0) as from_file:
        assert not from_file.engine_info()["fused_at_load"]  # already fused: loaded as it is
        np.testing.assert_allclose(from_file.score(query, passages), expected, atol=1e-3)
    with OnnxReranker("at-load", REAL_MODEL / "model.onnx", tokenizer, cache_size=0) as at_load:
        assert at_load.engine_info()["fused_at_load"]
        np.testing.assert_allclose(at_load.score(query, passages), expected, atol=1e-3)


@pytest.mark.skipif(not (REAL_MODEL / "model.onnx").is_file(), reason="the shared model is not beside the checkout")
def test_model_quantize_and_quantize_int8_write_the_same_file(tmp_path):
    """`es-rerank model quantize DIR` (its defaults, the recipe) fuses this export's attention
    as the engine does at load: byte for byte what quantize_int8 writes."""
    from es_rerank.tools.models import quantize_model

    work = tmp_path / "model"
    work.mkdir()
    for name, target in (
        ("model.onnx", "model.onnx"),
        ("tokenizer.json", "tokenizer.json"),
        ("config.json", "hf/config.json"),
    ):
        (work / name).symlink_to(REAL_MODEL / target)
    quantize_model(work, fusions_first=True, per_channel=INT8_RECIPE["per_channel"], op_types=INT8_RECIPE["op_types"])
    ops = quantize_int8(REAL_MODEL / "model.onnx", tmp_path / "direct.int8.onnx")
    assert ops["QAttention"] == 6
    assert (work / "model.int8.onnx").read_bytes() == (tmp_path / "direct.int8.onnx").read_bytes()
