"""Model tooling: fetch, export, optimise, quantise and check cross-encoders for es-rerank.

Every command works on a *model directory* (what ``ModelSettings.path`` names)::

    model.onnx             the cross-encoder (inputs input_ids, attention_mask[, token_type_ids];
                           output logits [batch, 1 or 2])
    model.opt.onnx         optional: ONNX Runtime transformer fusions (``optimize``)
    model.fp16.onnx        optional: fused and half precision, for CUDA (``optimize --fp16``)
    model.int8.onnx        optional: int8 dynamic quantisation, for CPU (``quantize``)
    model.qdq.onnx         optional: int8 static (QDQ) quantisation, calibrated, for CPU (``quantize --mode static``)
    model.pruned.onnx      optional: fewer heads and feed-forward neurons, refitted on calibration pairs (``prune``)
    tokenizer.json         the Hugging Face fast tokenizer
    config.json            optional: the Hugging Face config (heads and hidden size for ``optimize``)
    es-rerank-model.json   how to run it: max_length, head, activation, ONNX file, source

The typed functions (:func:`pull_model`, :func:`export_model`, :func:`optimize_model`,
:func:`quantize_model`, :func:`quantize_static_model`, :func:`prune_model`,
:func:`check_model`) do the work and return result objects; the click group :data:`model` is a thin layer over them.
Heavy dependencies are imported only when a command needs them, and a missing one is a
:class:`~es_rerank.errors.ModelError` that names what to install."""

from ._common import CHECK_PAIRS, OPSET
from .calibration import calibration_batches, calibration_pairs
from .check import CheckResult, check_model
from .export import ExportResult, export_model
from .optimize import OptimizeResult, optimize_model
from .prune import PruneResult, prune_model
from .pull import PullResult, pull_model
from .quantize import QuantizeResult, quantize_model, quantize_static_model

__all__ = [
    "pull_model",
    "export_model",
    "optimize_model",
    "quantize_model",
    "quantize_static_model",
    "prune_model",
    "calibration_pairs",
    "calibration_batches",
    "check_model",
    "PullResult",
    "ExportResult",
    "OptimizeResult",
    "QuantizeResult",
    "PruneResult",
    "CheckResult",
    "CHECK_PAIRS",
    "OPSET",
]
