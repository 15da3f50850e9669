"""What the model tools share: file names, built-in check pairs, dependency imports,
reading a model directory, loading and comparing."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np

from ...errors import ModelError
from ...reranker import OnnxReranker, import_onnxruntime
from ...reranker.modeldir import (
    MODEL_CONFIG_FILE,
    Activation,
    ModelDirConfig,
    read_model_config,
    write_model_config,
)

logger = logging.getLogger("es_rerank.tools.models")


TOKENIZER_FILE = "tokenizer.json"


HF_CONFIG_FILE = "config.json"


TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


ST_CONFIG_FILE = "config_sentence_transformers.json"


# Where Hugging Face cross-encoder repositories keep their ONNX export, in order of preference.
DEFAULT_ONNX_FILES = ("onnx/model.onnx", "model.onnx")


OPSET = 17


MAX_LENGTH_CAP = 512


# Built-in (query, passage) pairs for `check` and for comparing a model with its variants:
# short, on-topic and off-topic, one empty passage and one that the tokenizer must truncate.
CHECK_PAIRS: tuple[tuple[str, str], ...] = (
    (
        "vitamin d deficiency and multiple sclerosis",
        "Vitamin D deficiency raises the risk of multiple sclerosis in young adults.",
    ),
    ("vitamin d deficiency and multiple sclerosis", "Football clubs spent record sums on transfers this summer."),
    (
        "vitamin d deficiency and multiple sclerosis",
        "multiple sclerosis risk factors include smoking, obesity and low vitamin d",
    ),
    ("vitamin d deficiency and multiple sclerosis", ""),
    (
        "how do vaccines train the immune system",
        "Vaccines expose the immune system to an antigen so that memory cells form.",
    ),
    ("how do vaccines train the immune system", "The harvest was good this year and the village celebrated. " * 40),
    (
        "how do vaccines train the immune system",
        "Antibodies made after vaccination recognise the pathogen on later exposure.",
    ),
    ("how do vaccines train the immune system", "Stock markets fell sharply on Monday."),
)


# Hugging Face model types whose position embeddings start after the padding index.
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text"}


_ACTIVATIONS: dict[str, Activation] = {"identity": "identity", "sigmoid": "sigmoid", "softmax": "softmax"}


def _import_hub() -> ModuleType:
    try:
        import huggingface_hub
    except ImportError:
        raise ModelError("huggingface_hub is not installed: pip install huggingface_hub") from None
    return huggingface_hub


def _import_onnx_tools(*, sympy: bool = False) -> ModuleType:
    """``onnx`` (ONNX Runtime's optimiser and quantiser need it), or a ModelError.

    ``sympy``: also require sympy, which ONNX Runtime's transformer optimiser and
    symbolic shape inference import.
    """
    import_onnxruntime()
    missing = []
    try:
        import onnx
    except ImportError:
        missing.append("onnx")
    if sympy:
        try:
            import sympy as _  # noqa: F401
        except ImportError:
            missing.append("sympy")
    if missing:
        raise ModelError(f"{' and '.join(missing)} not installed: pip install 'es-rerank[tools]'")
    return onnx


def _import_export_deps() -> tuple[ModuleType, ModuleType]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ModelError(
            f"model export needs PyTorch and transformers ({exc.name} is missing): pip install 'es-rerank[export]'"
        ) from None
    return torch, transformers


def _read_json(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None
    return data if isinstance(data, dict) else None


def _max_length(config: Mapping[str, Any] | None, tokenizer_config: Mapping[str, Any] | None) -> int | None:
    """What the model can take: tokenizer model_max_length and position embeddings, capped at 512."""
    found: list[int] = []
    if tokenizer_config:
        value = tokenizer_config.get("model_max_length")
        # transformers writes a huge sentinel (int(1e30)) when the length is unknown
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1_000_000:
            found.append(value)
    if config:
        value = config.get("max_position_embeddings")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            if config.get("model_type") in _OFFSET_POSITIONS:
                value -= int(config.get("pad_token_id") or 1) + 1
            found.append(value)
    if not found:
        return None
    length = min(min(found), MAX_LENGTH_CAP)
    return length if length >= 8 else None


def _num_labels(config: Mapping[str, Any] | None) -> int | None:
    if not config:
        return None
    value = config.get("num_labels")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    labels = config.get("id2label")
    return len(labels) if isinstance(labels, Mapping) and labels else None


def _head(num_labels: int | None, origin: str) -> Literal["auto", "single", "two"]:
    if num_labels is None:
        return "auto"
    if num_labels == 1:
        return "single"
    if num_labels == 2:
        return "two"
    raise ModelError(
        f"{origin} has {num_labels} labels; es-rerank reads cross-encoders with 1 (score) or 2 (not relevant, relevant)"
    )


def _activation(config: Mapping[str, Any] | None, st_config: Mapping[str, Any] | None) -> Activation | None:
    """The activation sentence-transformers applies, from whichever place its version wrote it.

    ``config_sentence_transformers.json`` ``activation_fn`` (recent), ``config.json``
    ``sentence_transformers.activation_fn`` (v4/v5) or ``sbert_ce_default_activation_function``
    (older); a dotted class path such as ``torch.nn.modules.activation.Sigmoid``.
    """
    candidates: list[Any] = []
    if st_config:
        candidates.append(st_config.get("activation_fn"))
    if config:
        st_section = config.get("sentence_transformers")
        if isinstance(st_section, Mapping):
            candidates.append(st_section.get("activation_fn"))
        candidates.append(config.get("sbert_ce_default_activation_function"))
    for value in candidates:
        if isinstance(value, str) and value:
            name = value.rsplit(".", 1)[-1].lower()
            if name in _ACTIVATIONS:
                return _ACTIVATIONS[name]
            logger.warning("activation %s is not one es-rerank knows; leaving activation unset", value)
            return None
    return None


def _describe(
    config: Mapping[str, Any] | None,
    tokenizer_config: Mapping[str, Any] | None,
    st_config: Mapping[str, Any] | None,
    *,
    origin: str,
) -> tuple[int | None, Literal["auto", "single", "two"], Activation | None]:
    return (
        _max_length(config, tokenizer_config),
        _head(_num_labels(config), origin),
        _activation(config, st_config),
    )


def _install_file(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through a temporary file, so a reader never sees half a file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_target(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ModelError(f"{out_dir} exists and is not a directory")
    if (out_dir / MODEL_CONFIG_FILE).exists() and not force:
        raise ModelError(f"{out_dir} already holds a model ({MODEL_CONFIG_FILE}); pass --force to replace it")


@dataclass(frozen=True)
class _ModelDir:
    path: Path
    onnx: Path
    tokenizer: Path
    config: ModelDirConfig | None

    @property
    def max_length(self) -> int:
        return self.config.max_length if self.config and self.config.max_length else 256

    @property
    def head(self) -> Literal["auto", "single", "two"]:
        return self.config.head if self.config else "auto"


def _open_model_dir(path: Path, onnx_file: str | None = None) -> _ModelDir:
    """A model directory's files, or one ModelError that says what is missing."""
    path = Path(path)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise ModelError(f"model directory {path} {what}")
    config = read_model_config(path)
    tokenizer = path / (config.tokenizer_file if config else TOKENIZER_FILE)
    if not tokenizer.is_file():
        raise ModelError(
            f"model directory {path} has no {tokenizer.name}: a model directory holds model.onnx, "
            f"tokenizer.json and {MODEL_CONFIG_FILE} (`es-rerank model pull` or `export` makes one)"
        )
    name = onnx_file or (config.onnx_file if config else "model.onnx")
    onnx_path = path / name
    if not onnx_path.is_file():
        present = sorted(p.name for p in path.glob("*.onnx"))
        raise ModelError(
            f"model directory {path} has no {name}"
            + (f" (ONNX files there: {', '.join(present)})" if present else " (and no other ONNX file)")
        )
    return _ModelDir(path, onnx_path, tokenizer, config)


def _load(
    name: str,
    onnx_path: Path,
    tokenizer: Path,
    *,
    max_length: int,
    head: Literal["auto", "single", "two"] = "auto",
    providers: Sequence[str] = ("cpu",),
    caches: bool = True,
) -> OnnxReranker:
    # Timed runs go without the score and token caches: a hit costs nothing, so it
    # would be counted as model speed.
    sizes = {} if caches else {"cache_size": 0, "token_cache_size": 0}
    try:
        return OnnxReranker(
            name,
            onnx_path,
            tokenizer,
            providers=providers,
            max_length=max_length,
            head=head,
            **sizes,  # type: ignore[arg-type]
        )
    except ValueError as exc:
        raise ModelError(f"model {name!r}: {exc}") from None


def _score_pairs(reranker: OnnxReranker, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """Scores in the order of ``pairs``, one ``score`` call per query (as the proxy calls it)."""
    out = np.empty(len(pairs), dtype=np.float32)
    by_query: dict[str, list[int]] = {}
    for index, (query, _) in enumerate(pairs):
        by_query.setdefault(query, []).append(index)
    for query, indices in by_query.items():
        out[indices] = reranker.score(query, [pairs[i][1] for i in indices])
    return out


def _same_order(pairs: Sequence[tuple[str, str]], a: np.ndarray, b: np.ndarray) -> bool:
    by_query: dict[str, list[int]] = {}
    for index, (query, _) in enumerate(pairs):
        by_query.setdefault(query, []).append(index)
    return all(
        list(np.argsort(-a[idx], kind="stable")) == list(np.argsort(-b[idx], kind="stable"))
        for idx in (np.array(i) for i in by_query.values())
    )


def _compare(md: _ModelDir, candidate: Path, reference: Path) -> float:
    """Largest |score difference| between two ONNX files of one model directory, on CPU."""
    scores = []
    for label, onnx_path in (("candidate", candidate), ("reference", reference)):
        with _load(label, onnx_path, md.tokenizer, max_length=md.max_length, head=md.head) as reranker:
            scores.append(_score_pairs(reranker, CHECK_PAIRS))
    return float(np.max(np.abs(scores[0] - scores[1])))


def _record_variant(md: _ModelDir, output: Path, info: dict[str, Any]) -> None:
    """Note a new ONNX file in es-rerank-model.json (writing one if the directory had none)."""
    config = read_model_config(md.path)
    if config is None:  # a directory laid out by hand: describe what it has
        main = "model.onnx" if (md.path / "model.onnx").is_file() else md.onnx.name
        config = ModelDirConfig(onnx_file=main)
    variants = {k: dict(v) for k, v in config.variants.items()}
    variants[output.name] = info
    write_model_config(md.path, replace(config, variants=variants))


QuantMode = Literal["dynamic"]
