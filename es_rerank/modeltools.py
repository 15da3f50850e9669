"""Model tooling: fetch, export, optimise, quantise and check cross-encoders for es-rerank.

Every command works on a *model directory* (what ``ModelSettings.path`` names)::

    model.onnx             the cross-encoder (inputs input_ids, attention_mask[, token_type_ids];
                           output logits [batch, 1 or 2])
    model.opt.onnx         optional: ONNX Runtime transformer fusions (``optimize``)
    model.fp16.onnx        optional: fused and half precision, for CUDA (``optimize --fp16``)
    model.int8.onnx        optional: int8 dynamic quantisation, for CPU (``quantize``)
    tokenizer.json         the Hugging Face fast tokenizer
    config.json            optional: the Hugging Face config (heads and hidden size for ``optimize``)
    es-rerank-model.json   how to run it: max_length, head, activation, ONNX file, source

The typed functions (:func:`pull_model`, :func:`export_model`, :func:`optimize_model`,
:func:`quantize_model`, :func:`check_model`) do the work and return result objects;
the click group :data:`model` is a thin layer over them. Heavy dependencies are
imported only when a command needs them, and a missing one is a
:class:`~es_rerank.errors.ModelError` that names what to install.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any, Literal, Mapping, Sequence

import click
import numpy as np

from .errors import ModelError, RerankError
from .reranker import OnnxReranker, import_onnxruntime
from .reranker.modeldir import (
    MODEL_CONFIG_FILE,
    Activation,
    ModelDirConfig,
    read_model_config,
    write_model_config,
)
from .reranker.optimize import optimize_graph
from .reranker.quantize import INT8_RECIPE, TWO_GIB, quantize_dynamic_file

__all__ = [
    "model",
    "pull_model",
    "export_model",
    "optimize_model",
    "quantize_model",
    "check_model",
    "PullResult",
    "ExportResult",
    "OptimizeResult",
    "QuantizeResult",
    "CheckResult",
    "CHECK_PAIRS",
]

logger = logging.getLogger("es_rerank.modeltools")

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
    ("vitamin d deficiency and multiple sclerosis", "Vitamin D deficiency raises the risk of multiple sclerosis in young adults."),
    ("vitamin d deficiency and multiple sclerosis", "Football clubs spent record sums on transfers this summer."),
    ("vitamin d deficiency and multiple sclerosis", "multiple sclerosis risk factors include smoking, obesity and low vitamin d"),
    ("vitamin d deficiency and multiple sclerosis", ""),
    ("how do vaccines train the immune system", "Vaccines expose the immune system to an antigen so that memory cells form."),
    ("how do vaccines train the immune system", "The harvest was good this year and the village celebrated. " * 40),
    ("how do vaccines train the immune system", "Antibodies made after vaccination recognise the pathogen on later exposure."),
    ("how do vaccines train the immune system", "Stock markets fell sharply on Monday."),
)  # fmt: skip

# Hugging Face model types whose position embeddings start after the padding index.
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text"}
_ACTIVATIONS: dict[str, Activation] = {"identity": "identity", "sigmoid": "sigmoid", "softmax": "softmax"}


# -- results --------------------------------------------------------------------------


@dataclass(frozen=True)
class PullResult:
    """What :func:`pull_model` fetched and wrote."""

    model_dir: Path
    repo_id: str
    revision: str
    commit: str | None
    repo_onnx_file: str  # path of the ONNX file in the repository
    files: list[str]  # files written to model_dir
    config: ModelDirConfig


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote, and how closely ONNX Runtime matches PyTorch."""

    model_dir: Path
    onnx_path: Path
    inputs: list[str]
    num_labels: int
    max_abs_diff: float  # largest |ONNX - PyTorch| logit over the built-in pairs
    config: ModelDirConfig


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


