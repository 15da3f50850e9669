"""The int8 CPU variants of a cross-encoder: fused graph first, then dynamic int8 or calibrated static int8.

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

The static variant (:func:`quantize_static_int8`, :data:`STATIC_RECIPE`) takes activation
scales from a calibration set instead (ONNX Runtime's ``quantize_static``, QDQ format,
uint8 activations and int8 weights, what its x86 CPU kernels run). Its QDQ quantiser
has no rule for the fused ``Attention`` (not in its registry) and skips any activation
whose type it cannot infer, so the fused graph gets ONNX Runtime's symbolic shape
inference first (without it the MatMuls after ``Attention`` and ``BiasGelu`` kept fp32
activations: weight-only int8). A MatMul fed by GELU is left out of the static pass:
one calibrated scale cannot hold GELU's long positive tail (shared MiniLM, 48 SciFact
dev pairs: correlation with fp32 0.97 with it, 0.996 without). What static int8 leaves,
the fused ``Attention`` and those MatMuls, is then quantised dynamically as above
(``dynamic_rest``), so a CPU session runs ``QLinearMatMul``/``QGemm`` (made from the
QDQ nodes) beside ``QAttention`` and ``DynamicQuantizeMatMul``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import ModelError
from .optimize import TWO_GIB, _import_onnx, fused_operator_counts, optimize_onnx

__all__ = [
    "INT8_RECIPE",
    "STATIC_RECIPE",
    "CALIBRATE_METHODS",
    "CalibrateMethod",
    "quantize_int8",
    "quantize_dynamic_file",
    "quantize_static_int8",
]


logger = logging.getLogger("es_rerank.reranker")

INT8_RECIPE = {
    "fuse": True,
    "per_channel": True,
    "op_types": ("MatMul", "Attention"),
    "reduce_range": False,
}

STATIC_RECIPE = {
    "fuse": True,
    "per_channel": True,
    "op_types": ("MatMul", "Gemm"),
    "calibrate_method": "minmax",
    "dynamic_rest": True,
}

CalibrateMethod = Literal["minmax", "percentile", "entropy"]
CALIBRATE_METHODS: tuple[CalibrateMethod, ...] = ("minmax", "percentile", "entropy")

# Producers whose output one static per-tensor scale cannot hold (GELU's long positive tail).
_WIDE_RANGE_OPS = frozenset({"Gelu", "BiasGelu", "FastGelu"})


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
    nodes_to_quantize: Sequence[str] | None = None,
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
                nodes_to_quantize=list(nodes_to_quantize) if nodes_to_quantize else None,
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


@contextlib.contextmanager
def _quiet_ort_quantizer() -> Iterator[None]:
    """Keep ONNX Runtime's quantiser from printing: it logs advice on the root logger (that reaches
    stderr through logging's last resort) and its histogram calibrators print to stdout."""

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname

    root = logging.getLogger()
    root.addFilter(keep)
    printed = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(keep)
        if printed.getvalue():
            logger.debug("onnxruntime quantiser: %s", printed.getvalue().strip())


def _graph_inputs(model: Any) -> set[str]:
    initializers = {i.name for i in model.graph.initializer}
    return {i.name for i in model.graph.input if i.name not in initializers}


def _fed_by_wide_range(model: Any, op_types: Sequence[str]) -> list[str]:
    """Nodes of ``op_types`` whose first input comes from a GELU (see :data:`_WIDE_RANGE_OPS`)."""
    producer = {out: node.op_type for node in model.graph.node for out in node.output}
    return [
        node.name
        for node in model.graph.node
        if node.op_type in op_types and node.input and producer.get(node.input[0]) in _WIDE_RANGE_OPS
    ]


def _calibration_reader(
    calibration: Iterable[Mapping[str, np.ndarray]], names: set[str], progress: Callable[[str], None] | None
) -> Any:
    """An ONNX Runtime CalibrationDataReader over the batches of ``calibration``, checked against the model's inputs.

    It has a length and ranges so that quantize_static can collect one batch at a time
    (``CalibStridedMinMax``, used by every calibrator whatever its name): the histogram
    calibrators otherwise stack all batches into one array, which fails when batches are
    padded to different widths, and hold every batch's activations at once.
    """
    from onnxruntime.quantization import CalibrationDataReader

    batches = [dict(batch) for batch in calibration]
    if not batches:
        raise ModelError("the calibration set is empty")
    for number, batch in enumerate(batches, start=1):
        if set(batch) != names:
            raise ModelError(f"calibration batch {number} has inputs {sorted(batch)}; the model takes {sorted(names)}")

    class _Reader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime has no type hints
        def __init__(self) -> None:
            self.batches = self.rows = 0
            self.total_rows = sum(len(next(iter(batch.values()))) for batch in batches)
            self._next, self._stop = 0, len(batches)

        def __len__(self) -> int:
            return len(batches)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._next, self._stop = start_index, min(end_index, len(batches))

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._next >= self._stop:
                return None
            batch = batches[self._next]
            self._next += 1
            self.batches += 1
            self.rows += len(next(iter(batch.values())))
            if progress is not None:
                progress(f"calibration batch {self.batches}/{len(batches)} ({self.rows}/{self.total_rows} pairs)")
            return batch

    return _Reader()


