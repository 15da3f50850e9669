"""Graph speed-ups for BERT-like cross-encoders: attention fusion, ONNX Runtime fusions, fp16.

Recent ``transformers`` exports write self-attention the way PyTorch's
``scaled_dot_product_attention`` runs it: ``Q*s @ (K*s)^T``, an additive mask made
with ``Where(mask, 0, -inf)``, ``Softmax``, an ``IsNaN`` guard, ``@ V``. ONNX
Runtime's transformer optimiser does not recognise that shape, so such a model keeps
some 60 small nodes per layer and three separate Q/K/V products. :func:`fuse_attention`
rewrites each of those subgraphs into one ``com.microsoft`` ``Attention`` node
(packed QKV weights, one GEMM, the runtime's fused softmax), after which the
optimiser's own fusions apply (``EmbedLayerNormalization``, ``SkipLayerNormalization``,
``BiasGelu``). On a 2-core CPU this takes the SciFact MiniLM-L6 cross-encoder from
about 60% to about 75% of numpy's fp32 matmul rate; scores move by about 1e-5.

:func:`optimize_onnx` does both and writes a file; :func:`convert_fp16` writes the
half-precision variant for CUDA from it. These need the ``onnx`` package (which
ONNX Runtime's optimiser and quantiser need too); es-rerank's serving path does not.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError

__all__ = [
    "fuse_attention",
    "fuse_model",
    "save_model",
    "optimize_onnx",
    "optimized_model_bytes",
    "convert_fp16",
    "fused_operator_counts",
    "TWO_GIB",
]

logger = logging.getLogger("es_rerank.reranker")

MS_DOMAIN = "com.microsoft"
TWO_GIB = 2**31  # protobuf's limit: larger models keep their weights outside the file


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ModelError("optimising or quantising a model needs the onnx package: pip install onnx") from None
    return onnx


class _Graph:
    """Producer/consumer maps and constant values of an ONNX graph."""

    def __init__(self, graph: Any) -> None:
        from onnx import numpy_helper

        self.graph = graph
        self.initializers = {i.name: i for i in graph.initializer}
        self.constants: dict[str, np.ndarray] = {}
        for node in graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        self.constants[node.output[0]] = numpy_helper.to_array(attr.t)
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self._numpy_helper = numpy_helper

    def value(self, name: str) -> np.ndarray | None:
        if name in self.initializers:
            return self._numpy_helper.to_array(self.initializers[name])
        return self.constants.get(name)

    def made_by(self, name: str, op_type: str) -> Any | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def users(self, name: str, op_type: str | None = None) -> list[Any]:
        nodes = self.consumers.get(name, [])
        return [n for n in nodes if op_type is None or n.op_type == op_type]


def _perm(node: Any) -> list[int]:
    for attr in node.attribute:
        if attr.name == "perm":
            return list(attr.ints)
    return []


def _unscale(g: _Graph, name: str) -> tuple[str, float]:
    """``x`` and ``s`` when ``name`` is ``x * s`` or ``x / (1/s)`` with a scalar constant, else (name, 1)."""
    node = g.producer.get(name)
    if node is not None and node.op_type in ("Mul", "Div"):
        for i, j in ((0, 1), (1, 0)):
            const = g.value(node.input[j])
            if const is None or const.size != 1:
                continue
            if node.op_type == "Div":
                if j == 0:
                    continue
                return node.input[i], 1.0 / float(const.reshape(()))
            return node.input[i], float(const.reshape(()))
    return name, 1.0


def _projection(g: _Graph, name: str, perm: list[int]) -> tuple[str, np.ndarray, np.ndarray, Any] | None:
    """For ``Transpose(perm)(Reshape(x @ W + b))``: (x, W, b, the Reshape node)."""
    transpose = g.made_by(name, "Transpose")
    if transpose is None or _perm(transpose) != perm:
        return None
    reshape = g.made_by(transpose.input[0], "Reshape")
    if reshape is None:
        return None
    add = g.made_by(reshape.input[0], "Add")
    if add is None:
        return None
    for i, j in ((0, 1), (1, 0)):
        matmul = g.made_by(add.input[i], "MatMul")
        bias = g.value(add.input[j])
        if matmul is None or bias is None or bias.ndim != 1:
            continue
        weight = g.value(matmul.input[1])
        if weight is not None and weight.ndim == 2:
            return matmul.input[0], weight, bias, reshape
    return None


def _head_size(g: _Graph, reshape: Any) -> int | None:
    """The last entry of a Reshape's target shape (``[B, S, heads, head_size]``), if constant."""
    shape = g.value(reshape.input[1])
    if shape is not None and shape.size == 4 and int(shape.reshape(-1)[-1]) > 0:
        return int(shape.reshape(-1)[-1])
    concat = g.made_by(reshape.input[1], "Concat")
    if concat is not None and len(concat.input) == 4:
        last = g.value(concat.input[-1])
        if last is not None and last.size == 1 and int(last.reshape(-1)[0]) > 0:
            return int(last.reshape(-1)[0])
    return None