@dataclass(frozen=True)
class CheckResult:
    """What :func:`check_model` measured."""

    onnx_path: Path
    provider: str
    providers: list[str]
    head: str
    max_length: int
    load_seconds: float
    latency_seconds: float  # median time to score every built-in pair once
    pairs: int
    scores: np.ndarray
    reference: Path | None = None
    reference_scores: np.ndarray | None = None
    max_abs_diff: float | None = None
    same_order: bool | None = None  # every query's passages ranked the same as the reference
    runs: int = field(default=0)
    cache_hits: int = 0  # score and token cache hits during the timed runs (0: every pair computed)

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / self.latency_seconds if self.latency_seconds > 0 else float("inf")


# -- shared helpers -------------------------------------------------------------------


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
            f"model export needs PyTorch and transformers ({exc.name} is missing): "
            "pip install 'es-rerank[export]'"
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
        f"{origin} has {num_labels} labels; es-rerank reads cross-encoders with 1 (score) "
        "or 2 (not relevant, relevant)"
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
    head: str = "auto",
    providers: Sequence[str] = ("cpu",),
    caches: bool = True,
) -> OnnxReranker:
    # Timed runs go without the score and token caches: a hit costs nothing, so it
    # would be counted as model speed.
    sizes = {} if caches else {"cache_size": 0, "token_cache_size": 0}
    try:
        return OnnxReranker(
            name, onnx_path, tokenizer, providers=providers, max_length=max_length, head=head, **sizes  # type: ignore[arg-type]
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


# -- pull -----------------------------------------------------------------------------


def _hub_errors() -> dict[str, type[BaseException]]:
    import importlib

    modules = []
    for name in ("huggingface_hub.errors", "huggingface_hub.utils"):  # errors: 0.23+; utils: older
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            pass
    names = (
        "RepositoryNotFoundError",
        "RevisionNotFoundError",
        "GatedRepoError",
        "EntryNotFoundError",
        "LocalEntryNotFoundError",
        "OfflineModeIsEnabled",
        "HfHubHTTPError",
    )
    found: dict[str, type[BaseException]] = {}
    for name in names:
        error = next((getattr(m, name) for m in modules if hasattr(m, name)), None)
        # A class that matches nothing, where an old huggingface_hub lacks one of them.
        found[name] = error if isinstance(error, type) else type(name, (Exception,), {})
    return found


def _commit_of(path: Path, filename: str) -> str | None:
    """The commit a cached file belongs to: ``.../snapshots/<commit>/<filename>``."""
    snapshot = path.parents[len(PurePosixPath(filename).parts) - 1]
    return snapshot.name if snapshot.parent.name == "snapshots" else None


def _pick_onnx(listing: Sequence[str], requested: str | None, repo_id: str) -> str:
    onnx_files = sorted(f for f in listing if f.endswith(".onnx"))
    if requested:
        if requested not in listing:
            raise ModelError(
                f"{repo_id} has no {requested}"
                + (f"; ONNX files there: {', '.join(onnx_files)}" if onnx_files else "; it has no ONNX file")
            )
        return requested
    for candidate in DEFAULT_ONNX_FILES:
        if candidate in listing:
            return candidate
    if len(onnx_files) == 1:
        return onnx_files[0]
    if onnx_files:
        raise ModelError(
            f"{repo_id} has several ONNX files and none is {' or '.join(DEFAULT_ONNX_FILES)}; "
            f"pick one with --onnx-file: {', '.join(onnx_files)}"
        )
    raise ModelError(
        f"{repo_id} has no ONNX file (looked for {', '.join(DEFAULT_ONNX_FILES)}); "
        "download the checkpoint and use `es-rerank model export` instead"
    )


def _data_files(listing: Sequence[str], onnx_file: str) -> list[str]:
    """External-data files saved beside an ONNX file (``model.onnx_data``, ``model.onnx.data``...)."""
    return sorted(f for f in listing if f != onnx_file and f.startswith((onnx_file + "_data", onnx_file + ".data")))


def pull_model(
    repo_id: str,
    *,
    revision: str | None = None,
    out_dir: Path | None = None,
    onnx_file: str | None = None,
    cache_dir: Path | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    force: bool = False,
) -> PullResult:
    """Fetch a cross-encoder's ONNX file and tokenizer.json from a Hugging Face repository.

    Files go through huggingface_hub's own cache (``HF_HOME`` / ``HF_HUB_CACHE``, or
    ``cache_dir``), so ``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE`` work as they do
    for any Hugging Face tool: offline, or when the Hub cannot be reached, a revision
    pulled before comes from the cache. The repository's ``config.json``,
    ``tokenizer_config.json`` and ``config_sentence_transformers.json`` (where present)
    give max_length, head and activation for ``es-rerank-model.json``.

    ``onnx_file`` is a path in the repository; by default ``onnx/model.onnx``, then
    ``model.onnx``. It keeps its file name in ``out_dir`` (default
    ``models/<owner>--<name>``), beside its external-data file if it has one.
    """
    hub = _import_hub()
    errors = _hub_errors()
    revision = revision or "main"
    out_dir = Path(out_dir) if out_dir is not None else Path("models") / repo_id.replace("/", "--")
    _check_target(out_dir, force)

    listing: list[str] | None = None
    commit: str | None = None
    try:
        info = hub.HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=revision)
        listing = [s.rfilename for s in (info.siblings or [])]
        commit = info.sha
    except errors["RevisionNotFoundError"]:
        raise ModelError(f"{repo_id} has no revision {revision!r}") from None
    except (errors["RepositoryNotFoundError"], errors["GatedRepoError"]) as exc:
        raise ModelError(
            f"repository {repo_id} not found or not accessible "
            f"({type(exc).__name__}; a private or gated one needs HF_TOKEN or --token)"
        ) from None
    except errors["OfflineModeIsEnabled"]:
        logger.info("offline mode (HF_HUB_OFFLINE): using the local Hugging Face cache")
    except Exception as exc:  # connection refused, timeouts, Hub errors: fall back to the cache
        logger.warning("cannot list %s (%s: %s); trying the local cache", repo_id, type(exc).__name__, exc)

    def fetch(filename: str, *, required: bool) -> Path | None:
        try:
            path = hub.hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=cache_dir,
                endpoint=endpoint,
                token=token,
            )
        except (errors["EntryNotFoundError"], errors["LocalEntryNotFoundError"]) as exc:
            if not required:
                return None
            where = " (not in the local cache, and the Hub is offline or unreachable)" if listing is None else ""
            raise ModelError(f"cannot fetch {filename} from {repo_id}@{revision}{where}: {exc}") from None
        except errors["RevisionNotFoundError"]:
            raise ModelError(f"{repo_id} has no revision {revision!r}") from None
        except (errors["RepositoryNotFoundError"], errors["GatedRepoError"]) as exc:
            raise ModelError(f"repository {repo_id} not found or not accessible ({type(exc).__name__})") from None
        except errors["HfHubHTTPError"] as exc:
            raise ModelError(f"cannot fetch {filename} from {repo_id}: {exc}") from None
        return Path(path)

    if listing is not None:
        repo_onnx = _pick_onnx(listing, onnx_file, repo_id)
        onnx_dir = str(PurePosixPath(repo_onnx).parent)
        tokenizer_candidates = [TOKENIZER_FILE] + ([f"{onnx_dir}/{TOKENIZER_FILE}"] if onnx_dir != "." else [])
        tokenizer_name = next((t for t in tokenizer_candidates if t in listing), None)
        if tokenizer_name is None:
            raise ModelError(
                f"{repo_id} has no tokenizer.json (es-rerank needs a fast tokenizer's tokenizer.json); "
                "download the checkpoint and use `es-rerank model export` instead"
            )
        data_names = _data_files(listing, repo_onnx)
        optional = [n for n in (HF_CONFIG_FILE, TOKENIZER_CONFIG_FILE, ST_CONFIG_FILE) if n in listing]
        onnx_path = fetch(repo_onnx, required=True)
        tokenizer_path = fetch(tokenizer_name, required=True)
    else:
        # No listing: try the usual names against the cache, as huggingface_hub does offline.
        candidates = [onnx_file] if onnx_file else list(DEFAULT_ONNX_FILES)
        onnx_path = None
        repo_onnx = candidates[0]
        for candidate in candidates:
            onnx_path = fetch(candidate, required=candidate == candidates[-1])
            if onnx_path is not None:
                repo_onnx = candidate
                break
        onnx_dir = str(PurePosixPath(repo_onnx).parent)
        tokenizer_name = TOKENIZER_FILE
        tokenizer_path = fetch(tokenizer_name, required=onnx_dir == ".")
        if tokenizer_path is None:
            tokenizer_name = f"{onnx_dir}/{TOKENIZER_FILE}"
            tokenizer_path = fetch(tokenizer_name, required=True)
        data_names = [repo_onnx + "_data", repo_onnx + ".data"]
        optional = [HF_CONFIG_FILE, TOKENIZER_CONFIG_FILE, ST_CONFIG_FILE]
    assert onnx_path is not None and tokenizer_path is not None

    data_paths = {name: fetch(name, required=listing is not None) for name in data_names}
    extras = {name: fetch(name, required=False) for name in optional}

    fetched = [(repo_onnx, onnx_path), (tokenizer_name, tokenizer_path)]
    fetched += [(n, p) for n, p in {**data_paths, **extras}.items() if p is not None]
    commits = {c for c in (_commit_of(p, n) for n, p in fetched) if c}
    if len(commits) > 1 or (commit and commits and commits != {commit}):
        raise ModelError(f"{repo_id}@{revision} changed while it was being pulled; run the pull again")
    commit = commit or (commits.pop() if commits else None)

    hf_config = _read_json(extras.get(HF_CONFIG_FILE))
    tok_config = _read_json(extras.get(TOKENIZER_CONFIG_FILE))
    st_config = _read_json(extras.get(ST_CONFIG_FILE))
    max_length, head, activation = _describe(hf_config, tok_config, st_config, origin=repo_id)

    onnx_name = PurePosixPath(repo_onnx).name
    written = [onnx_name, TOKENIZER_FILE]
    out_dir.mkdir(parents=True, exist_ok=True)
    _install_file(onnx_path, out_dir / onnx_name)
    for name, path in data_paths.items():
        if path is not None:
            _install_file(path, out_dir / PurePosixPath(name).name)
            written.append(PurePosixPath(name).name)
    _install_file(tokenizer_path, out_dir / TOKENIZER_FILE)
    if extras.get(HF_CONFIG_FILE):
        _install_file(extras[HF_CONFIG_FILE], out_dir / HF_CONFIG_FILE)  # type: ignore[arg-type]
        written.append(HF_CONFIG_FILE)
    source = {"type": "hub", "repo_id": repo_id, "revision": revision, "commit": commit, "onnx_file": repo_onnx}
    config = ModelDirConfig(
        onnx_file=onnx_name, max_length=max_length, head=head, activation=activation, source=source
    )
    write_model_config(out_dir, config)
    written.append(MODEL_CONFIG_FILE)
    logger.info("pulled %s@%s (%s) into %s", repo_id, revision, commit, out_dir)
    return PullResult(out_dir, repo_id, revision, commit, repo_onnx, written, config)


