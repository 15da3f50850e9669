"""The int8 CPU variant of a cross-encoder: fused graph first, then dynamic int8 quantisation.

The recipe (:data:`INT8_RECIPE`), measured on SciFact dev with the shared MiniLM-L6
cross-encoder (see es-rerank's bench): fuse the transformer first
(:func:`~es_rerank.reranker.optimize.optimize_onnx`: one ``Attention`` node per
layer, EmbedLayerNormalization, BiasGelu; residual Add and LayerNormalization kept
apart, faster on CPU), then ONNX Runtime's ``quantize_dynamic``
with int8 weights quantised per output channel, on the ``MatMul`` and ``Attention``
nodes only (the embeddings, layer norms, pooler and classifier stay fp32).
Activations are quantised at run time (uint8, per tensor), so no calibration set is
needed. Fusing first matters twice: the Q/K/V products become one quantised GEMM
inside ``QAttention``, and the many small fp32 nodes between them are gone.

Per-channel weight scales are what keeps the ranking: a per-tensor scale moved some
logits by up to ~3.5 on this model, per channel by ~1.6.

``reduce_range`` (7-bit weights) is for CPUs without AVX-512 VNNI / AVX-VNNI, where
ONNX Runtime's u8s8 kernels can saturate; check quality on such a machine.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ModelError
from .optimize import TWO_GIB, _import_onnx, fused_operator_counts, optimize_onnx

__all__ = ["INT8_RECIPE", "quantize_int8", "quantize_dynamic_file"]


logger = logging.getLogger("es_rerank.reranker")

INT8_RECIPE = {
    "fuse": True,
    "per_channel": True,
    "op_types": ("MatMul", "Attention"),
    "reduce_range": False,
}


def quantize_dynamic_file(
    source: str | Path,
    dest: str | Path,
    *,
    fused: bool,
    per_channel: bool,
    reduce_range: bool = False,
    op_types: Sequence[str] | None = None,
    weight_type: str = "qint8",
    nodes_to_exclude: Sequence[str] | None = None,
    extra_options: dict[str, Any] | None = None,
) -> None:
    """ONNX Runtime's ``quantize_dynamic`` from ``source`` to ``dest`` (``op_types`` None:
    every operator type it can). ``fused``: ``source`` holds com.microsoft fused operators,
    which have no ONNX shape inference, so their outputs are declared fp32."""
    onnx = _import_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weight = {"qint8": QuantType.QInt8, "quint8": QuantType.QUInt8}.get(weight_type)
    if weight is None:
        raise ModelError(f"weight_type must be qint8 or quint8, got {weight_type!r}")
    options = dict(extra_options or {})
    if fused:
        options.setdefault("DefaultTensorType", onnx.TensorProto.FLOAT)
    source = Path(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(
                str(source),
                str(dest),
                weight_type=weight,
                per_channel=per_channel,
                reduce_range=reduce_range,
                op_types_to_quantize=list(op_types) if op_types else None,
                nodes_to_exclude=list(nodes_to_exclude) if nodes_to_exclude else None,
                use_external_data_format=source.stat().st_size >= TWO_GIB,
                extra_options=options or None,
            )
    except Exception as exc:
        raise ModelError(f"cannot quantise {source}: {type(exc).__name__}: {exc}") from None


def quantize_int8(
    source: str | Path,
    dest: str | Path,
    *,
    fuse: bool = True,
    per_channel: bool = True,
    op_types: Sequence[str] = ("MatMul", "Attention"),
    reduce_range: bool = False,
    num_heads: int | None = None,
) -> dict[str, int]:
    """Write ``dest``, the int8 CPU variant of the fp32 model ``source``; its operator counts.

    Defaults are :data:`INT8_RECIPE` (what ``es-rerank model quantize DIR`` does to a
    model directory). ``fuse=False`` quantises the graph as it is (plain dynamic int8,
    what ``quantize_dynamic`` alone gives).
    """
    onnx = _import_onnx()
    source, dest = Path(source), Path(dest)
    with tempfile.TemporaryDirectory(prefix=".es-rerank-int8-", dir=dest.parent) as tmp:
        model_in = source
        if fuse:
            model_in = Path(tmp) / "fused.onnx"
            optimize_onnx(source, model_in, num_heads=num_heads)
        quantize_dynamic_file(
            model_in, dest, fused=fuse, per_channel=per_channel, reduce_range=reduce_range, op_types=op_types
        )
    return fused_operator_counts(onnx.load(str(dest)))
