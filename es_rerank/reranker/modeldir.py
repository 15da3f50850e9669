"""A model directory's own description: ``es-rerank-model.json``.

A model directory (what ``ModelSettings.path`` names) holds an ONNX cross-encoder,
its ``tokenizer.json`` and, when ``es-rerank model pull`` or ``export`` made it, a
small JSON file saying how to run the model::

    {
      "format": 1,
      "onnx_file": "model.onnx",
      "tokenizer_file": "tokenizer.json",
      "max_length": 512,
      "head": "single",
      "activation": "sigmoid",
      "source": {"type": "hub", "repo_id": "...", "revision": "main", "commit": "..."},
      "variants": {"model.int8.onnx": {"kind": "int8-dynamic", "from": "model.onnx"}}
    }

``max_length`` is what the model can take (its tokenizer's ``model_max_length`` and
position embeddings, capped at 512), not a speed setting; ``head`` is ``single`` (one
logit per pair) or ``two`` (not relevant, relevant) or ``auto``; ``activation`` is
what the model's authors apply to the logit for a calibrated score (``identity``,
``sigmoid``, ``softmax``), null when the checkpoint does not say. Scores used for
ranking are raw logits either way. Unknown keys are ignored, so newer writers stay
readable.

This module only reads and writes the file; the engine decides how to honour it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, get_args

from ..errors import ModelError

__all__ = [
    "MODEL_CONFIG_FILE",
    "MODEL_CONFIG_FORMAT",
    "ModelDirConfig",
    "Activation",
    "read_model_config",
    "write_model_config",
]

MODEL_CONFIG_FILE = "es-rerank-model.json"
MODEL_CONFIG_FORMAT = 1

Head = Literal["auto", "single", "two"]
Activation = Literal["identity", "sigmoid", "softmax"]

_HEADS: tuple[str, ...] = get_args(Head)
_ACTIVATIONS: tuple[str, ...] = get_args(Activation)
# The bounds ModelSettings.max_length accepts.
_MIN_LENGTH, _MAX_LENGTH = 8, 8192


@dataclass(frozen=True)
class ModelDirConfig:
    """What ``es-rerank-model.json`` says about the model in its directory."""

    onnx_file: str = "model.onnx"
    tokenizer_file: str = "tokenizer.json"
    max_length: int | None = None
    head: Head = "auto"
    activation: Activation | None = None
    # Where the model came from: {"type": "hub", "repo_id", "revision", "commit", "onnx_file"}
    # or {"type": "export", "path", ...}; informative only.
    source: Mapping[str, Any] = field(default_factory=dict)
    # Other ONNX files in the directory (optimised, fp16, int8), file name -> how it was made.
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to ``es-rerank-model.json``."""
        return {
            "format": MODEL_CONFIG_FORMAT,
            "onnx_file": self.onnx_file,
            "tokenizer_file": self.tokenizer_file,
            "max_length": self.max_length,
            "head": self.head,
            "activation": self.activation,
            "source": dict(self.source),
            "variants": {name: dict(info) for name, info in self.variants.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, origin: str = MODEL_CONFIG_FILE) -> ModelDirConfig:
        """Validate a parsed ``es-rerank-model.json``; a :class:`ModelError` lists every problem."""
        if not isinstance(data, Mapping):
            raise ModelError(f"{origin}: expected a JSON object, got {type(data).__name__}")
        fmt = data.get("format", MODEL_CONFIG_FORMAT)
        if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
            raise ModelError(f"{origin}: format must be a positive integer, got {fmt!r}")
        if fmt > MODEL_CONFIG_FORMAT:
            raise ModelError(
                f"{origin}: format {fmt} was written by a newer es-rerank "
                f"(this one reads format {MODEL_CONFIG_FORMAT}); upgrade es-rerank"
            )
        values: dict[str, Any] = {}
        problems: list[str] = []
        for name, kind in (("onnx_file", str), ("tokenizer_file", str), ("head", str)):
            if name in data:
                if not isinstance(data[name], kind):
                    problems.append(f"{name} must be a string, got {data[name]!r}")
                else:
                    values[name] = data[name]
        for name in ("max_length", "activation"):
            if name in data:
                values[name] = data[name]
        for name in ("source", "variants"):
            value = data.get(name)
            if value is None:
                continue
            if not isinstance(value, Mapping):
                problems.append(f"{name} must be an object, got {value!r}")
            elif name == "variants" and not all(isinstance(v, Mapping) for v in value.values()):
                problems.append("variants must map file names to objects")
            else:
                values[name] = value
        if not problems:
            try:
                return cls(**values)
            except ValueError as exc:
                problems.extend(str(exc).split("; "))
        raise ModelError(f"{origin}: invalid model config: " + "; ".join(problems))


def _relative_file(value: str) -> bool:
    """A plain file name or a path below the model directory (no absolute paths, no '..')."""
    if not value or "\\" in value:
        return False
    path = PurePosixPath(value)
    return not path.is_absolute() and ".." not in path.parts


def _problems(config: ModelDirConfig) -> list[str]:
    problems = []
    for name in ("onnx_file", "tokenizer_file"):
        value = getattr(config, name)
        if not isinstance(value, str) or not _relative_file(value):
            problems.append(f"{name} must be a file inside the model directory, got {value!r}")
    length = config.max_length
    if length is not None and (
        not isinstance(length, int) or isinstance(length, bool) or not _MIN_LENGTH <= length <= _MAX_LENGTH
    ):
        problems.append(f"max_length must be null or an integer from {_MIN_LENGTH} to {_MAX_LENGTH}, got {length!r}")
    if config.head not in _HEADS:
        problems.append(f"head must be one of {', '.join(_HEADS)}, got {config.head!r}")
    if config.activation is not None and config.activation not in _ACTIVATIONS:
        problems.append(f"activation must be null or one of {', '.join(_ACTIVATIONS)}, got {config.activation!r}")
    for name in config.variants:
        if not isinstance(name, str) or not _relative_file(name):
            problems.append(f"variant {name!r} must be a file inside the model directory")
    return problems


def _config_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path if path.suffix == ".json" and not path.is_dir() else path / MODEL_CONFIG_FILE


def read_model_config(path: str | os.PathLike[str]) -> ModelDirConfig | None:
    """The config of a model directory (or of the JSON file itself), or None when it has none.

    A directory without ``es-rerank-model.json`` (a model laid out by hand) gives None:
    the caller keeps its own settings. A file that exists but cannot be read, is not
    JSON or does not validate raises a :class:`ModelError` naming the file.
    """
    file = _config_path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ModelError(f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{file} is not valid JSON: {exc}") from None
    return ModelDirConfig.from_dict(data, origin=str(file))


def write_model_config(model_dir: str | os.PathLike[str], config: ModelDirConfig) -> Path:
    """Write ``model_dir/es-rerank-model.json`` atomically; returns its path."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / MODEL_CONFIG_FILE
    text = json.dumps(config.to_dict(), indent=2, sort_keys=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".es-rerank-model.", suffix=".tmp", dir=model_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the file is not a secret
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