# -- export ---------------------------------------------------------------------------


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
                str(hf_dir), attn_implementation="eager"  # plain ops: traceable, and what ORT fuses
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


# -- optimize -------------------------------------------------------------------------


def _heads_and_hidden(md: _ModelDir, num_heads: int | None, hidden_size: int | None) -> tuple[int, int]:
    """From the arguments, else the directory's config.json, else 0 (ORT reads them from the graph)."""
    hf_config = _read_json(md.path / HF_CONFIG_FILE) or {}
    heads = num_heads if num_heads is not None else hf_config.get("num_attention_heads", 0)
    hidden = hidden_size if hidden_size is not None else hf_config.get("hidden_size", 0)
    return int(heads or 0), int(hidden or 0)


def _fuse(source: Path, *, model_type: str, num_heads: int, hidden_size: int, use_gpu: bool) -> Any:
    """es-rerank's attention fusion, then ONNX Runtime's Python transformer fusions
    (``opt_level=0``): what the engine does at load (:mod:`es_rerank.reranker.optimize`).

    ONNX Runtime's own graph pass (``opt_level`` 1+) is left to session creation, which
    OnnxReranker does with every optimisation on: saved, it would tie the file to this
    machine's hardware, it changed no fusion on the models tried (tiny and MiniLM BERTs),
    and ONNX Runtime 1.32 imports torch to run it.
    """
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = onnx.load(str(source))
            return optimize_graph(model, num_heads=num_heads, use_gpu=use_gpu, model_type=model_type, hidden_size=hidden_size)
        except Exception as exc:
            raise ModelError(f"cannot optimise {source}: {type(exc).__name__}: {exc}") from None


