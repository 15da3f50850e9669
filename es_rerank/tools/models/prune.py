"""Structured pruning for CPU: fewer attention heads and feed-forward neurons per layer.

Each block is pruned in graph order on the model as pruned so far. The block's units
(heads, neurons) are ranked by the energy of their contribution to its output product
on calibration pairs, the weakest removed, and the output product refitted by least
squares (ridge) so that what is left reproduces the whole block's output, bias
included. Only second moments of the calibration activations are kept, one Gram matrix
a block, so the calibration set may be large.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ModelError
from ...reranker.optimize import fuse_model
from ._common import _compare, _import_onnx_tools, _open_model_dir, _record_variant
from .calibration import calibration_batches
from .optimize import _heads_and_hidden

# Activations between a feed-forward block's two products (fused or not).
_ACTIVATIONS = frozenset({"BiasGelu", "FastGelu", "Gelu", "Relu"})


@dataclass
class _Block:
    """One prunable block: ``units`` slices of ``unit`` columns of ``signal`` feed ``out_weight``."""

    kind: str  # "attention" (units are heads) or "ffn" (units are neurons)
    layer: int
    node: Any  # the fused Attention node, or the feed-forward block's first MatMul
    signal: str  # the tensor the output product reads
    units: int
    unit: int
    in_weight: str  # columns to keep: [hidden, units*unit] (Attention: Q, K and V side by side)
    in_bias: str | None
    out_weight: str  # rows to keep and refit: [units*unit, hidden]
    out_bias: str | None


@dataclass(frozen=True)
class BlockReport:
    """What pruning did to one block: units kept of how many, and the refit's relative error."""

    kind: str
    layer: int
    kept: int
    units: int
    error: float


@dataclass(frozen=True)
class PruneResult:
    """The file :func:`prune_model` wrote, the blocks' reports, sizes and the scores' drift."""

    model_dir: Path
    source: Path
    output: Path
    blocks: list[BlockReport]
    source_bytes: int
    output_bytes: int
    max_abs_diff: float

    def kept(self, kind: str) -> list[int]:
        return [b.kept for b in self.blocks if b.kind == kind]


def _initializer_uses(graph: Any) -> dict[str, int]:
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    return uses


