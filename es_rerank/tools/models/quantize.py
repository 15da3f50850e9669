"""int8 quantisation for CPU: dynamic (the engine's measured recipe) or static with a calibration set (reranker.quantize)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from ...errors import ModelError
from ...reranker.optimize import fuse_model, save_model
from ...reranker.quantize import STATIC_RECIPE, CalibrateMethod, quantize_dynamic_file, quantize_static_int8
from ._common import QuantMode, _compare, _import_onnx_tools, _open_model_dir, _record_variant
from .calibration import calibration_batches
from .optimize import _heads_and_hidden


@dataclass(frozen=True)
class QuantizeResult:
    """The file :func:`quantize_model` wrote, its options, size and the scores' drift."""

    model_dir: Path
    source: Path
    output: Path
    options: dict[str, Any]
    source_bytes: int
    output_bytes: int
    max_abs_diff: float


def quantize_model(
    model_dir: Path,
    *,
    mode: QuantMode = "dynamic",
    onnx_file: str | None = None,
    per_channel: bool = False,
    reduce_range: bool = False,
    fusions_first: bool = False,
    preprocess: bool = False,
    op_types: Sequence[str] | None = None,
    weight_type: Literal["qint8", "quint8"] = "qint8",
    nodes_to_exclude: Sequence[str] | None = None,
    extra_options: Mapping[str, Any] | None = None,
    model_type: str = "bert",
    output: str = "model.int8.onnx",
) -> QuantizeResult:
    """int8 quantisation of a model directory's ONNX file for CPU inference.

    ``mode="dynamic"``: ONNX Runtime ``quantize_dynamic`` (int8 weights, activations
    quantised at run time). ``fusions_first`` applies :func:`optimize_model`'s fusions
    before quantising (fused Attention becomes QAttention); ``preprocess`` runs ONNX
    Runtime's ``quant_pre_process`` (symbolic shape inference, graph clean-up) on the
    input first, as ONNX Runtime's documentation advises. ``op_types`` limits the
    operator types quantised (ONNX Runtime's default: every one it can, e.g. MatMul,
    Attention, Gather); ``per_channel``, ``reduce_range``, ``weight_type``,
    ``nodes_to_exclude`` and ``extra_options`` go to ONNX Runtime as they are. The result
    is scored against the source on CPU (``max_abs_diff``) and recorded with its options
    in ``es-rerank-model.json``.

    Long on purpose: fusion, quantization and the accuracy check of one recipe, in order.
    """
    if mode != "dynamic":
        raise ModelError(
            f"quantisation mode {mode!r} is not supported (supported: dynamic; static int8 is quantize_static_model)"
        )
    md = _open_model_dir(model_dir, onnx_file)
    _import_onnx_tools(sympy=fusions_first or preprocess)
    options: dict[str, Any] = {
        "mode": mode,
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "fusions_first": fusions_first,
        "preprocess": preprocess,
        "op_types": list(op_types) if op_types else None,
        "weight_type": weight_type,
        "nodes_to_exclude": list(nodes_to_exclude) if nodes_to_exclude else None,
        "extra_options": dict(extra_options) if extra_options else None,
    }
    out_path = md.path / output
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=md.path) as tmp_name:
        source = md.onnx
        if fusions_first:
            heads, hidden = _heads_and_hidden(md, None, None)
            fused = fuse_model(md.onnx, model_type=model_type, num_heads=heads, hidden_size=hidden, use_gpu=False)
            source = Path(tmp_name) / "fused.onnx"
            save_model(fused, source)
        if preprocess:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            prepared = Path(tmp_name) / "prepared.onnx"
            try:
                quant_pre_process(str(source), str(prepared), skip_optimization=fusions_first)
            except Exception as exc:
                raise ModelError(
                    f"cannot prepare {source.name} for quantisation: {type(exc).__name__}: {exc}"
                ) from None
            source = prepared
        tmp_out = Path(tmp_name) / out_path.name
        quantize_dynamic_file(
            source,
            tmp_out,
            fused=fusions_first,
            per_channel=per_channel,
            reduce_range=reduce_range,
            op_types=op_types,
            weight_type=weight_type,
            nodes_to_exclude=nodes_to_exclude,
            extra_options=dict(extra_options or {}),
        )
        os.replace(tmp_out, out_path)
    diff = _compare(md, out_path, md.onnx)
    _record_variant(md, out_path, {"kind": "int8-" + mode, "from": md.onnx.name, **options})
    return QuantizeResult(md.path, md.onnx, out_path, options, md.onnx.stat().st_size, out_path.stat().st_size, diff)