def _save(onnx_model: Any, path: Path) -> None:
    size = onnx_model.model.ByteSize()
    tmp = path.with_name(f".{path.name}.tmp")
    onnx_model.save_model_to_file(str(tmp), use_external_data_format=size >= TWO_GIB)
    os.replace(tmp, path)


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

    fused = _fuse(md.onnx, model_type=model_type, num_heads=heads, hidden_size=hidden, use_gpu=False)
    stats = {k: int(v) for k, v in (fused.get_fused_operator_statistics() or {}).items() if v}
    opt_path = md.path / output
    _save(fused, opt_path)
    diff = _compare(md, opt_path, md.onnx)
    _record_variant(md, opt_path, {"kind": "optimized", "from": md.onnx.name, "model_type": model_type, "fused": stats})

    fp16_path: Path | None = None
    fp16_diff: float | None = None
    if fp16:
        half = _fuse(md.onnx, model_type=model_type, num_heads=heads, hidden_size=hidden, use_gpu=True)
        half.convert_float_to_float16(keep_io_types=True)
        fp16_path = md.path / fp16_output
        _save(half, fp16_path)
        try:
            fp16_diff = _compare(md, fp16_path, md.onnx)
        except ModelError as exc:  # many fused fp16 kernels exist for CUDA only
            logger.info("the fp16 model does not run on this machine's CPU provider: %s", exc)
        _record_variant(md, fp16_path, {"kind": "fp16", "from": md.onnx.name, "model_type": model_type, "for": "cuda"})
    return OptimizeResult(md.path, md.onnx, opt_path, fp16_path, stats, diff, fp16_diff)


