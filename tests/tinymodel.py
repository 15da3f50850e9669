"""A tiny but real ONNX cross-encoder for tests: same inputs and outputs as the real model.

The score is meaningful enough for tests to see reordering: with random (seeded)
token embeddings E, the query vector q is the mean of E over the query's tokens
(token_type 0), the passage vector p the mean over the passage's tokens (token_type 1),
padding excluded by the attention mask, and the logit is ``scale * dot(q, p)``. A
passage sharing the query's words therefore scores higher than one that does not.
The two-logit head outputs ``[-logit, logit]`` (not relevant, relevant).

Without ``token_type_ids`` the graph only sees ``input_ids`` and ``attention_mask``:
the score is ``scale * dot(mean of E over all tokens, w)`` for a fixed random ``w``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer

__all__ = ["build_tiny_model"]

OPSET = 17
IR_VERSION = 8  # what opset 17 needs; loads on any onnxruntime >= 1.13


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name=name)


def build_tiny_model(
    out_dir: Path,
    *,
    tokenizer_json: Path,
    head: Literal["single", "two"] = "single",
    dim: int = 16,
    seed: int = 0,
    with_token_type_ids: bool = True,
) -> Path:
    """Write ``out_dir/model.onnx`` and a copy of ``tokenizer_json`` as ``out_dir/tokenizer.json``.

    Returns ``out_dir`` (a model directory, as ``ModelSettings.path`` takes it).
    """
    if head not in ("single", "two"):
        raise ValueError(f"head must be 'single' or 'two', got {head!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = Tokenizer.from_file(str(tokenizer_json)).get_vocab_size(with_added_tokens=True)

    rng = np.random.default_rng(seed)
    embeddings = (rng.standard_normal((vocab, dim)) / np.sqrt(dim)).astype(np.float32)
    initializers = [
        _const("E", embeddings),
        _const("axis1", np.array([1], dtype=np.int64)),
        _const("one", np.array(1.0, dtype=np.float32)),
        _const("scale", np.array(4.0, dtype=np.float32)),
    ]
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["emb"], axis=0),  # [b, s, d]
        helper.make_node("Cast", ["attention_mask"], ["am"], to=TensorProto.FLOAT),  # [b, s]
    ]

    def masked_mean(mask: str, out: str) -> None:
        """out[b, d] = sum_s mask[b, s] * emb[b, s, d] / max(1, sum_s mask[b, s])"""
        nodes.extend(
            [
                helper.make_node("Unsqueeze", [mask, "axis1"], [f"{out}_m3"]),  # [b, 1, s]
                helper.make_node("MatMul", [f"{out}_m3", "emb"], [f"{out}_sum3"]),  # [b, 1, d]
                helper.make_node("Squeeze", [f"{out}_sum3", "axis1"], [f"{out}_sum"]),  # [b, d]
                helper.make_node("ReduceSum", [mask, "axis1"], [f"{out}_n0"], keepdims=1),
                helper.make_node("Max", [f"{out}_n0", "one"], [f"{out}_n"]),  # [b, 1]
                helper.make_node("Div", [f"{out}_sum", f"{out}_n"], [out]),
            ]
        )

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
    ]
    if with_token_type_ids:
        inputs.append(helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["batch", "sequence"]))
        nodes.extend(
            [
                helper.make_node("Cast", ["token_type_ids"], ["tt"], to=TensorProto.FLOAT),
                helper.make_node("Mul", ["am", "tt"], ["mask_p"]),
                helper.make_node("Sub", ["am", "mask_p"], ["mask_q"]),
            ]
        )
        masked_mean("mask_q", "q")
        masked_mean("mask_p", "p")
        nodes.extend(
            [
                helper.make_node("Mul", ["q", "p"], ["qp"]),
                helper.make_node("ReduceSum", ["qp", "axis1"], ["dot"], keepdims=1),  # [b, 1]
            ]
        )
    else:
        weights = (rng.standard_normal((dim, 1)) / np.sqrt(dim)).astype(np.float32)
        initializers.append(_const("w", weights))
        masked_mean("am", "pooled")
        nodes.append(helper.make_node("MatMul", ["pooled", "w"], ["dot"]))  # [b, 1]

    if head == "single":
        nodes.append(helper.make_node("Mul", ["dot", "scale"], ["logits"]))
        width = 1
    else:
        nodes.extend(
            [
                helper.make_node("Mul", ["dot", "scale"], ["logit"]),
                helper.make_node("Neg", ["logit"], ["not_relevant"]),
                helper.make_node("Concat", ["not_relevant", "logit"], ["logits"], axis=1),
            ]
        )
        width = 2
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", width])]

    graph = helper.make_graph(nodes, "tiny_cross_encoder", inputs, outputs, initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="es-rerank tests",
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(out_dir / "model.onnx"))
    shutil.copyfile(tokenizer_json, out_dir / "tokenizer.json")
    return out_dir
