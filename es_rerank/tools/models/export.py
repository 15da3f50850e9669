"""Export a local Hugging Face *ForSequenceClassification checkpoint to ONNX."""

from __future__ import annotations

import inspect
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ModelError
from ...reranker import import_onnxruntime
from ...reranker.modeldir import (
    ModelDirConfig,
    write_model_config,
)
from ._common import (
    CHECK_PAIRS,
    HF_CONFIG_FILE,
    OPSET,
    ST_CONFIG_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    _check_target,
    _describe,
    _head,
    _import_export_deps,
    _install_file,
    _read_json,
    logger,
)


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote, and how closely ONNX Runtime matches PyTorch."""

    model_dir: Path
    onnx_path: Path
    inputs: list[str]
    num_labels: int
    max_abs_diff: float  # largest |ONNX - PyTorch| logit over the built-in pairs
    config: ModelDirConfig


def _sample_batch(tokenizer_path: Path, pairs: Sequence[tuple[str, str]], max_length: int) -> dict[str, np.ndarray]:
    """Pairs tokenised and padded to one batch, as [batch, sequence] int64 arrays."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    pad_id = tokenizer.token_to_id("[PAD]")
    if pad_id is None:
        pad_id = tokenizer.token_to_id("<pad>") or 0
    tokenizer.enable_truncation(max_length, strategy="only_second")
    tokenizer.enable_padding(pad_id=pad_id)
    encodings = tokenizer.encode_batch(list(pairs))
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def export_model(
    hf_dir: Path,
    out_dir: Path,
    *,
    opset: int = OPSET,
    atol: float = 1e-3,
    force: bool = False,
) -> ExportResult:
    """Export a local Hugging Face ``*ForSequenceClassification`` checkpoint to a model directory.

    Writes ``model.onnx`` (inputs ``input_ids``, ``attention_mask`` and, where the model
    uses them, ``token_type_ids``, all int64 with dynamic batch and sequence axes; output
    ``logits`` [batch, num_labels]; opset ``opset``), ``tokenizer.json``, the checkpoint's
    ``config.json`` and ``es-rerank-model.json``. The ONNX file is then run with ONNX
    Runtime on the built-in pairs and must match PyTorch within ``atol``.

    Needs the ``export`` extra (torch, transformers), imported only here.

    Long on purpose: the export's steps (load, trace, check against PyTorch, write) in order, each checked before the next.
    """
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    hf_config = _read_json(hf_dir / HF_CONFIG_FILE)
    if hf_config is None:
        raise ModelError(f"{hf_dir} is not a Hugging Face checkpoint (no {HF_CONFIG_FILE})")
    architectures = hf_config.get("architectures") or []
    if architectures and not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        raise ModelError(
            f"{hf_dir} holds a {', '.join(architectures)} checkpoint; export needs a cross-encoder "
            "with a classification head (*ForSequenceClassification)"
        )
    _check_target(out_dir, force)
    torch, transformers = _import_export_deps()
    ort = import_onnxruntime()

    max_length, head, activation = _describe(
        hf_config,
        _read_json(hf_dir / TOKENIZER_CONFIG_FILE),
        _read_json(hf_dir / ST_CONFIG_FILE),
        origin=str(hf_dir),
    )

    with tempfile.TemporaryDirectory(prefix=".export-", dir=_mkdir(out_dir)) as tmp_name:
        tmp = Path(tmp_name)
        tokenizer_path = tmp / TOKENIZER_FILE
        if (hf_dir / TOKENIZER_FILE).is_file():
            shutil.copyfile(hf_dir / TOKENIZER_FILE, tokenizer_path)
        else:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
            if not getattr(tokenizer, "is_fast", False):
                raise ModelError(f"{hf_dir} has no tokenizer.json and no fast tokenizer to make one")
            tokenizer.backend_tokenizer.save(str(tokenizer_path))

        try:
            model = transformers.AutoModelForSequenceClassification.from_pretrained(
                str(hf_dir),
                attn_implementation="eager",  # plain ops: traceable, and what ORT fuses
            )
        except (TypeError, ValueError):
            model = transformers.AutoModelForSequenceClassification.from_pretrained(str(hf_dir))
        model = model.float().eval()
        num_labels = int(model.config.num_labels)
        head = _head(num_labels, str(hf_dir))

        accepts = inspect.signature(model.forward).parameters
        names = ["input_ids", "attention_mask"]
        if "token_type_ids" in accepts and int(getattr(model.config, "type_vocab_size", 0) or 0) >= 2:
            names.append("token_type_ids")

        class _Logits(torch.nn.Module):  # type: ignore[misc,name-defined]
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, *inputs: Any) -> Any:
                return self.inner(**dict(zip(names, inputs))).logits

        wrapper = _Logits(model).eval()
        sample_length = min(max_length or 128, 128)
        sample = _sample_batch(tokenizer_path, CHECK_PAIRS[:3], sample_length)  # rows of unequal length
        args = tuple(torch.from_numpy(sample[n]) for n in names)
        onnx_tmp = tmp / "model.onnx"
        kwargs: dict[str, Any] = {
            "input_names": names,
            "output_names": ["logits"],
            "dynamic_axes": {**{n: {0: "batch", 1: "sequence"} for n in names}, "logits": {0: "batch"}},
            "opset_version": opset,
        }
        if "dynamo" in inspect.signature(torch.onnx.export).parameters:
            kwargs["dynamo"] = False  # the TorchScript exporter: no onnxscript needed, graphs ORT fuses
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(wrapper, args, str(onnx_tmp), **kwargs)
        except Exception as exc:
            raise ModelError(f"cannot export {hf_dir} to ONNX: {type(exc).__name__}: {exc}") from None
        finally:
            wrapper.eval()  # the exporter puts back the mode it found; keep inference mode

        # Verify on other shapes than the traced ones: every pair in one batch, and one alone.
        session = ort.InferenceSession(str(onnx_tmp), providers=["CPUExecutionProvider"])
        worst = 0.0
        for pairs in (CHECK_PAIRS, CHECK_PAIRS[:1]):
            batch = _sample_batch(tokenizer_path, pairs, min(max_length or 256, 256))
            with torch.no_grad():
                expected = wrapper(*(torch.from_numpy(batch[n]) for n in names)).numpy()
            (got,) = session.run(["logits"], {n: batch[n] for n in names})
            if got.shape != expected.shape:
                raise ModelError(f"exported logits have shape {got.shape}, PyTorch gives {expected.shape}")
            worst = max(worst, float(np.max(np.abs(got - expected))))
        del session
        if worst > atol:
            raise ModelError(f"the exported model differs from PyTorch by {worst:.3g} (more than {atol:g})")

        for produced in sorted(tmp.iterdir()):
            os.replace(produced, out_dir / produced.name)
    _install_file(hf_dir / HF_CONFIG_FILE, out_dir / HF_CONFIG_FILE)
    source = {
        "type": "export",
        "path": str(hf_dir.resolve()),
        "architecture": architectures[0] if architectures else None,
        "opset": opset,
        "torch": str(torch.__version__),
        "transformers": str(transformers.__version__),
    }
    config = ModelDirConfig(max_length=max_length, head=head, activation=activation, source=source)
    write_model_config(out_dir, config)
    logger.info("exported %s to %s (inputs %s, max |diff| %.3g)", hf_dir, out_dir, ", ".join(names), worst)
    return ExportResult(out_dir, out_dir / "model.onnx", names, num_labels, worst, config)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