# -- quantize -------------------------------------------------------------------------


QuantMode = Literal["dynamic"]


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
    """
    if mode != "dynamic":
        raise ModelError(f"quantisation mode {mode!r} is not supported (supported: dynamic)")
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
            fused = _fuse(md.onnx, model_type=model_type, num_heads=heads, hidden_size=hidden, use_gpu=False)
            source = Path(tmp_name) / "fused.onnx"
            _save(fused, source)
        if preprocess:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            prepared = Path(tmp_name) / "prepared.onnx"
            try:
                quant_pre_process(str(source), str(prepared), skip_optimization=fusions_first)
            except Exception as exc:
                raise ModelError(f"cannot prepare {source.name} for quantisation: {type(exc).__name__}: {exc}") from None
            source = prepared
        tmp_out = Path(tmp_name) / out_path.name
        quantize_dynamic_file(
            source, tmp_out, fused=fusions_first, per_channel=per_channel, reduce_range=reduce_range,
            op_types=op_types, weight_type=weight_type, nodes_to_exclude=nodes_to_exclude, extra_options=dict(extra_options or {}),
        )  # fmt: skip
        os.replace(tmp_out, out_path)
    diff = _compare(md, out_path, md.onnx)
    _record_variant(md, out_path, {"kind": "int8-" + mode, "from": md.onnx.name, **options})
    return QuantizeResult(md.path, md.onnx, out_path, options, md.onnx.stat().st_size, out_path.stat().st_size, diff)


# -- check ----------------------------------------------------------------------------


def check_model(
    model_dir: Path,
    *,
    onnx_file: str | None = None,
    reference: Path | None = None,
    providers: Sequence[str] = ("auto",),
    repeats: int = 5,
    pairs: Sequence[tuple[str, str]] = CHECK_PAIRS,
) -> CheckResult:
    """Load a model directory with es-rerank's own :class:`OnnxReranker` and score ``pairs``.

    Measures the load time and the median time (over ``repeats`` runs after one warm-up)
    to score every pair, one ``score`` call per query. The model is loaded without its
    score and token caches, and each timed run asks distinct queries (the run's number
    is appended), so every pair is tokenized and run through the model: pairs/s is the
    model's, not a cache's. ``reference`` is another model
    directory (its own ONNX file and tokenizer) or an ONNX file (scored with this
    directory's tokenizer); its scores give ``max_abs_diff`` and ``same_order``.
    """
    if repeats < 1:
        raise ModelError(f"repeats must be at least 1, got {repeats}")
    md = _open_model_dir(model_dir, onnx_file)
    start = time.perf_counter()
    reranker = _load(
        "model", md.onnx, md.tokenizer, max_length=md.max_length, head=md.head, providers=providers, caches=False
    )
    load_seconds = time.perf_counter() - start
    with reranker:
        scores = _score_pairs(reranker, pairs)  # warm-up
        hits_before = reranker.cache.hits + reranker.token_cache_info()["hits"]
        timings = []
        for run in range(1, repeats + 1):
            distinct = [(f"{query} {run}", passage) for query, passage in pairs]
            start = time.perf_counter()
            _score_pairs(reranker, distinct)
            timings.append(time.perf_counter() - start)
        hits = reranker.cache.hits + reranker.token_cache_info()["hits"] - hits_before
        provider, used, head, max_length = reranker.provider, list(reranker.providers), reranker.head, reranker.max_length

    result = CheckResult(
        md.onnx, provider, used, head, max_length, load_seconds, statistics.median(timings), len(pairs), scores,
        runs=repeats, cache_hits=hits,
    )
    if reference is None:
        return result
    reference = Path(reference)
    if reference.is_dir():
        ref = _open_model_dir(reference)
        ref_onnx, ref_tokenizer, ref_head = ref.onnx, ref.tokenizer, ref.head
    elif reference.is_file():
        ref_onnx, ref_tokenizer, ref_head = reference, md.tokenizer, "auto"
    else:
        raise ModelError(f"reference {reference} does not exist")
    with _load("reference", ref_onnx, ref_tokenizer, max_length=max_length, head=ref_head, providers=providers) as ref_model:
        ref_scores = _score_pairs(ref_model, pairs)
    return replace(
        result,
        reference=ref_onnx,
        reference_scores=ref_scores,
        max_abs_diff=float(np.max(np.abs(scores - ref_scores))),
        same_order=_same_order(pairs, scores, ref_scores),
    )


# -- CLI ------------------------------------------------------------------------------


def _fail(exc: RerankError) -> None:
    click.echo(f"error: {exc.reason}", err=True)
    sys.exit(1)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@click.group("model", context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def model() -> None:
    """Fetch, export, optimise, quantise and check cross-encoder model directories.

    A model directory holds model.onnx (and variants), tokenizer.json and
    es-rerank-model.json; a config's models.<name>.path names one.
    """


@model.command("pull")
@click.argument("repo_id")
@click.option("--revision", default="main", help="branch, tag or commit of the repository")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="model directory to write [default: models/<owner>--<name>]")
@click.option("--onnx-file", default=None, help="ONNX file in the repository [default: onnx/model.onnx, then model.onnx]")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Hugging Face cache [default: HF_HUB_CACHE]")
@click.option("--endpoint", default=None, help="Hub URL [default: HF_ENDPOINT or https://huggingface.co]")
@click.option("--token", default=None, help="Hub token [default: HF_TOKEN or the saved login]")
@click.option("--force", is_flag=True, help="replace a model already in the directory")
def pull_command(repo_id: str, revision: str, out_dir: Path | None, onnx_file: str | None,
                 cache_dir: Path | None, endpoint: str | None, token: str | None, force: bool) -> None:
    """Fetch REPO_ID's ONNX file and tokenizer.json from the Hugging Face Hub."""  # fmt: skip
    try:
        result = pull_model(
            repo_id, revision=revision, out_dir=out_dir, onnx_file=onnx_file,
            cache_dir=cache_dir, endpoint=endpoint, token=token, force=force,
        )  # fmt: skip
    except RerankError as exc:
        _fail(exc)
    c = result.config
    click.echo(
        f"pulled {result.repo_id}@{result.revision} (commit {result.commit or 'unknown'}) "
        f"into {result.model_dir}: {', '.join(result.files)}\n"
        f"onnx {result.repo_onnx_file} -> {c.onnx_file}; max_length {c.max_length}, head {c.head}, "
        f"activation {c.activation}"
    )


@model.command("export")
@click.argument("hf_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--opset", default=OPSET, type=int, help="ONNX opset")
@click.option("--atol", default=1e-3, type=float, help="largest |ONNX - PyTorch| logit accepted")
@click.option("--force", is_flag=True, help="replace a model already in OUT_DIR")
def export_command(hf_dir: Path, out_dir: Path, opset: int, atol: float, force: bool) -> None:
    """Export a local Hugging Face *ForSequenceClassification checkpoint HF_DIR to ONNX in OUT_DIR.

    Needs the export extra: pip install 'es-rerank[export]'.
    """
    try:
        result = export_model(hf_dir, out_dir, opset=opset, atol=atol, force=force)
    except RerankError as exc:
        _fail(exc)
    c = result.config
    click.echo(
        f"exported {hf_dir} to {result.onnx_path} (inputs {', '.join(result.inputs)}; "
        f"{result.num_labels} logit(s); max |ONNX - PyTorch| {result.max_abs_diff:.2g})\n"
        f"max_length {c.max_length}, head {c.head}, activation {c.activation}"
    )


@model.command("optimize")
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--fp16", is_flag=True, help="also write model.fp16.onnx (fused for GPU, half precision)")
@click.option("--onnx-file", default=None, help="ONNX file to optimise [default: the directory's]")
@click.option("--model-type", default="bert", help="ONNX Runtime optimiser model type")
@click.option("--num-heads", default=None, type=int, help="attention heads [default: config.json or the graph]")
@click.option("--hidden-size", default=None, type=int, help="hidden size [default: config.json or the graph]")
def optimize_command(model_dir: Path, fp16: bool, onnx_file: str | None, model_type: str,
                     num_heads: int | None, hidden_size: int | None) -> None:
    """ONNX Runtime transformer fusions: writes model.opt.onnx (and model.fp16.onnx)."""  # fmt: skip
    try:
        result = optimize_model(
            model_dir, onnx_file=onnx_file, fp16=fp16, model_type=model_type,
            num_heads=num_heads, hidden_size=hidden_size,
        )  # fmt: skip
    except RerankError as exc:
        _fail(exc)
    fused = ", ".join(f"{k} {v}" for k, v in sorted(result.fused_ops.items())) or "none"
    click.echo(f"wrote {result.optimized} (fused: {fused}; max |diff| {result.max_abs_diff:.3g} on CPU)")
    if result.fp16 is not None:
        note = (
            f"max |diff| {result.fp16_max_abs_diff:.3g} on CPU"
            if result.fp16_max_abs_diff is not None
            else "for CUDA; check it there with `es-rerank model check --onnx-file model.fp16.onnx`"
        )
        click.echo(f"wrote {result.fp16} ({note})")


@model.command("quantize")
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--mode", default="dynamic", type=click.Choice(["dynamic"]), help="quantisation method")
@click.option("--onnx-file", default=None, help="ONNX file to quantise [default: the directory's]")
# The defaults are es-rerank's measured recipe (reranker.quantize.INT8_RECIPE).
@click.option("--per-channel/--per-tensor", default=INT8_RECIPE["per_channel"], show_default=True, help="one weight scale per output channel, or one per tensor")
@click.option("--reduce-range", is_flag=True, help="7-bit weights (for CPUs without VNNI)")
@click.option("--fusions-first/--no-fusions", default=INT8_RECIPE["fuse"], show_default=True, help="apply transformer fusions before quantising")
@click.option("--preprocess", is_flag=True, help="run ONNX Runtime's quant_pre_process first")
@click.option("--op-types", default=",".join(INT8_RECIPE["op_types"]), show_default=True, help="comma-separated operator types to quantise; 'all' = every one ONNX Runtime can")
@click.option("--weight-type", default="qint8", type=click.Choice(["qint8", "quint8"]))
@click.option("--output", default="model.int8.onnx", help="file name written in MODEL_DIR")
def quantize_command(model_dir: Path, mode: str, onnx_file: str | None, per_channel: bool, reduce_range: bool,
                     fusions_first: bool, preprocess: bool, op_types: str | None, weight_type: str,
                     output: str) -> None:
    """int8 quantisation for CPU: writes model.int8.onnx."""  # fmt: skip
    types = [t.strip() for t in op_types.split(",") if t.strip()] if op_types and op_types != "all" else None
    try:
        result = quantize_model(
            model_dir, mode=mode, onnx_file=onnx_file, per_channel=per_channel,  # type: ignore[arg-type]
            reduce_range=reduce_range, fusions_first=fusions_first, preprocess=preprocess, op_types=types,
            weight_type=weight_type, output=output,  # type: ignore[arg-type]
        )  # fmt: skip
    except RerankError as exc:
        _fail(exc)
    click.echo(
        f"wrote {result.output} ({_mb(result.source_bytes)} -> {_mb(result.output_bytes)}; "
        f"max |diff| {result.max_abs_diff:.3g} vs {result.source.name} on CPU)"
    )


@model.command("check")
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--reference", type=click.Path(path_type=Path), default=None,
              help="model directory or ONNX file to compare scores with")