def _prune_and_sort(model: Any) -> None:
    """Drop nodes no output needs and unused initializers; order nodes topologically."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    keep: set[int] = set()
    stack = [o.name for o in graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in keep:
            continue
        keep.add(id(node))
        stack.extend(name for name in node.input if name)
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    ordered: list[Any] = []
    pending = [n for n in graph.node if id(n) in keep]
    while pending:
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ModelError("cannot order the graph after attention fusion (a cycle or a missing input)")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def fuse_attention(model: Any, *, num_heads: int | None = None, mask_input: str = "attention_mask") -> int:
    """Rewrite each self-attention subgraph of ``model`` (an ``onnx.ModelProto``, changed
    in place) into one ``com.microsoft.Attention`` node; the number rewritten.

    Recognised: ``Softmax(Q' @ K' + mask)`` with ``Q' = Transpose[0,2,1,3](Reshape(x@Wq+bq))``
    (optionally scaled), ``K' = Transpose[0,2,3,1](Reshape(x@Wk+bk))`` (optionally scaled),
    an optional ``Where(IsNaN(.), 0, .)`` guard, ``@ Transpose[0,2,1,3](Reshape(x@Wv+bv))``,
    then Transpose/Reshape back to ``[batch, sequence, hidden]``; Q, K and V from the same
    ``x``. The additive mask is replaced by the model's ``attention_mask`` input (1 keeps,
    0 masks), which is what these exports derive it from. ``num_heads`` is read from
    the graph's reshape when not given. A subgraph that does not match is left alone.

    Long on purpose: one walk over the exporter's attention subgraph, matched node by node as the graph reads.
    """
    onnx = _import_onnx()
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    if mask_input not in {i.name for i in graph.input}:
        return 0
    g = _Graph(graph)
    mask_name: str | None = None
    new_nodes: list[Any] = []
    new_initializers: list[Any] = []
    remove: list[Any] = []
    fused = 0
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        add = g.made_by(softmax.input[0], "Add")
        if add is None:
            continue
        scores = next((g.made_by(name, "MatMul") for name in add.input if g.made_by(name, "MatMul")), None)
        if scores is None:
            continue
        q_name, q_scale = _unscale(g, scores.input[0])
        k_name, k_scale = _unscale(g, scores.input[1])
        q = _projection(g, q_name, [0, 2, 1, 3])
        k = _projection(g, k_name, [0, 2, 3, 1])
        probs = softmax.output[0]
        guards = [w for w in g.users(probs, "Where") if any(g.made_by(i, "IsNaN") for i in w.input)]
        if guards:
            probs = guards[0].output[0]
        context = g.users(probs, "MatMul")
        if q is None or k is None or len(context) != 1:
            continue
        v = _projection(g, context[0].input[1], [0, 2, 1, 3])
        if v is None or not (q[0] == k[0] == v[0]):
            continue
        # back to [batch, sequence, hidden]: a chain of Transpose/Reshape ending in a Reshape
        node, chain = context[0], []
        while True:
            nxt = [u for u in g.users(node.output[0]) if u.op_type != "Shape"]
            if len(nxt) != 1 or nxt[0].op_type not in ("Transpose", "Reshape"):
                break
            node = nxt[0]
            chain.append(node)
        transposes = [c for c in chain if c.op_type == "Transpose"]
        if len(transposes) != 1 or _perm(transposes[0]) != [0, 2, 1, 3] or chain[-1].op_type != "Reshape":
            continue
        hidden = int(q[1].shape[0])
        if not (q[1].shape == k[1].shape == v[1].shape == (hidden, hidden)):
            continue
        heads = num_heads
        if heads is None:
            head_size = _head_size(g, q[3])
            heads = hidden // head_size if head_size and hidden % head_size == 0 else None
        if not heads:
            continue
        if mask_name is None:
            mask_name = f"{mask_input}_int32"
            new_nodes.append(
                helper.make_node("Cast", [mask_input], [mask_name], to=TensorProto.INT32, name="AttentionMaskCast")
            )
        weight = np.concatenate([q[1], k[1], v[1]], axis=1).astype(np.float32)
        bias = np.concatenate([q[2], k[2], v[2]]).astype(np.float32)
        weight_name, bias_name = f"attention_{fused}_qkv_weight", f"attention_{fused}_qkv_bias"
        new_initializers += [numpy_helper.from_array(weight, weight_name), numpy_helper.from_array(bias, bias_name)]
        attrs: dict[str, Any] = {"num_heads": heads}
        scale = q_scale * k_scale
        if abs(scale - 1.0 / np.sqrt(hidden // heads)) > 1e-6 * max(1.0, abs(scale)):
            attrs["scale"] = scale
        new_nodes.append(
            helper.make_node(
                "Attention",
                [q[0], weight_name, bias_name, mask_name],
                [chain[-1].output[0]],
                name=f"Attention_{fused}",
                domain=MS_DOMAIN,
                **attrs,
            )  # fmt: skip
        )
        remove.append(chain[-1])
        fused += 1
    if not fused:
        return 0
    for node in remove:
        graph.node.remove(node)
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_initializers)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    _prune_and_sort(model)
    return fused


def fused_operator_counts(model: Any) -> dict[str, int]:
    """How many nodes of each operator type a model has (fused ones included)."""
    return dict(Counter(node.op_type for node in model.graph.node))


_FUSED_OPS = {"Attention", "MultiHeadAttention", "QAttention", "SkipLayerNormalization", "EmbedLayerNormalization"}


# ONNX Runtime graph transformers a CPU session runs without (see optimize_graph).
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def optimize_graph(
    model: Any, *, num_heads: int | None, use_gpu: bool, model_type: str = "bert", hidden_size: int = 0
) -> Any:
    """Attention fusion then ONNX Runtime's transformer fusions; the optimiser's OnnxModel.

    For CPU the residual Add and LayerNormalization stay apart: ONNX Runtime's CPU
    SkipLayerNormalization kernel measured slower than the two (on the shared MiniLM at
    4 x 256 tokens, 2 threads: fp32 +6%, int8 +16% pairs/s without it), so sessions on
    CPU also turn ONNX Runtime's own SkipLayerNormFusion off (:data:`CPU_DISABLED_OPTIMIZERS`).
    """
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    fuse_attention(model, num_heads=num_heads)
    heads = num_heads or 0
    if not heads:
        for node in model.graph.node:
            if node.op_type == "Attention" and node.domain == MS_DOMAIN:
                heads = next(a.i for a in node.attribute if a.name == "num_heads")
                break
    options = FusionOptions(model_type)
    options.enable_skip_layer_norm = use_gpu
    return optimizer.optimize_model(
        model, model_type=model_type, num_heads=heads, hidden_size=hidden_size, opt_level=0, use_gpu=use_gpu,
        optimization_options=options,
    )  # fmt: skip


def optimized_model_bytes(source: str | Path, *, use_gpu: bool = False) -> bytes | None:
    """``source`` fused in memory, serialised, for a session to load; None when there is
    nothing to gain (already fused, quantised, or no attention this module recognises)
    or the ``onnx`` package is missing. What the engine does at load (``optimize``)."""
    try:
        onnx = _import_onnx()
    except ModelError:
        logger.warning("onnx is not installed: %s is loaded without es-rerank's graph fusions", source)
        return None
    model = onnx.load(str(source))
    ops = {node.op_type for node in model.graph.node}
    if ops & _FUSED_OPS or "Softmax" not in ops or "DynamicQuantizeLinear" in ops:
        return None
    try:
        optimized = optimize_graph(model, num_heads=None, use_gpu=use_gpu)
    except Exception as exc:  # a graph the optimiser chokes on still runs as it is
        logger.warning("graph fusions failed for %s (%s: %s); loading it as it is", source, type(exc).__name__, exc)
        return None
    fused = fused_operator_counts(optimized.model)
    if not fused.get("Attention"):
        return None
    logger.info("%s fused at load: %s", source, ", ".join(f"{k} {v}" for k, v in sorted(fused.items())))
    return optimized.model.SerializeToString()


def fuse_model(
    source: str | Path,
    *,
    num_heads: int | None = None,
    use_gpu: bool = False,
    model_type: str = "bert",
    hidden_size: int = 0,
    fp16: bool = False,
) -> Any:
    """``source`` loaded and fused (:func:`optimize_graph`), converted to float16 with ``fp16``
    (inputs and outputs kept as they were: int64 ids, fp32 logits); ONNX Runtime's OnnxModel.

    The one optimise path: :func:`optimize_onnx`, :func:`convert_fp16`, :mod:`.quantize` and
    ``es-rerank model optimize/quantize`` all go through it. Failures are ModelErrors.
    """
    onnx = _import_onnx()
    try:
        model = onnx.load(str(source))
    except Exception as exc:
        raise ModelError(f"cannot read {source}: {exc}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimized = optimize_graph(
                model, num_heads=num_heads, use_gpu=use_gpu, model_type=model_type, hidden_size=hidden_size
            )
            if fp16:
                optimized.convert_float_to_float16(keep_io_types=True)
    except Exception as exc:
        what = "convert" if fp16 else "optimise"
        target = f"{source} to float16" if fp16 else str(source)
        raise ModelError(f"cannot {what} {target}: {type(exc).__name__}: {exc}") from None
    return optimized


def save_model(onnx_model: Any, dest: str | Path) -> None:
    """Write an OnnxModel to ``dest`` whole or not at all (weights outside the file past 2 GB)."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp")
    onnx_model.save_model_to_file(str(tmp), use_external_data_format=onnx_model.model.ByteSize() >= TWO_GIB)
    os.replace(tmp, dest)


