"""A cross-encoder served by ONNX Runtime: one session per model, batched, off the event loop."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np

from ..errors import ModelError
from ._tokenize import INPUT_NAMES, PairTokenizer, iter_batches

if TYPE_CHECKING:
    from ..config import ModelSettings

__all__ = ["OnnxReranker", "import_onnxruntime", "resolve_providers", "physical_cores"]

logger = logging.getLogger("es_rerank.reranker")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

Head = Literal["auto", "single", "two"]

_INTEGER_TYPES: dict[str, np.dtype] = {"tensor(int64)": np.dtype(np.int64), "tensor(int32)": np.dtype(np.int32)}


def import_onnxruntime() -> ModuleType:
    """The ``onnxruntime`` module, or a :class:`ModelError` that says how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise ModelError(
            "onnxruntime is not installed: pip install 'es-rerank[cpu]' "
            "(or 'es-rerank[gpu]' on a CUDA machine)"
        ) from None
    return onnxruntime


def resolve_providers(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """ONNX Runtime provider names, in order, for what a config asks.

    ``auto`` means CUDA then CPU where ``CUDAExecutionProvider`` is available, else CPU.
    A name may be given in full (``CUDAExecutionProvider``) or short and in any case
    (``cuda``, ``cpu``). A name that is not available is an error that lists those that
    are, rather than ONNX Runtime's silent fallback. Duplicates are dropped; an empty
    request means ``auto``.
    """
    by_key: dict[str, str] = {}
    for name in available:
        by_key[name.lower()] = name
        by_key[name.lower().removesuffix("executionprovider")] = name
    resolved: list[str] = []
    for name in requested or ("auto",):
        if name.lower() == "auto":
            names = [CUDA, CPU] if CUDA in available else [CPU]
        elif name.lower() in by_key:
            names = [by_key[name.lower()]]
        else:
            raise ModelError(
                f"ONNX Runtime provider {name!r} is not available here; "
                f"available: {', '.join(available) or '(none)'} (or 'auto')"
            )
        resolved.extend(n for n in names if n not in resolved)
    return resolved


def _cgroup_cpus() -> int | None:
    """CPUs a cgroup v2 quota allows (``docker --cpus``), if one is set."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


@functools.cache
def physical_cores() -> int:
    """Physical cores this process may use (no hyper-threads), at least 1.

    Counts distinct (socket, core) pairs in /proc/cpuinfo, bounded by the CPUs the
    process is pinned to and by a cgroup CPU quota; falls back to ``os.cpu_count()``.
    """
    if hasattr(os, "sched_getaffinity"):
        logical = len(os.sched_getaffinity(0))
    else:
        logical = os.cpu_count() or 1
    cores = logical
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    pairs = set()
    socket = core = None
    for line in text.splitlines() + [""]:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            socket = value.strip()
        elif key == "core id":
            core = value.strip()
        elif not key:
            if core is not None:
                pairs.add((socket, core))
            socket = core = None
    if pairs:
        cores = min(cores, len(pairs))
    quota = _cgroup_cpus()
    if quota is not None:
        cores = min(cores, quota)
    return max(1, cores)


class OnnxReranker:
    """A cross-encoder in ONNX: tokenizer.json + model.onnx -> one score per passage.

    One ONNX Runtime session per model (thread-safe, shared by every request), with
    graph optimisations on and intra-op threads set to the physical cores. Scoring
    sorts pairs by token length, pads per batch and puts scores back in the caller's
    order. :meth:`ascore` runs :meth:`score` on this model's own single worker thread,
    so the event loop never waits on inference and requests for one model queue
    instead of fighting over the same cores.
    """

    def __init__(
        self,
        name: str,
        onnx_path: Path,
        tokenizer_path: Path,
        *,
        providers: Sequence[str] = ("auto",),
        max_length: int = 256,
        batch_size: int = 32,
        head: Head = "auto",
        intra_op_threads: int = 0,
    ) -> None:
        if head not in ("auto", "single", "two"):
            raise ValueError(f"head must be 'auto', 'single' or 'two', got {head!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if intra_op_threads < 0:
            raise ValueError(f"intra_op_threads must be 0 (physical cores) or more, got {intra_op_threads}")
        self.name = name
        self.onnx_path = Path(onnx_path)
        self.tokenizer_path = Path(tokenizer_path)
        for kind, path in (("ONNX", self.onnx_path), ("tokenizer", self.tokenizer_path)):
            if not path.is_file():
                raise ModelError(f"model {name!r}: {kind} file {path} does not exist")
        ort = import_onnxruntime()

        self._tokenizer = PairTokenizer(self.tokenizer_path)
        self.max_length = self._check_max_length(max_length)
        self._tokenizer.prepare(self.max_length)
        self.batch_size = batch_size
        self.intra_op_threads = intra_op_threads or physical_cores()

        requested = resolve_providers(providers, ort.get_available_providers())
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(
                str(self.onnx_path), sess_options=options, providers=requested
            )
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise ModelError(f"model {name!r}: cannot load {self.onnx_path}: {exc}") from None

        self._input_names, self._input_dtypes = self._check_inputs(session)
        self._output_name, last_dim = self._check_output(session)
        self.head: Head = self._resolve_head(head, last_dim)
        self._session: Any = session
        self.providers: list[str] = list(session.get_providers())
        self.provider: str = self.providers[0]
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"rerank-{name}")

        logger.info(
            "model %s loaded from %s on %s (intra-op threads %d, head %s, inputs %s)",
            name, self.onnx_path, self.provider, self.intra_op_threads, self.head,
            ", ".join(self._input_names),
        )  # fmt: skip
        if self.provider != requested[0]:
            logger.warning(
                "model %s: ONNX Runtime uses %s although %s was asked first",
                name, self.provider, requested[0],
            )  # fmt: skip

    @classmethod
    def from_settings(cls, name: str, settings: "ModelSettings") -> "OnnxReranker":
        """Load the model a config's ``models.<name>`` describes."""
        return cls(
            name,
            settings.path / settings.onnx_file,
            settings.path / settings.tokenizer_file,
            providers=settings.providers,
            max_length=settings.max_length,
            batch_size=settings.batch_size,
            head=settings.head,
            intra_op_threads=settings.intra_op_threads,
        )

    # -- loading checks -------------------------------------------------------------

    def _check_max_length(self, max_length: int) -> int:
        least = self._tokenizer.min_length()
        if max_length < least:
            raise ValueError(f"max_length must be at least {least}, got {max_length}")
        return max_length

    def _check_inputs(self, session: Any) -> tuple[list[str], dict[str, np.dtype]]:
        names: list[str] = []
        dtypes: dict[str, np.dtype] = {}
        for node in session.get_inputs():
            if node.name not in INPUT_NAMES:
                raise ModelError(
                    f"model {self.name!r}: input {node.name!r} of {self.onnx_path} is not one "
                    f"es-rerank can feed ({', '.join(INPUT_NAMES)})"
                )
            if node.type not in _INTEGER_TYPES:
                raise ModelError(
                    f"model {self.name!r}: input {node.name!r} is {node.type}, "
                    "expected tensor(int64) or tensor(int32)"
                )
            names.append(node.name)
            dtypes[node.name] = _INTEGER_TYPES[node.type]
        if "input_ids" not in names:
            raise ModelError(f"model {self.name!r}: {self.onnx_path} has no input_ids input")
        return names, dtypes

    def _check_output(self, session: Any) -> tuple[str, int | None]:
        outputs = session.get_outputs()
        output = next((o for o in outputs if o.name == "logits"), outputs[0])
        shape = list(output.shape or [])
        if len(shape) == 1:
            return output.name, 1  # [batch]: one score per pair
        if len(shape) != 2:
            raise ModelError(
                f"model {self.name!r}: output {output.name!r} has shape {shape}, "
                "expected [batch, 1] or [batch, 2]"
            )
        last = shape[-1]
        return output.name, last if isinstance(last, int) else None

    def _resolve_head(self, head: Head, last_dim: int | None) -> Head:
        if last_dim is None:
            return head  # symbolic: decided from the first output when 'auto'
        if last_dim not in (1, 2):
            raise ModelError(
                f"model {self.name!r}: output {self._output_name!r} has {last_dim} logits "
                "per pair; es-rerank reads 1 (score) or 2 (not relevant, relevant)"
            )
        found: Head = "single" if last_dim == 1 else "two"
        if head != "auto" and head != found:
            raise ModelError(
                f"model {self.name!r}: head {head!r} was configured but "
                f"{self.onnx_path} gives {last_dim} logit(s) per pair (head {found!r})"
            )
        return found

    # -- scoring --------------------------------------------------------------------

    def _scores(self, logits: np.ndarray) -> np.ndarray:
        if logits.ndim == 1:
            return logits
        head = self._resolve_head(self.head, logits.shape[-1])
        if self.head == "auto":
            self.head = head  # the output's shape was symbolic until now
        if head == "two":
            # log-odds of the relevant class: monotone with softmax(logits)[:, 1]
            return logits[:, 1] - logits[:, 0]
        return logits[:, 0]

    def score(
        self,
        query: str,
        passages: Sequence[str],
        *,
        max_length: int | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """One float32 score per passage (higher = more relevant), in the order given.

        ``max_length`` and ``batch_size`` override the model's own for this call.
        """
        session = self._session
        if session is None:
            raise ModelError(f"model {self.name!r} is closed")
        passages = list(passages)
        if not passages:
            return np.empty(0, dtype=np.float32)
        max_length = self.max_length if max_length is None else self._check_max_length(max_length)
        if batch_size is None:
            batch_size = self.batch_size
        elif batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")

        encodings = self._tokenizer.encode_pairs(query, passages, max_length)
        out = np.empty(len(passages), dtype=np.float32)
        batches = iter_batches(
            encodings, batch_size, self._tokenizer.pad_id, self._input_names, self._input_dtypes
        )
        for positions, feeds in batches:
            try:
                (logits,) = session.run([self._output_name], feeds)
            except Exception as exc:
                raise ModelError(f"model {self.name!r}: inference failed: {exc}") from None
            out[positions] = self._scores(np.asarray(logits))
        return out

    async def ascore(
        self,
        query: str,
        passages: Sequence[str],
        *,
        max_length: int | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """:meth:`score` on this model's worker thread; the event loop stays free.

        Cancelling the awaiting task drops the call if it has not started yet.
        """
        if self._session is None:
            raise ModelError(f"model {self.name!r} is closed")
        call = functools.partial(
            self.score, query, list(passages), max_length=max_length, batch_size=batch_size
        )
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    # -- lifecycle ------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What /_rerank/models and the startup log show about this model."""
        return {
            "name": self.name,
            "provider": self.provider,
            "providers": list(self.providers),
            "status": "ready" if self._session is not None else "closed",
            "onnx": str(self.onnx_path),
            "tokenizer": str(self.tokenizer_path),
            "max_length": self.max_length,
            "batch_size": self.batch_size,
            "head": self.head,
            "inputs": list(self._input_names),
            "intra_op_threads": self.intra_op_threads,
        }

    def close(self) -> None:
        """Drop the session and stop the worker thread (calls not yet started are dropped)."""
        self._session = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "OnnxReranker":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<OnnxReranker {self.name!r} {self.provider} {self.onnx_path}>"
