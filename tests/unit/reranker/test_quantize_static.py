"""Static int8 (QDQ, calibrated) on the small SDPA-style encoder of test_optimize."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402
from test_optimize import _feeds, _run, build_sdpa_encoder  # noqa: E402  # pytest puts this folder on sys.path

from es_rerank.errors import ModelError  # noqa: E402
from es_rerank.reranker.quantize import STATIC_RECIPE, _fed_by_wide_range, quantize_static_int8  # noqa: E402


def _calibration(batches: int = 4) -> list[dict[str, np.ndarray]]:
    return [_feeds(seed=10 + i, rows=4, width=8 + 2 * i) for i in range(batches)]


def _correlation(source, quantized, seed: int = 3) -> float:
    feeds = _feeds(seed, rows=8)
    return float(np.corrcoef(_run(source, feeds)[:, 0], _run(quantized, feeds)[:, 0])[0, 1])


def test_static_recipe_on_the_fused_graph(tmp_path):
    source = build_sdpa_encoder(tmp_path / "model.onnx", layers=2)
    lines: list[str] = []
    ops = quantize_static_int8(source, tmp_path / "model.qdq.onnx", _calibration(), progress=lines.append)
    assert STATIC_RECIPE["fuse"] and STATIC_RECIPE["dynamic_rest"]
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    assert ops.get("QAttention") == 2  # the fused attention: dynamic, QDQ has no rule for it
    assert "Attention" not in ops
    assert _correlation(source, tmp_path / "model.qdq.onnx") > 0.95
    assert "calibrated on 16 pairs in 4 batches" in lines
    assert [line for line in lines if line.startswith("calibration batch")][-1] == "calibration batch 4/4 (16/16 pairs)"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".es-rerank-qdq-")]  # temp dir cleaned


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_static_qdq_of_the_graph_as_it_is(tmp_path, method):
    source = build_sdpa_encoder(tmp_path / "model.onnx", layers=1)
    ops = quantize_static_int8(
        source, tmp_path / "q.onnx", _calibration(), fuse=False, dynamic_rest=False, calibrate_method=method
    )
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    assert "DynamicQuantizeLinear" not in ops and "QAttention" not in ops
    assert ops["Softmax"] == 1  # not fused: the attention core's products are quantised too
    session = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    assert {i.name for i in session.get_inputs()} == {"input_ids", "attention_mask"}
    assert _correlation(source, tmp_path / "q.onnx") > 0.9


def test_static_rejects_bad_calibration(tmp_path):
    source = build_sdpa_encoder(tmp_path / "model.onnx", layers=1)
    with pytest.raises(ModelError, match="calibration set is empty"):
        quantize_static_int8(source, tmp_path / "q.onnx", [], fuse=False)
    wrong = [{"input_ids": _feeds()["input_ids"]}]
    with pytest.raises(
        ModelError, match=r"has inputs \['input_ids'\]; the model takes \['attention_mask', 'input_ids'\]"
    ):
        quantize_static_int8(source, tmp_path / "q.onnx", wrong, fuse=False)
    with pytest.raises(ModelError, match="calibrate_method must be one of minmax, percentile, entropy"):
        quantize_static_int8(source, tmp_path / "q.onnx", _calibration(), calibrate_method="mse")  # type: ignore[arg-type]
    assert not (tmp_path / "q.onnx").exists()


def test_matmuls_fed_by_gelu_are_left_to_dynamic():
    nodes = [
        helper.make_node("BiasGelu", ["x", "b"], ["g"], name="gelu", domain="com.microsoft"),
        helper.make_node("MatMul", ["g", "w1"], ["y"], name="ffn_out"),
        helper.make_node("MatMul", ["x", "w2"], ["z"], name="ffn_in"),
        helper.make_node("Gemm", ["g", "w3"], ["v"], name="gemm_after_gelu"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    assert _fed_by_wide_range(helper.make_model(graph), ("MatMul", "Gemm")) == ["ffn_out", "gemm_after_gelu"]
    assert _fed_by_wide_range(helper.make_model(graph), ("MatMul",)) == ["ffn_out"]