def optimize_onnx(
    source: str | Path,
    dest: str | Path,
    *,
    num_heads: int | None = None,
    use_gpu: bool = False,
) -> dict[str, int]:
    """Write ``dest``: ``source`` with its attention fused (:func:`fuse_attention`), then ONNX
    Runtime's BERT fusions (EmbedLayerNormalization, BiasGelu; SkipLayerNormalization only
    with ``use_gpu``).

    Returns the operator counts of the result. ``use_gpu`` lets the optimiser pick
    fusions meant for CUDA (for the fp16 variant).
    """
    optimized = fuse_model(source, num_heads=num_heads, use_gpu=use_gpu)
    save_model(optimized, dest)
    return fused_operator_counts(optimized.model)


def convert_fp16(source: str | Path, dest: str | Path, *, num_heads: int | None = None) -> dict[str, int]:
    """Write ``dest``: ``source`` optimised for CUDA (:func:`optimize_onnx` with ``use_gpu``)
    and converted to float16, inputs and outputs kept as they were (int64 ids, fp32 logits).

    Runs on any machine (no GPU needed to convert); the result is meant for CUDA.
    """
    optimized = fuse_model(source, num_heads=num_heads, use_gpu=True, fp16=True)
    save_model(optimized, dest)
    return fused_operator_counts(optimized.model)