def quantize_static_model(
    model_dir: Path,
    calibration_corpus: str | Path,
    *,
    onnx_file: str | None = None,
    calibration_split: str = "train",
    calibration_pairs: int = 256,
    batch_size: int = 16,
    seed: int = 0,
    calibrate_method: CalibrateMethod = "minmax",
    per_channel: bool = True,
    reduce_range: bool = False,
    fusions_first: bool = True,
    op_types: Sequence[str] | None = None,
    dynamic_rest: bool = True,
    output: str = "model.qdq.onnx",
    progress: Callable[[str], None] | None = None,
) -> QuantizeResult:
    """Static int8 (QDQ) of a model directory's ONNX file, calibrated on a BEIR data set's pairs.

    The calibration set is :func:`~.calibration.calibration_batches` (``calibration_pairs``
    pairs of ``calibration_split``, relevant and other documents, tokenized and batched as
    the engine does); the recipe is :func:`~es_rerank.reranker.quantize.quantize_static_int8`'s
    (``op_types`` None: :data:`~es_rerank.reranker.quantize.STATIC_RECIPE`'s). The result is
    scored against the source on CPU and recorded in ``es-rerank-model.json`` as
    ``int8-static`` with its calibration. ``progress`` gets a line per step.
    """
    md = _open_model_dir(model_dir, onnx_file)
    _import_onnx_tools(sympy=fusions_first)
    note = progress or (lambda _message: None)
    types = list(op_types) if op_types else list(cast("Sequence[str]", STATIC_RECIPE["op_types"]))
    batches = calibration_batches(
        md.path, calibration_corpus, split=calibration_split, pairs=calibration_pairs, batch_size=batch_size,
        seed=seed, onnx_file=onnx_file,
    )  # fmt: skip
    rows = sum(len(next(iter(batch.values()))) for batch in batches)
    note(f"calibration set: {rows} pairs of {calibration_split} from {calibration_corpus}, {len(batches)} batches")
    heads = _heads_and_hidden(md, None, None)[0] if fusions_first else 0
    out_path = md.path / output
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=md.path) as tmp_name:
        tmp_out = Path(tmp_name) / out_path.name
        ops = quantize_static_int8(
            md.onnx, tmp_out, batches, fuse=fusions_first, per_channel=per_channel, op_types=types,
            num_heads=heads or None, calibrate_method=calibrate_method, reduce_range=reduce_range,
            dynamic_rest=dynamic_rest, progress=progress,
        )  # fmt: skip
        os.replace(tmp_out, out_path)
    note("scoring the check pairs against the source")
    diff = _compare(md, out_path, md.onnx)
    options: dict[str, Any] = {
        "mode": "static",
        "calibration": {
            "corpus": str(calibration_corpus), "split": calibration_split, "pairs": rows, "batch_size": batch_size,
            "seed": seed, "method": calibrate_method,
        },
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "fusions_first": fusions_first,
        "op_types": types,
        "dynamic_rest": dynamic_rest,
        "ops": {k: v for k, v in sorted(ops.items()) if k in _QUANTISED_OPS},
    }  # fmt: skip
    _record_variant(md, out_path, {"kind": "int8-static", "from": md.onnx.name, **options})
    return QuantizeResult(md.path, md.onnx, out_path, options, md.onnx.stat().st_size, out_path.stat().st_size, diff)


# Operator types that say what a quantised file runs in int8 (recorded with the variant).
_QUANTISED_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QAttention", "MatMulInteger"}
)
