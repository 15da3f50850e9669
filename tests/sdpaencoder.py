"""A small BERT-like ONNX encoder for tests, its attention written as recent transformers
exports write it (scaled Q and K, Where(mask, 0, -inf), Softmax, IsNaN guard), so that
:func:`es_rerank.reranker.optimize.fuse_attention` has something to fuse; one logit per row.

Its inputs are ``input_ids`` and ``attention_mask`` (no position embeddings), so any
tokenizer whose ids are below ``vocab`` can feed it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer

__all__ = ["build_sdpa_encoder", "build_sdpa_model_dir", "sdpa_feeds", "HIDDEN", "HEADS", "VOCAB", "FFN", "MS_DOMAIN"]

HIDDEN, HEADS, VOCAB, FFN = 32, 4, 50, 64
MS_DOMAIN = "com.microsoft"


def build_sdpa_encoder(path: Path, *, layers: int = 2, seed: int = 0, vocab: int = VOCAB, biases: bool = False) -> Path:
    """Write the encoder to ``path`` and return ``path``.

    ``vocab``: rows of the token embedding (a real tokenizer's vocabulary size, say).
    ``biases``: BERT-style biases: the attention output projection is ``MatMul`` then
    ``Add(bias)``, the feed-forward block ``MatMul -> com.microsoft BiasGelu(bias) ->
    MatMul -> Add(bias)`` (without: no output bias and ``MatMul -> Relu -> MatMul``).
    The defaults write the same graph, weights included, as before these options.
    """
    rng = np.random.default_rng(seed)
    inits: list = []
    nodes: list = []

    def const(name, value, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    head_size = HIDDEN // HEADS
    scale = head_size**-0.25
    const("E", rng.standard_normal((vocab, HIDDEN)) * 0.5)
    x = node("Gather", ["E", "input_ids"], "emb", axis=0)
    m = node("Cast", ["attention_mask"], "mask_bool", to=TensorProto.BOOL)
    m = node("Unsqueeze", [m, const("axes12", [1, 2], np.int64)], "mask4")
    bias = node("Where", [m, const("zero", [0.0]), const("ninf", [-np.inf])], "mask_bias")
    shape4 = const("shape4", [0, 0, HEADS, head_size], np.int64)
    shape3 = const("shape3", [0, 0, HIDDEN], np.int64)
    for layer in range(layers):
        p = f"l{layer}_"

        def proj(kind, perm, p=p, x=x):
            w = const(p + kind + "_w", rng.standard_normal((HIDDEN, HIDDEN)) / np.sqrt(HIDDEN))
            b = const(p + kind + "_b", rng.standard_normal(HIDDEN) * 0.1)
            y = node("MatMul", [x, w], p + kind + "_mm")
            y = node("Add", [b, y], p + kind + "_add")
            y = node("Reshape", [y, shape4], p + kind + "_reshape")
            return node("Transpose", [y], p + kind + "_t", perm=perm)

        q = node("Mul", [proj("q", [0, 2, 1, 3]), const(p + "sq", scale)], p + "q_scaled")
        k = node("Mul", [proj("k", [0, 2, 3, 1]), const(p + "sk", scale)], p + "k_scaled")
        v = proj("v", [0, 2, 1, 3])
        s = node("MatMul", [q, k], p + "scores")
        s = node("Add", [s, bias], p + "masked")
        a = node("Softmax", [s], p + "probs", axis=-1)
        nan = node("IsNaN", [a], p + "isnan")
        a = node("Where", [nan, const(p + "z", [0.0]), a], p + "probs_safe")
        c = node("MatMul", [a, v], p + "context")
        c = node("Transpose", [c], p + "context_t", perm=[0, 2, 1, 3])
        c = node("Reshape", [c, shape3], p + "context_r")
        wo = const(p + "wo", rng.standard_normal((HIDDEN, HIDDEN)) / np.sqrt(HIDDEN))
        o = node("MatMul", [c, wo], p + "out")
        if biases:
            o = node("Add", [o, const(p + "bo", rng.standard_normal(HIDDEN) * 0.1)], p + "out_bias")
        o = node("Add", [o, x], p + "res")
        x = node(
            "LayerNormalization",
            [o, const(p + "g", np.ones(HIDDEN)), const(p + "beta", np.zeros(HIDDEN))],
            p + "ln",
            axis=-1,
        )
        w1 = const(p + "w1", rng.standard_normal((HIDDEN, FFN)) / np.sqrt(HIDDEN))
        w2 = const(p + "w2", rng.standard_normal((FFN, HIDDEN)) / np.sqrt(FFN))
        h = node("MatMul", [x, w1], p + "ffn1")
        if biases:
            b1 = const(p + "b1", rng.standard_normal(FFN) * 0.1)
            h = node("BiasGelu", [h, b1], p + "gelu", domain=MS_DOMAIN)
        else:
            h = node("Relu", [h], p + "relu")
        h = node("MatMul", [h, w2], p + "ffn2")
        if biases:
            h = node("Add", [h, const(p + "b2", rng.standard_normal(HIDDEN) * 0.1)], p + "ffn2_bias")
        x = node("Add", [h, x], p + "res2")
    cls = node("Gather", [x, const("zero_i", 0, np.int64)], "cls", axis=1)
    node("MatMul", [cls, const("head", rng.standard_normal((HIDDEN, 1)) / np.sqrt(HIDDEN))], "logits")
    graph = helper.make_graph(
        nodes,
        "sdpa_encoder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])],
        inits,
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(MS_DOMAIN, 1)] if biases else [])
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_sdpa_model_dir(
    out_dir: Path, *, tokenizer_json: Path, layers: int = 2, biases: bool = False, config: bool = True
) -> Path:
    """A model directory: the encoder as ``model.onnx`` (one embedding row per id of
    ``tokenizer_json``), a copy of ``tokenizer_json`` and, with ``config``, a config.json
    naming its heads and hidden size (what the model tools need to fuse its attention)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = Tokenizer.from_file(str(tokenizer_json)).get_vocab_size(with_added_tokens=True)
    build_sdpa_encoder(out_dir / "model.onnx", layers=layers, vocab=vocab, biases=biases)
    shutil.copyfile(tokenizer_json, out_dir / "tokenizer.json")
    if config:
        (out_dir / "config.json").write_text(json.dumps({"num_attention_heads": HEADS, "hidden_size": HIDDEN}))
    return out_dir


def sdpa_feeds(seed: int = 1, rows: int = 5, width: int = 12) -> dict[str, np.ndarray]:
    """Seeded random ids for the encoder, each row padded (mask 0, id 0) past a random length of 2 or more."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(rows, width)).astype(np.int64)
    mask = np.ones_like(ids)
    for r in range(rows):
        n = int(rng.integers(2, width + 1))
        mask[r, n:] = 0
        ids[r, n:] = 0
    return {"input_ids": ids, "attention_mask": mask}