def find_blocks(graph: Any) -> list[_Block]:
    """The fused attention and feed-forward blocks of a transformer graph, in graph order."""
    inits = {i.name: i for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def weighted_matmul(node: Any) -> bool:
        return bool(node.op_type == "MatMul" and node.input[1] in inits)

    def bias_after(tensor: str) -> str | None:
        adds = [n for n in consumers.get(tensor, []) if n.op_type == "Add"]
        if len(consumers.get(tensor, [])) != 1 or not adds:
            return None
        bias = [i for i in adds[0].input if i in inits and len(inits[i].dims) == 1]
        return bias[0] if bias else None

    blocks: list[_Block] = []
    counts = {"attention": 0, "ffn": 0}
    for node in graph.node:
        if node.op_type == "Attention":
            attrs = {a.name: a for a in node.attribute}
            if "qkv_hidden_sizes" in attrs or node.input[1] not in inits:
                raise ModelError(f"attention node {node.name!r} is already pruned or has no weight initializer")
            heads = int(attrs["num_heads"].i)
            width = int(inits[node.input[1]].dims[1]) // 3
            readers = consumers.get(node.output[0], [])
            if len(readers) != 1 or not weighted_matmul(readers[0]):
                raise ModelError(f"attention node {node.name!r} does not feed one output projection (MatMul)")
            out = readers[0]
            blocks.append(
                _Block("attention", counts["attention"], node, node.output[0], heads, width // heads,
                       node.input[1], node.input[2] if len(node.input) > 2 and node.input[2] else None,
                       out.input[1], bias_after(out.output[0]))
            )  # fmt: skip
            counts["attention"] += 1
        elif node.op_type in _ACTIVATIONS:
            source = producer.get(node.input[0])
            in_bias = node.input[1] if node.op_type in ("BiasGelu", "FastGelu") and len(node.input) > 1 else None
            if source is not None and source.op_type == "Add" and in_bias is None:
                constant = [i for i in source.input if i in inits]
                if len(constant) != 1:
                    continue
                in_bias = constant[0]
                source = producer.get(next(i for i in source.input if i != in_bias))
            readers = consumers.get(node.output[0], [])
            if source is None or not weighted_matmul(source) or len(readers) != 1 or not weighted_matmul(readers[0]):
                continue
            out = readers[0]
            blocks.append(
                _Block("ffn", counts["ffn"], source, node.output[0], int(inits[source.input[1]].dims[1]), 1,
                       source.input[1], in_bias or None, out.input[1], bias_after(out.output[0]))
            )  # fmt: skip
            counts["ffn"] += 1
    uses = _initializer_uses(graph)
    for block in blocks:
        for name in (block.in_weight, block.in_bias, block.out_weight, block.out_bias):
            if name is not None and uses.get(name, 0) > 1:
                raise ModelError(f"initializer {name!r} is shared by several nodes; cannot prune it in place")
    return blocks


def _gram(model: Any, signal: str, batches: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
    """[X 1]^T [X 1] over the real (unpadded) tokens of ``signal``, in float64."""
    onnx = _import_onnx_tools()
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.append(onnx.helper.make_tensor_value_info(signal, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    gram: np.ndarray | None = None
    for feeds in batches:
        out = session.run(None, feeds)[0]
        mask = feeds.get("attention_mask")
        rows = out[mask.astype(bool)] if mask is not None else out.reshape(-1, out.shape[-1])
        x = np.hstack([rows, np.ones((len(rows), 1), dtype=np.float32)])
        # float32 products, float64 sums: a batch's few thousand rows lose nothing that matters.
        part = (x.T @ x).astype(np.float64)
        gram = part if gram is None else gram + part
    assert gram is not None  # batches is not empty (checked by prune_graph)
    return gram


def refit(
    gram: np.ndarray, weight: np.ndarray, columns: np.ndarray, *, intercept: bool, ridge: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Least-squares weights over ``columns`` (and a bias with ``intercept``) reproducing ``X @ weight``.

    ``gram`` is [X 1]^T [X 1]. Returns the new weight rows, the bias change (zeros
    without ``intercept``) and the fit's error relative to the target's energy.
    """
    d = weight.shape[0]
    rows = np.concatenate([columns, [d]]) if intercept else columns
    a = gram[np.ix_(rows, rows)]
    b = gram[rows, :d] @ weight
    regular = a.copy()
    regular[np.diag_indices_from(regular)] += ridge * max(float(np.trace(a)) / len(a), 1e-12)
    theta = np.linalg.solve(regular, b)
    target = float(np.sum((gram[:d, :d] @ weight) * weight))
    residual = float(np.sum((a @ theta) * theta) - 2 * np.sum(theta * b)) + target
    shift = theta[-1] if intercept else np.zeros(weight.shape[1])
    return theta[: len(columns)], shift, max(residual, 0.0) / max(target, 1e-30)


def _contribution(gram: np.ndarray, weight: np.ndarray, units: int, unit: int) -> np.ndarray:
    """Energy of each unit's share of ``X @ weight``: ||X_u W_u||^2."""
    return np.array(
        [
            float(np.sum((gram[s, s] @ weight[s]) * weight[s]))
            for s in (slice(u * unit, (u + 1) * unit) for u in range(units))
        ]
    )


def prune_graph(
    model: Any,
    batches: Sequence[dict[str, np.ndarray]],
    *,
    heads: int | Sequence[int] | None = None,
    ffn: int | Sequence[int] | None = None,
    ridge: float = 1e-3,
    progress: Callable[[str], None] | None = None,
) -> list[BlockReport]:
    """Prune a fused transformer graph (an ONNX ModelProto, changed in place) to ``heads``
    attention heads and ``ffn`` feed-forward neurons per layer: one number for every layer
    or one per layer (None: keep them all)."""
    onnx = _import_onnx_tools()
    from onnx import numpy_helper

    if not batches:
        raise ModelError("the calibration set is empty")
    note = progress or (lambda _message: None)
    graph = model.graph
    blocks = find_blocks(graph)
    targets: dict[str, list[int] | None] = {}
    for kind, sizes in (("attention", heads), ("ffn", ffn)):
        found = [b for b in blocks if b.kind == kind]
        wanted = targets[kind] = (
            [sizes] * len(found) if isinstance(sizes, int) else None if sizes is None else list(sizes)
        )
        if wanted is None:
            continue
        if not found:
            raise ModelError(f"the graph has no fused {kind} blocks to prune (is its attention fused?)")
        if len(wanted) != len(found):
            raise ModelError(f"{len(wanted)} {kind} sizes given for {len(found)} layers")
        for block, keep in zip(found, wanted):
            if not 1 <= keep <= block.units:
                raise ModelError(f"layer {block.layer} {kind}: cannot keep {keep} of {block.units}")
    inits = {i.name: i for i in graph.initializer}
    # Recorded shapes of the tensors between the products go stale as they narrow; ONNX
    # Runtime infers them again.
    del graph.value_info[:]

    def get(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name])

    def put(name: str, value: np.ndarray) -> None:
        inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name))

    reports: list[BlockReport] = []
    for block in blocks:
        wanted = targets[block.kind]
        keep = block.units if wanted is None else wanted[block.layer]
        if keep == block.units:
            reports.append(BlockReport(block.kind, block.layer, keep, block.units, 0.0))
            continue
        gram = _gram(model, block.signal, batches)
        weight = get(block.out_weight).astype(np.float64)
        energy = _contribution(gram, weight, block.units, block.unit)
        kept = np.sort(np.argsort(-energy, kind="stable")[:keep])
        columns = (kept[:, None] * block.unit + np.arange(block.unit)).ravel()
        rows, shift, error = refit(gram, weight, columns, intercept=block.out_bias is not None, ridge=ridge)
        put(block.out_weight, rows)
        if block.out_bias is not None:
            put(block.out_bias, get(block.out_bias) + shift)
        if block.kind == "attention":
            # Q, K and V sit side by side in the fused weight: the same heads from each.
            width = block.units * block.unit
            columns = np.concatenate([columns + part * width for part in range(3)])
            for attr in block.node.attribute:
                if attr.name == "num_heads":
                    attr.i = keep
        put(block.in_weight, get(block.in_weight)[:, columns])
        if block.in_bias is not None:
            put(block.in_bias, get(block.in_bias)[columns])
        reports.append(BlockReport(block.kind, block.layer, keep, block.units, error))
        what = "heads" if block.kind == "attention" else "neurons"
        note(
            f"layer {block.layer} {block.kind}: kept {keep} of {block.units} {what}, output refitted ({error:.2%} error)"
        )
    onnx.checker.check_model(model)
    return reports


def prune_model(
    model_dir: Path,
    calibration_corpus: str | Path,
    *,
    heads: int | Sequence[int] | None = None,
    ffn: int | Sequence[int] | None = None,
    onnx_file: str | None = None,
    calibration_split: str = "train",
    calibration_pairs: int = 256,
    batch_size: int = 16,
    seed: int = 0,
    ridge: float = 1e-3,
    model_type: str = "bert",
    output: str = "model.pruned.onnx",
    progress: Callable[[str], None] | None = None,
) -> PruneResult:
    """Structured pruning of a model directory's ONNX file, calibrated on a BEIR split's pairs.

    ``heads`` and ``ffn``: how many attention heads and feed-forward neurons each layer
    keeps, one number for every layer or one per layer (None: all). The graph is fused
    first when its attention is not (heads from config.json). The result is fp32 and
    fused; quantise it with :func:`~.quantize.quantize_model` for the int8 path. It is
    scored against the source on CPU and recorded in ``es-rerank-model.json``.
    """
    if heads is None and ffn is None:
        raise ModelError("nothing to prune: give heads, ffn or both")
    md = _open_model_dir(model_dir, onnx_file)
    onnx = _import_onnx_tools(sympy=True)
    note = progress or (lambda _message: None)
    model = onnx.load(str(md.onnx))
    if not any(node.op_type == "Attention" for node in model.graph.node):
        num_heads, hidden = _heads_and_hidden(md, None, None)
        model = fuse_model(md.onnx, model_type=model_type, num_heads=num_heads, hidden_size=hidden).model
        fused = sum(node.op_type == "Attention" for node in model.graph.node)
        note(f"fused the graph: {fused} attention layers" if fused else "the graph's attention did not fuse")
    batches = calibration_batches(
        md.path, calibration_corpus, split=calibration_split, pairs=calibration_pairs, batch_size=batch_size,
        seed=seed, onnx_file=onnx_file,
    )  # fmt: skip
    note(
        f"calibrating on {sum(len(b['input_ids']) for b in batches)} {calibration_split} pairs in {len(batches)} batches"
    )
    reports = prune_graph(model, batches, heads=heads, ffn=ffn, ridge=ridge, progress=note)
    out_path = md.path / output
    with tempfile.TemporaryDirectory(prefix=".prune-", dir=md.path) as tmp_name:
        tmp_out = Path(tmp_name) / out_path.name
        onnx.save(model, str(tmp_out))
        os.replace(tmp_out, out_path)
    diff = _compare(md, out_path, md.onnx)
    _record_variant(
        md, out_path,
        {"kind": "pruned", "from": md.onnx.name,
         "heads": [r.kept for r in reports if r.kind == "attention"], "ffn": [r.kept for r in reports if r.kind == "ffn"],
         "calibration": {"corpus": Path(calibration_corpus).name, "split": calibration_split,
                         "pairs": calibration_pairs, "seed": seed}, "ridge": ridge},
    )  # fmt: skip
    return PruneResult(md.path, md.onnx, out_path, reports, md.onnx.stat().st_size, out_path.stat().st_size, diff)
