"""ONNX Runtime transformer fusions (fp32, and fp16 for CUDA) written beside the model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...errors import ModelError
from ...reranker.optimize import fuse_model, save_model
from ._common import (
    HF_CONFIG_FILE,
    _compare,
    _import_onnx_tools,
    _ModelDir,
    _open_model_dir,
    _read_json,
    _record_variant,
    logger,
)


@dataclass(frozen=True)
class OptimizeResult:
    """Files :func:`optimize_model` wrote, the fused operators, and the scores' drift."""

    model_dir: Path
    source: Path
    optimized: Path
    fp16: Path | None
    fused_ops: dict[str, int]
    max_abs_diff: float  # optimised vs source, on CPU, over the built-in pairs
    fp16_max_abs_diff: float | None = None  # only where the fp16 model runs here


def _heads_and_hidden(md: _ModelDir, num_heads: int | None, hidden_size: int | None) -> tuple[int, int]:
    """From the arguments, else the directory's config.json (or its hf/ checkpoint's), else 0
    (ORT then guesses from the graph, and misses this export's attention)."""
    hf_config = _read_json(md.path / HF_CONFIG_FILE) or _read_json(md.path / "hf" / HF_CONFIG_FILE) or {}
    heads = num_heads if num_heads is not None else hf_config.get("num_attention_heads", 0)
    hidden = hidden_size if hidden_size is not None else hf_config.get("hidden_size", 0)
    return int(heads or 0), int(hidden or 0)


def optimize_model(
    model_dir: Path,
    *,
    onnx_file: str | None = None,
    fp16: bool = False,
    model_type: str = "bert",
    num_heads: int | None = None,
    hidden_size: int | None = None,
    output: str = "model.opt.onnx",
    fp16_output: str = "model.fp16.onnx",
) -> OptimizeResult:
    """ONNX Runtime transformer fusions (attention, layer norm, GELU...) for a model directory.

    Writes ``output`` (fused, fp32, for any provider) and with ``fp16`` also
    ``fp16_output``: fused for GPU and converted to half precision with inputs and
    outputs kept in their original types (int64 in, float32 logits out), for CUDA.
    ``num_heads`` and ``hidden_size`` default to the directory's config.json, else ONNX
    Runtime reads them from the graph. The fused model is scored against the source on
    CPU (``max_abs_diff``); the fp16 one too where this machine's ONNX Runtime runs it.
    """
    md = _open_model_dir(model_dir, onnx_file)
    _import_onnx_tools(sympy=True)
    heads, hidden = _heads_and_hidden(md, num_heads, hidden_size)

    fused = fuse_model(md.onnx, model_type=model_type, num_heads=heads, hidden_size=hidden, use_gpu=False)
    stats = {k: int(v) for k, v in (fused.get_fused_operator_statistics() or {}).items() if v}
    opt_path = md.path / output
    save_model(fused, opt_path)
    diff = _compare(md, opt_path, md.onnx)
    _record_variant(md, opt_path, {"kind": "optimized", "from": md.onnx.name, "model_type": model_type, "fused": stats})

    fp16_path: Path | None = None
    fp16_diff: float | None = None
    if fp16:
        half = fuse_model(md.onnx, model_type=model_type, num_heads=heads, hidden_size=hidden, use_gpu=True, fp16=True)
        fp16_path = md.path / fp16_output
        save_model(half, fp16_path)
        try:
            fp16_diff = _compare(md, fp16_path, md.onnx)
        except ModelError as exc:  # many fused fp16 kernels exist for CUDA only
            logger.info("the fp16 model does not run on this machine's CPU provider: %s", exc)
        _record_variant(md, fp16_path, {"kind": "fp16", "from": md.onnx.name, "model_type": model_type, "for": "cuda"})
    return OptimizeResult(md.path, md.onnx, opt_path, fp16_path, stats, diff, fp16_diff)
