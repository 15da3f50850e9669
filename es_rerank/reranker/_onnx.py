"""A cross-encoder served by ONNX Runtime: one session per model, batched, off the event loop."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import ModelError, ModelOptionError, ModelOverloadedError
from ._batcher import Batcher, Job, Overloaded
from ._cache import ScoreCache
from ._stats import ScoreStats
from ._tokenize import INPUT_NAMES, Encoded, Pair, PairTokenizer, make_feeds
from .optimize import CPU_DISABLED_OPTIMIZERS

if TYPE_CHECKING:
    from ..config import ModelSettings

__all__ = ["OnnxReranker", "import_onnxruntime", "resolve_providers", "physical_cores"]

logger = logging.getLogger("es_rerank.reranker")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# Default token budget of one model run (rows x padded width) per provider.
CPU_BATCH_TOKENS = 1024
CUDA_BATCH_TOKENS = 65536

Head = Literal["auto", "single", "two"]

_INTEGER_TYPES: dict[str, np.dtype] = {"tensor(int64)": np.dtype(np.int64), "tensor(int32)": np.dtype(np.int32)}


def import_onnxruntime() -> ModuleType:
    """The ``onnxruntime`` module, or a :class:`ModelError` that says how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise ModelError(
            "onnxruntime is not installed: pip install 'es-rerank[cpu]' (or 'es-rerank[gpu]' on a CUDA machine)"
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


class _Call:
    """One score call between its preparation (cache, tokenize) and its finish."""

    __slots__ = ("out", "keys", "owners", "job")

    def __init__(self, out: np.ndarray, keys: list[Any], owners: list[list[int]], job: Job | None) -> None:
        self.out = out  # scores in the caller's order; cache hits already in
        self.keys = keys  # cache key of each pair the model scores
        self.owners = owners  # for each of those pairs, the caller's positions it answers
        self.job = job


class _Ticket:
    """Who counts an ``ascore`` call out of the batcher's expected arrivals, and whether its
    caller still waits: ``new`` -> ``running`` (tokenizing) -> ``done``, or ``abandoned``."""

    __slots__ = ("lock", "state", "future")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state = "new"
        self.future: Any = None


def _short(provider: str) -> str:
    return provider.lower().removesuffix("executionprovider")


def cuda_warmup_batches(
    full: Encoded, pad_multiple: int, batch_size: int, max_batch_tokens: int
) -> list[tuple[list[Pair], int]]:
    """The batches a CUDA warm-up runs, cut from ``full`` (a pair of max_length tokens).

    Every padded width, at a spread of row counts up to what ``batch_size`` and
    ``max_batch_tokens`` allow; at each, once with all rows full and once with rows of
    spread lengths (padded within the width). Requests' batches are padded, and the
    CUDA attention kernels may take another path with padding than without, loaded the
    first time it is taken. Only shapes and masks matter here, not the tokens.
    """
    ids, types = np.asarray(full.ids), np.asarray(full.type_ids)
    batches: list[tuple[list[Pair], int]] = []
    widths = sorted({*range(pad_multiple, len(ids) + 1, pad_multiple), len(ids)})
    for width in widths:
        most = max(1, min(batch_size, max_batch_tokens // width))
        for rows in sorted({most, *(2**i for i in range(most.bit_length()) if 2**i < most)}):
            batches.append(([Pair(ids[:width], types[:width])] * rows, width))
            if rows > 1:  # the first row full, the others from the width down to a quarter of it
                lengths = np.linspace(width, max(1, width // 4), rows).astype(int)
                batches.append(([Pair(ids[:n], types[:n]) for n in lengths], width))
    return batches


class OnnxReranker:
    """A cross-encoder in ONNX: tokenizer.json + model.onnx -> one score per passage.

    One ONNX Runtime session per model (thread-safe, shared by every request), with
    graph optimisations on and intra-op threads set to the physical cores. A call
    first looks its passages up in an LRU score cache (model, max length, query text,
    hash of the passage text), then tokenizes the rest (``encode_batch_fast``,
    ``only_second`` truncation) off the event loop, and hands the pairs to the
    model's batcher thread, which sorts them by length, pads each run to a multiple of
    8 and sizes runs by a token budget, merging pairs of concurrent calls into one
    run when they arrive within ``batch_wait_ms`` of each other. Scores come back in
    the caller's order.

    ``variants`` maps a provider (``cpu``, ``cuda``) to another ONNX file of the same
    model used when that provider runs it (an int8 file on CPU, fp16 on CUDA). On
    CUDA the session is fed through IO binding and warmed up at load at every padded
    width, so requests pay no set-up cost. With ``fuse_at_load`` a
    graph whose attention is not fused (recent transformers exports) is fused in memory
    before the session is made (:func:`~es_rerank.reranker.optimize.optimized_model_bytes`:
    one Attention node per layer, layer norms, BiasGelu); an already fused or
    quantised file is loaded as it is.

    ``clock`` is the time deadlines and the batcher's rate are read off, and
    ``wrap_session`` wraps the ONNX Runtime session after the warm-up: both for tests
    (a fake clock, a slowed device).
    """

    def __init__(
        self,
        name: str,
        onnx_path: Path,
        tokenizer_path: Path,
        *,
        providers: Sequence[str] = ("auto",),
        cuda_options: Mapping[str, Any] | None = None,
        max_length: int = 256,
        batch_size: int = 32,
        head: Head = "auto",
        intra_op_threads: int = 0,
        max_batch_tokens: int | None = None,
        batch_wait_ms: float = 2.0,
        cache_size: int = 10_000,
        token_cache_size: int = 20_000,
        variants: Mapping[str, Path] | None = None,
        warmup: bool = True,
        pad_multiple: int = 8,
        fuse_at_load: bool = True,
        allow_spinning: bool = False,
        clock: Callable[[], float] = time.perf_counter,
        wrap_session: Callable[[Any], Any] | None = None,
    ) -> None:
        """Long on purpose: every engine option is checked in one place, then the session,
        tokenizer, caches and batcher are built in the order they depend on each other."""
        if head not in ("auto", "single", "two"):
            raise ModelOptionError(f"head must be 'auto', 'single' or 'two', got {head!r}")
        if batch_size < 1:
            raise ModelOptionError(f"batch_size must be at least 1, got {batch_size}")
        if intra_op_threads < 0:
            raise ModelOptionError(f"intra_op_threads must be 0 (physical cores) or more, got {intra_op_threads}")
        if max_batch_tokens is not None and max_batch_tokens < 1:
            raise ModelOptionError(f"max_batch_tokens must be at least 1, got {max_batch_tokens}")
        if batch_wait_ms < 0:
            raise ModelOptionError(f"batch_wait_ms must be 0 or more, got {batch_wait_ms}")
        if pad_multiple < 1:
            raise ModelOptionError(f"pad_multiple must be at least 1, got {pad_multiple}")
        self.name = name
        self.tokenizer_path = Path(tokenizer_path)
        ort = import_onnxruntime()
        requested = resolve_providers(providers, ort.get_available_providers())
        if requested[0] == CUDA and hasattr(ort, "preload_dlls"):
            try:  # CUDA/cuDNN from the nvidia-* wheels ('onnxruntime-gpu[cuda,cudnn]') or the system
                ort.preload_dlls()
            except Exception as exc:  # the session below says what is really missing
                logger.debug("onnxruntime.preload_dlls(): %s", exc)
        self.fp32_onnx_path = Path(onnx_path)
        chosen = dict((_short(k), Path(v)) for k, v in (variants or {}).items()).get(_short(requested[0]))
        self.onnx_path = chosen or self.fp32_onnx_path
        for kind, path in (("ONNX", self.onnx_path), ("tokenizer", self.tokenizer_path)):
            if not path.is_file():
                raise ModelError(f"model {name!r}: {kind} file {path} does not exist")

        self._tokenizer = PairTokenizer(self.tokenizer_path, cache_size=token_cache_size, threads=physical_cores())
        self.max_length = self._check_max_length(max_length)
        self._tokenizer.prepare(self.max_length)
        self.batch_size = batch_size
        batch_tokens_given = max_batch_tokens is not None
        if (
            max_batch_tokens is None
        ):  # measured: 4 full-length rows on CPU (int8 gains most: activations stay in L2), large batches on a GPU
            max_batch_tokens = CUDA_BATCH_TOKENS if requested[0] == CUDA else CPU_BATCH_TOKENS
        self.max_batch_tokens = max_batch_tokens
        self.batch_wait_ms = float(batch_wait_ms)
        self.pad_multiple = pad_multiple
        self.intra_op_threads = intra_op_threads or physical_cores()

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        # Spinning intra-op threads burn the cores the tokenizer, the event loop and other
        # processes need between ops; off measured faster on a shared 2-core machine.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        self.allow_spinning = allow_spinning
        model: str | bytes = str(self.onnx_path)
        self.fused_at_load = False
        if fuse_at_load:
            from .optimize import optimized_model_bytes

            try:
                fused = optimized_model_bytes(self.onnx_path, use_gpu=requested[0] == CUDA)
            except Exception as exc:  # unreadable here: let ONNX Runtime say what is wrong
                logger.debug("model %s: no fusion at load: %s", name, exc)
                fused = None
            if fused is not None:
                model, self.fused_at_load = fused, True
        try:
            session = ort.InferenceSession(
                model,
                sess_options=options,
                providers=[
                    (p, {k: str(v) for k, v in cuda_options.items()}) if p == CUDA and cuda_options else p
                    for p in requested
                ],
                disabled_optimizers=list(CPU_DISABLED_OPTIMIZERS) if requested[0] == CPU else None,
            )
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise ModelError(f"model {name!r}: cannot load {self.onnx_path}: {exc}") from None

        # CUDA asked for but not usable (an onnxruntime-gpu built for another CUDA major
        # version than the system's, no driver, no device): ONNX Runtime quietly runs on the
        # CPU. Say so loudly (log, info(), /_rerank/health) and size for the CPU: its batch
        # budget, and its own file instead of the fp16 one chosen for CUDA.
        self.cuda_unusable = requested[0] == CUDA and session.get_providers()[0] != CUDA
        if self.cuda_unusable:
            logger.error(
                "model %s: CUDA was asked for but ONNX Runtime %s cannot use it (see its messages above: "
                "onnxruntime-gpu must match the CUDA major version, 1.27+ for CUDA 13, <1.27 for CUDA 12); "
                "running on %s with CPU-sized batches",
                name, getattr(ort, "__version__", "?"), session.get_providers()[0],
            )  # fmt: skip
            if not batch_tokens_given:
                max_batch_tokens = CPU_BATCH_TOKENS
                self.max_batch_tokens = max_batch_tokens
            cpu_path = dict((_short(k), Path(v)) for k, v in (variants or {}).items()).get("cpu") or self.fp32_onnx_path
            if cpu_path != self.onnx_path:
                self.onnx_path, self.fused_at_load = cpu_path, False
                try:
                    session = ort.InferenceSession(
                        str(cpu_path), sess_options=options, providers=[CPU],
                        disabled_optimizers=list(CPU_DISABLED_OPTIMIZERS),
                    )  # fmt: skip
                except Exception as exc:
                    raise ModelError(f"model {name!r}: cannot load {cpu_path}: {exc}") from None

        self._input_names, self._input_dtypes = self._check_inputs(session)
        self._output_name, last_dim = self._check_output(session)
        self.head: Head = self._resolve_head(head, last_dim)
        self._session: Any = session
        self.providers: list[str] = list(session.get_providers())
        self.provider: str = self.providers[0]
        self._io_binding = self.provider == CUDA
        self.cache = ScoreCache(cache_size)
        self._prepare_pool = ThreadPoolExecutor(
            max_workers=max(1, min(4, self.intra_op_threads)), thread_name_prefix=f"rerank-{name}-tok"
        )
        if warmup:
            self._warm_up()
        if wrap_session is not None:  # after the warm-up: e.g. a slowed device in tests
            self._session = wrap_session(self._session)
        self._incoming = 0  # calls past their start, not yet handed to the batcher
        self._incoming_lock = threading.Lock()
        self._clock = clock  # deadlines and the batcher's rate (tests pass a fake one)
        self._batcher = Batcher(
            self._run_batch,
            max_tokens=max_batch_tokens,
            wait_s=self.batch_wait_ms / 1000,
            pad_multiple=pad_multiple,
            name=name,
            incoming=lambda: self._incoming,
            clock=clock,
        )

        logger.info(
            "model %s loaded from %s on %s (intra-op threads %d, head %s, inputs %s, "
            "batches of %d tokens, wait %.1f ms, cache %d%s)",
            name, self.onnx_path, self.provider, self.intra_op_threads, self.head,
            ", ".join(self._input_names), max_batch_tokens, self.batch_wait_ms, cache_size,
            ", fused at load" if self.fused_at_load else "",
        )  # fmt: skip
        if self.provider != requested[0]:
            logger.warning(
                "model %s: ONNX Runtime uses %s although %s was asked first",
                name, self.provider, requested[0],
            )  # fmt: skip

    @classmethod
    def from_settings(cls, name: str, settings: ModelSettings) -> OnnxReranker:
        """Load the model a config's ``models.<name>`` describes.

        The directory's ``es-rerank-model.json`` (written by ``es-rerank model``)
        fills in what the YAML leaves unset: ONNX and tokenizer files, head, and a
        max_length no longer than the model can take.
        """
        from .modeldir import read_model_config

        if settings.path is None:
            raise ModelError(f"model {name!r} has no path: a remote model is served by RemoteReranker")
        given = settings.model_fields_set
        found = read_model_config(settings.path)
        onnx_file, tokenizer_file = settings.onnx_file, settings.tokenizer_file
        max_length, head = settings.max_length, settings.head
        if found is not None:
            onnx_file = onnx_file if "onnx_file" in given else found.onnx_file
            tokenizer_file = tokenizer_file if "tokenizer_file" in given else found.tokenizer_file
            head = head if "head" in given else found.head
            if found.max_length is not None:
                max_length = min(max_length, found.max_length) if "max_length" in given else found.max_length
        variants: dict[str, Path] = {}
        if settings.int8_onnx_file:
            variants["cpu"] = settings.path / settings.int8_onnx_file
        if settings.fp16_onnx_file:
            variants["cuda"] = settings.path / settings.fp16_onnx_file
        return cls(
            name,
            settings.path / onnx_file,
            settings.path / tokenizer_file,
            providers=settings.providers,
            cuda_options=settings.cuda_options,
            max_length=max_length,
            batch_size=settings.batch_size,
            head=head,
            intra_op_threads=settings.intra_op_threads,
            max_batch_tokens=settings.max_batch_tokens,
            batch_wait_ms=settings.batch_wait_ms,
            cache_size=settings.cache_size,
            token_cache_size=settings.token_cache_size,
            variants=variants,
            warmup=settings.warmup,
            fuse_at_load=settings.fuse_at_load,
            allow_spinning=settings.allow_spinning,
        )

    # -- loading checks -------------------------------------------------------------

    def _check_max_length(self, max_length: int) -> int:
        least = self._tokenizer.min_length()
        if max_length < least:
            raise ModelOptionError(f"max_length must be at least {least}, got {max_length}")
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
                    f"model {self.name!r}: input {node.name!r} is {node.type}, expected tensor(int64) or tensor(int32)"
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
                f"model {self.name!r}: output {output.name!r} has shape {shape}, expected [batch, 1] or [batch, 2]"
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

    def _warm_up(self) -> None:
        """Run the model before the first request. On CUDA every padded width at a spread
        of row counts, full and padded (:func:`cuda_warmup_batches`), so kernel loading
        and arena growth happen here rather than in requests (without a warm-up the first
        request took 1.1 s on an H200; the warm-up takes seconds). On CPU one small batch."""
        if self._io_binding:
            (full,) = self._tokenizer.encode_pairs("warm up", ["warm up " * self.max_length], self.max_length)
            for pairs, width in cuda_warmup_batches(full, self.pad_multiple, self.batch_size, self.max_batch_tokens):
                self._run_batch(pairs, width)
        encodings = self._tokenizer.encode_pairs("warm up", ["warm up"], self.max_length)
        self._run_batch(encodings, len(encodings[0].ids))

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

    def _run_batch(self, encodings: Sequence[Encoded], width: int) -> np.ndarray:
        """One model run over ``encodings`` padded to ``width``: one float32 score each."""
        session = self._session
        if session is None:
            raise ModelError(f"model {self.name!r} is closed")
        feeds = make_feeds(encodings, width, self._tokenizer.pad_id, self._input_names, self._input_dtypes)
        try:
            if self._io_binding:
                binding = session.io_binding()
                for input_name, array in feeds.items():
                    binding.bind_cpu_input(input_name, array)
                binding.bind_output(self._output_name, "cuda")
                session.run_with_iobinding(binding)
                (logits,) = binding.copy_outputs_to_cpu()
            else:
                (logits,) = session.run([self._output_name], feeds)
        except Exception as exc:
            raise ModelError(f"model {self.name!r}: inference failed: {exc}") from None
        return np.asarray(self._scores(np.asarray(logits)), dtype=np.float32)

    def _prepare(
        self,
        query: str,
        passages: Sequence[str],
        max_length: int | None,
        batch_size: int | None,
        stats: ScoreStats,
    ) -> _Call:
        """Cache look-up, then tokenize what is left: a :class:`_Call` with a job or none."""
        if self._session is None:
            raise ModelError(f"model {self.name!r} is closed")
        max_length = self.max_length if max_length is None else self._check_max_length(max_length)
        if batch_size is None:
            batch_size = self.batch_size
        elif batch_size < 1:
            raise ModelOptionError(f"batch_size must be at least 1, got {batch_size}")
        started = time.perf_counter()
        out = np.empty(len(passages), dtype=np.float32)
        keys = [ScoreCache.key(self.name, max_length, query, p) for p in passages]
        cached = self.cache.get_many(keys)
        todo: dict[Any, list[int]] = {}  # key -> positions (a passage given twice is scored once)
        texts: list[str] = []
        for position, (key, value) in enumerate(zip(keys, cached)):
            if value is not None:
                out[position] = value
                stats.cache_hits += 1
            elif key in todo:
                todo[key].append(position)
            else:
                todo[key] = [position]
                texts.append(passages[position])
        job = None
        if texts:
            digests = [key[3] for key in todo]  # the score cache's keys end with the passage digest
            encodings = self._tokenizer.encode_pairs(query, texts, max_length, digests)
            job = Job(encodings, batch_size=batch_size, max_width=max_length, stats=stats)
        stats.tokenize_ms += (time.perf_counter() - started) * 1000
        return _Call(out, list(todo), list(todo.values()), job)

    def _finish(self, call: _Call) -> np.ndarray:
        """The caller's scores; when the batcher kept only the first pairs (``partial``),
        those of the passages before the first one left out."""
        if call.job is None:
            return call.out
        scores = call.job.scores
        for score, positions in zip(scores, call.owners):
            call.out[positions] = score
        self.cache.put_many(list(zip(call.keys, scores.tolist())))
        if len(scores) < len(call.owners):
            return call.out[: call.owners[len(scores)][0]]
        return call.out

    def score(
        self,
        query: str,
        passages: Sequence[str],
        *,
        max_length: int | None = None,
        batch_size: int | None = None,
        stats: ScoreStats | None = None,
    ) -> np.ndarray:
        """One float32 score per passage (higher = more relevant), in the order given.

        ``max_length`` and ``batch_size`` (most rows a model run holds) override the
        model's own for this call; ``stats``, when given, is filled in.
        """
        self._arriving(+1)
        try:
            call = self._prepare(query, list(passages), max_length, batch_size, stats or ScoreStats())
            future = self._submit(call.job) if call.job is not None else None
        finally:
            self._arriving(-1)
        if future is not None:
            future.result()
        return self._finish(call)

    async def ascore(
        self,
        query: str,
        passages: Sequence[str],
        *,
        max_length: int | None = None,
        batch_size: int | None = None,
        stats: ScoreStats | None = None,
        budget_s: float | None = None,
        partial: bool = False,
        admit_idle: bool = True,
    ) -> np.ndarray:
        """:meth:`score` without blocking the event loop: tokenizing and inference run on
        this model's threads.

        Cancelling the awaiting task (``asyncio.wait_for`` past its timeout) drops the
        pairs of the call not yet run, so a timed-out request costs no further model time.
        With ``budget_s``, a call the model's queue would not score within that many
        seconds (at the rate it has been running) raises :class:`ModelOverloadedError`
        as soon as it is tokenized, without being queued; with ``partial`` as well, the
        scores of the first passages that fit come back instead (fewer than given, at
        least two pairs' worth: one hit alone is no reordering). A call with nothing queued ahead of it is never refused on the
        estimate unless ``admit_idle`` is False (its caller has a cheaper way out).
        """
        if self._session is None:
            raise ModelError(f"model {self.name!r} is closed")
        loop = asyncio.get_running_loop()
        ticket = _Ticket()
        deadline = None if budget_s is None else self._clock() + budget_s
        admission = {"partial": partial, "admit_idle": admit_idle}
        prepare = functools.partial(
            self._prepare_and_submit,
            ticket,
            deadline,
            admission,
            query,
            list(passages),
            max_length,
            batch_size,
            stats or ScoreStats(),
        )
        self._arriving(+1)
        try:
            prepared = await loop.run_in_executor(self._prepare_pool, prepare)
        except BaseException:
            self._abandon(ticket)
            raise
        if prepared is None:  # only when the caller had already left
            raise asyncio.CancelledError
        call, future = prepared
        if future is not None:
            await asyncio.wrap_future(future)  # cancelling this cancels the job's future
        return self._finish(call)

    def _prepare_and_submit(
        self, ticket: _Ticket, deadline: float | None, admission: dict[str, bool], *args: Any
    ) -> tuple[_Call, Any] | None:
        """On the tokenizer pool: cache, tokenize, hand over; nothing when the caller left."""
        with ticket.lock:
            if ticket.state == "abandoned":
                return None  # the caller stopped waiting before this started; already counted out
            ticket.state = "running"
        try:
            call = self._prepare(*args)
            future = self._submit(call.job, deadline, **admission) if call.job is not None else None
            with ticket.lock:
                abandoned = ticket.state == "abandoned"
                ticket.state, ticket.future = "done", future
            if abandoned and future is not None:
                future.cancel()  # the caller left while this was tokenizing
            return call, future
        finally:
            self._arriving(-1)

    def _abandon(self, ticket: _Ticket) -> None:
        """The caller of ``ascore`` stopped waiting (cancelled, or an error): release its work."""
        with ticket.lock:
            state, future = ticket.state, ticket.future
            ticket.state = "abandoned"
        if state == "new":
            self._arriving(-1)  # the prepare step will not run, so it will not count itself out
        elif state == "done" and future is not None:
            future.cancel()

    def queue_wait_s(self) -> float | None:
        """Seconds the model needs for the work queued now, at the rate its runs have been
        going (every run counts, by its tokens); None until it has run one."""
        return self._batcher.queued_s()

    def _arriving(self, delta: int) -> None:
        """Count calls on their way to the batcher, which waits for them only while some are."""
        with self._incoming_lock:
            self._incoming += delta
        if delta < 0:
            self._batcher.poke()

    def _submit(self, job: Job, deadline: float | None = None, **admission: bool) -> Any:
        try:
            return self._batcher.submit(job, deadline, **admission)
        except Overloaded as exc:
            raise ModelOverloadedError(f"model {self.name!r} is overloaded: {exc}") from None
        except RuntimeError:
            raise ModelError(f"model {self.name!r} is closed") from None

    def token_lengths(self, query: str, passages: Sequence[str], max_length: int | None = None) -> list[int]:
        """Tokens of each (query, passage) pair as the model reads it (special tokens included)."""
        max_length = self.max_length if max_length is None else self._check_max_length(max_length)
        return [len(e.ids) for e in self._tokenizer.encode_pairs(query, list(passages), max_length)]

    # -- long documents -------------------------------------------------------------

    def query_token_budget(self, query: str, max_length: int) -> int:
        """Passage tokens that fit beside ``query`` in a pair of ``max_length`` tokens."""
        return self._tokenizer.query_token_budget(query, self._check_max_length(max_length))

    def chunk_text(self, text: str, chunk_tokens: int, stride: int, max_chunks: int) -> list[str]:
        """``text`` cut into windows of ``chunk_tokens`` of this model's tokens (no special
        tokens), neighbours sharing ``stride`` tokens, at most ``max_chunks``; slices of
        ``text`` itself. A text that fits comes back whole; one with no token gives ``[]``."""
        return self._tokenizer.chunk_text(text, chunk_tokens, stride, max_chunks)

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
            **(
                {
                    "warning": "CUDA was asked for but is not usable: running on the CPU (check onnxruntime-gpu against the CUDA version)"
                }
                if self.cuda_unusable
                else {}
            ),
        }

    def token_cache_info(self) -> dict[str, int]:
        """The passage token cache: size, entries, hits, misses."""
        return self._tokenizer.cache_info()

    def clear_token_cache(self) -> None:
        self._tokenizer.cache_clear()

    def engine_info(self) -> dict[str, Any]:
        """Batching and cache figures (JSON-serialisable), for health pages and metrics."""
        return {
            "max_batch_tokens": self.max_batch_tokens,
            "batch_wait_ms": self.batch_wait_ms,
            "pad_multiple": self.pad_multiple,
            "io_binding": self._io_binding,
            "fused_at_load": self.fused_at_load,
            "allow_spinning": self.allow_spinning,
            "runs": self._batcher.runs,
            "merged_runs": self._batcher.merged_runs,
            "refused": self._batcher.refused,
            "seconds_per_token": self._batcher.seconds_per_token,
            "cache": self.cache.info(),
            "token_cache": self.token_cache_info(),
        }

    def close(self) -> None:
        """Drop the session and stop the threads (calls not yet run fail with a ModelError)."""
        self._session = None
        self._batcher.close(ModelError(f"model {self.name!r} is closed"))
        self._prepare_pool.shutdown(wait=False, cancel_futures=True)
        self._tokenizer.close()

    def __enter__(self) -> OnnxReranker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<OnnxReranker {self.name!r} {self.provider} {self.onnx_path}>"