@click.option("--onnx-file", default=None, help="ONNX file in MODEL_DIR [default: the directory's]")
@click.option("--provider", "providers", multiple=True, default=("auto",),
              help="ONNX Runtime provider(s), in order (auto, cpu, cuda...)")
@click.option("--repeats", default=5, type=click.IntRange(min=1), help="timed runs after one warm-up")
@click.option("--tolerance", default=None, type=float,
              help="exit non-zero when max |diff| to the reference is larger")
def check_command(model_dir: Path, reference: Path | None, onnx_file: str | None, providers: tuple[str, ...],
                  repeats: int, tolerance: float | None) -> None:
    """Load MODEL_DIR as the proxy does, score built-in pairs, report provider, latency and drift."""  # fmt: skip
    try:
        result = check_model(model_dir, onnx_file=onnx_file, reference=reference, providers=providers, repeats=repeats)
    except RerankError as exc:
        _fail(exc)
    click.echo(f"model: {result.onnx_path} (head {result.head}, max_length {result.max_length})")
    click.echo(f"provider: {result.provider} (session providers: {', '.join(result.providers)})")
    click.echo(
        f"latency: load {result.load_seconds * 1000:.0f} ms; {result.pairs} pairs in "
        f"{result.latency_seconds * 1000:.1f} ms median of {result.runs} ({result.pairs_per_second:.0f} pairs/s, "
        f"distinct pairs, no score or token cache)"
    )
    click.echo("scores: " + " ".join(f"{s:.4f}" for s in result.scores))
    if result.reference is not None:
        click.echo(
            f"reference: {result.reference}: max |diff| {result.max_abs_diff:.4g}; "
            f"same order: {'yes' if result.same_order else 'no'}"
        )
        if tolerance is not None and result.max_abs_diff is not None and result.max_abs_diff > tolerance:
            click.echo(f"error: max |diff| {result.max_abs_diff:.4g} is above the tolerance {tolerance:g}", err=True)
            sys.exit(1)


if __name__ == "__main__":  # python -m es_rerank.modeltools ... (before the lead wires `es-rerank model`)
    model()