def _with_symbolic_shapes(source: Path, dest: Path, *, large: bool) -> Path:
    """``source`` with ONNX Runtime's symbolic shape inference, which knows the com.microsoft
    fused operators that ONNX's own inference does not (the QDQ quantiser needs the types)."""
    onnx = _import_onnx()
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        model = SymbolicShapeInference.infer_shapes(onnx.load(str(source)), auto_merge=True)
    except Exception as exc:
        raise ModelError(f"cannot infer the shapes of the fused {source.name}: {type(exc).__name__}: {exc}") from None
    onnx.save(model, str(dest), save_as_external_data=large)
    return dest


def quantize_static_int8(
    source: str | Path,
    dest: str | Path,
    calibration: Iterable[Mapping[str, np.ndarray]],
    *,
    fuse: bool = True,
    per_channel: bool = True,
    op_types: Sequence[str] = ("MatMul", "Gemm"),
    num_heads: int | None = None,
    calibrate_method: CalibrateMethod = "minmax",
    reduce_range: bool = False,
    dynamic_rest: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Write ``dest``, static int8 (QDQ) of the fp32 model ``source`` calibrated on ``calibration``; its operator counts.

    ``calibration``: the model's inputs, one dict a batch (what a session's ``run`` takes);
    it is read once. Defaults are :data:`STATIC_RECIPE` (see the module's notes): fuse, give
    the fused graph symbolic shapes, then ``quantize_static`` on ``op_types`` (uint8
    activations, int8 weights, per output channel with ``per_channel``) without the MatMuls
    fed by GELU; with ``dynamic_rest`` those and the fused ``Attention`` dynamically (else fp32).
    ``fuse=False`` quantises the graph as it is. ``calibrate_method``: ``minmax`` (ranges
    as seen), ``percentile`` (ONNX Runtime's 99.999th) or ``entropy``; the last two keep every batch's
    activations in memory (ONNX Runtime's histogram calibrators). ``progress`` gets a line
    per step and per calibration batch.
    """
    onnx = _import_onnx()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if calibrate_method not in methods:
        raise ModelError(f"calibrate_method must be one of {', '.join(methods)}, got {calibrate_method!r}")
    note = progress or (lambda _message: None)
    source, dest = Path(source), Path(dest)
    large = source.stat().st_size >= TWO_GIB
    with tempfile.TemporaryDirectory(prefix=".es-rerank-qdq-", dir=dest.parent) as tmp:
        model_in = source
        if fuse:
            note("fusing the transformer graph")
            model_in = Path(tmp) / "fused.onnx"
            optimize_onnx(source, model_in, num_heads=num_heads)
            model_in = _with_symbolic_shapes(model_in, Path(tmp) / "shaped.onnx", large=large)
        model = onnx.load(str(model_in), load_external_data=False)
        left_out = _fed_by_wide_range(model, op_types)
        reader = _calibration_reader(calibration, _graph_inputs(model), progress)
        static_out = Path(tmp) / "static.onnx"
        note(
            f"calibrating ({calibrate_method}) on {reader.total_rows} pairs, then {', '.join(op_types)} to QDQ int8..."
        )
        try:
            with _quiet_ort_quantizer():
                quantize_static(
                    str(model_in),
                    str(static_out),
                    reader,
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(op_types),
                    per_channel=per_channel,
                    reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8,  # u8s8: what ONNX Runtime's x86 kernels run
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=left_out,
                    use_external_data_format=large,
                    calibrate_method=methods[calibrate_method],
                    extra_options={"CalibStridedMinMax": 1},  # one batch at a time, see _calibration_reader
                )
        except Exception as exc:
            raise ModelError(f"cannot quantise {source}: {type(exc).__name__}: {exc}") from None
        note(f"calibrated on {reader.rows} pairs in {reader.batches} batches")
        dynamic = [n.name for n in model.graph.node if n.op_type == "Attention"] + left_out if dynamic_rest else []
        if dynamic:
            note(f"dynamic int8 for what static int8 leaves: {len(dynamic)} node(s)")
            with _quiet_ort_quantizer():
                quantize_dynamic_file(
                    static_out,
                    dest,
                    fused=True,
                    per_channel=per_channel,
                    reduce_range=reduce_range,
                    op_types=("Attention", "MatMul"),
                    nodes_to_quantize=dynamic,
                )
        else:
            os.replace(static_out, dest)
    return fused_operator_counts(onnx.load(str(dest), load_external_data=False))
