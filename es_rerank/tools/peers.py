"""The rerankers a user would pick instead of es-rerank, on the same model, for ``es-rerank bench --peers``.

Every peer loads the model from local files (no model hub), reads the same (query,
passage) pairs, truncates them at the same ``max_length`` and runs on the same number
of threads as the engine:

- ``torch``: sentence-transformers' ``CrossEncoder`` on PyTorch (the Hugging Face checkpoint);
- ``onnx``: the same ``CrossEncoder`` on its ONNX Runtime backend (exported by optimum on load);
- ``fastembed``: fastembed's ``TextCrossEncoder`` (ONNX Runtime) on the model directory's
  ONNX file, registered with ``TextCrossEncoder.add_custom_model`` and loaded from a local
  folder (``specific_model_path``);
- ``flashrank``: FlashRank's ``Ranker`` (ONNX Runtime) on the same ONNX file. FlashRank has
  no API for a local model: it takes a name from its own ``model_file_map`` and downloads it
  unless ``cache_dir/<name>/`` exists, so the model is entered in that map and laid out in
  such a folder. Its session is made again with the bench's thread count (FlashRank gives
  ONNX Runtime no options). It scores a query's passages in one model run, padded to the
  longest, as FlashRank does;
- ``infinity``: Infinity's rerank engine (``infinity-emb``, ``AsyncEmbeddingEngine``) in
  process, its ``torch`` engine on the Hugging Face checkpoint, with its own batching queue
  driven from an event loop in a thread.

Each peer gets a folder of its own (links to the model's files) whose
``tokenizer_config.json`` says ``model_max_length: max_length``, since the checkpoint says
512 and fastembed and Infinity read no other limit. Peer libraries are optional (the
``peers`` extra): a missing one raises :class:`~es_rerank.errors.BenchError` saying what
to install.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BenchError

__all__ = ["PEER_NAMES", "Peer", "load_peers"]

PEER_NAMES = ("torch", "onnx", "fastembed", "flashrank", "infinity")

ScoreFn = Callable[[str, list[str]], Any]

# the modules each peer imports (the first names the package to install)
_REQUIRES = {
    "torch": ("sentence_transformers", "torch"),
    "onnx": ("sentence_transformers", "onnxruntime"),
    "fastembed": ("fastembed",),
    "flashrank": ("flashrank", "onnxruntime"),
    "infinity": ("infinity_emb", "torch", "sentence_transformers"),
}


@dataclass
class Peer:
    """One peer: a label for the tables, a scoring function (query, passages) -> scores, and
    a ``close`` to release what it started (threads, temporary folders)."""

    label: str
    score: ScoreFn
    close: Callable[[], None] = field(default=lambda: None)


def _missing(peer: str, exc: ImportError, package: str) -> BenchError:
    return BenchError(f"the {peer} peer needs {package} ({exc}): pip install 'es-rerank[peers]'")


def _peer_dir(work: Path, name: str, hf_dir: Path, onnx_path: Path | None, max_length: int) -> Path:
    """A folder of links to the checkpoint's files (and ``model.onnx``), with ``max_length`` as
    the tokenizer's ``model_max_length``."""
    d = work / name
    d.mkdir(parents=True)
    for f in hf_dir.iterdir():
        if f.is_file() and f.name != "tokenizer_config.json":
            (d / f.name).symlink_to(f.resolve())
    config_path = hf_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    config["model_max_length"] = max_length
    (d / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    if onnx_path is not None:
        (d / "model.onnx").symlink_to(onnx_path.resolve())
    return d


def _torch_peer(hf_dir: Path, threads: int, max_length: int, batch_size: int) -> Peer:
    try:
        import torch
        from sentence_transformers import CrossEncoder
    except ImportError as exc:
        raise _missing("torch", exc, "sentence-transformers and torch") from None
    torch.set_num_threads(threads)
    model = CrossEncoder(str(hf_dir), device="cpu", max_length=max_length, backend="torch")
    model.model.eval()

    def score(query: str, passages: list[str]) -> Any:
        with torch.inference_mode():
            return model.predict([(query, p) for p in passages], batch_size=batch_size, show_progress_bar=False)

    return Peer("sentence-transformers torch", score)


def _onnx_peer(hf_dir: Path, work: Path, threads: int, max_length: int, batch_size: int) -> Peer:
    try:
        import onnxruntime as ort
        from sentence_transformers import CrossEncoder
    except ImportError as exc:
        raise _missing("onnx", exc, "sentence-transformers[onnx]") from None
    # The ONNX backend exports the checkpoint with optimum on first load; work on a copy
    # so a read-only model directory is never written to.
    copy = work / "st-onnx"
    shutil.copytree(hf_dir, copy, ignore=shutil.ignore_patterns("onnx"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        model = CrossEncoder(
            str(copy), device="cpu", max_length=max_length, backend="onnx",
            model_kwargs={"provider": "CPUExecutionProvider", "session_options": options},
        )  # fmt: skip
    except Exception as exc:  # optimum missing or export failed
        raise BenchError(f"sentence-transformers' ONNX backend failed to load {hf_dir}: {exc}") from None

    def score(query: str, passages: list[str]) -> Any:
        return model.predict([(query, p) for p in passages], batch_size=batch_size, show_progress_bar=False)

    return Peer("sentence-transformers onnx", score)


def _fastembed_peer(folder: Path, threads: int, batch_size: int) -> Peer:
    try:
        from fastembed.common.model_description import ModelSource
        from fastembed.rerank.cross_encoder import TextCrossEncoder
    except ImportError as exc:
        raise _missing("fastembed", exc, "fastembed") from None
    name = "es-rerank-bench/local-cross-encoder"
    if not any(m["model"].lower() == name for m in TextCrossEncoder.list_supported_models()):
        # the source is never reached: specific_model_path below points at the local folder
        TextCrossEncoder.add_custom_model(model=name, sources=ModelSource(hf=name), model_file="model.onnx")
    encoder = TextCrossEncoder(
        name, specific_model_path=str(folder), threads=threads, providers=["CPUExecutionProvider"], cuda=False
    )

    def score(query: str, passages: list[str]) -> Any:
        return np.fromiter(
            encoder.rerank(query, passages, batch_size=batch_size), dtype=np.float32, count=len(passages)
        )

    return Peer("fastembed", score)


def _flashrank_peer(folder: Path, threads: int, max_length: int) -> Peer:
    try:
        import onnxruntime as ort
        from flashrank import Ranker, RerankRequest

        ranker_module = importlib.import_module("flashrank.Ranker")
    except ImportError as exc:
        raise _missing("flashrank", exc, "flashrank") from None
    # FlashRank looks the file name up in its own map and downloads the model unless
    # cache_dir/<name>/ exists: the peer folder is that cache entry.
    ranker_module.model_file_map.setdefault(folder.name, "model.onnx")
    ranker = Ranker(model_name=folder.name, cache_dir=str(folder.parent), max_length=max_length, log_level="WARNING")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    ranker.session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])

    def score(query: str, passages: list[str]) -> Any:
        ranked = ranker.rerank(
            RerankRequest(query=query, passages=[{"id": i, "text": p} for i, p in enumerate(passages)])
        )
        out = np.empty(len(passages), dtype=np.float32)
        for r in ranked:
            out[r["id"]] = r["score"]
        return out

    return Peer("flashrank", score)


def _infinity_peer(folder: Path, threads: int, batch_size: int) -> Peer:
    try:
        import torch
        from infinity_emb import AsyncEmbeddingEngine, EngineArgs
    except ImportError as exc:
        raise _missing("infinity", exc, "infinity-emb, sentence-transformers and torch") from None
    torch.set_num_threads(threads)
    engine = AsyncEmbeddingEngine.from_args(
        EngineArgs(
            model_name_or_path=str(folder), engine="torch", device="cpu", batch_size=batch_size, model_warmup=False
        )
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="infinity-peer", daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(engine.astart(), loop).result()

    def score(query: str, passages: list[str]) -> Any:
        ranked, _usage = asyncio.run_coroutine_threadsafe(
            engine.rerank(query=query, docs=passages, raw_scores=True), loop
        ).result()
        out = np.empty(len(passages), dtype=np.float32)
        for r in ranked:
            out[r.index] = r.relevance_score
        return out

    def close() -> None:
        asyncio.run_coroutine_threadsafe(engine.astop(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()

    return Peer("infinity", score, close)


def load_peers(
    hf_dir: Path,
    onnx_path: Path,
    *,
    threads: int,
    max_length: int,
    batch_size: int,
    which: Sequence[str] = PEER_NAMES,
) -> list[Peer]:
    """Load the peers named in ``which`` (a subset of :data:`PEER_NAMES`), in that order.

    ``hf_dir`` is the model as a Hugging Face checkpoint (torch, onnx, infinity);
    ``onnx_path`` the fp32 ONNX file the engine runs (fastembed, flashrank).
    """
    unknown = [w for w in which if w not in PEER_NAMES]
    if unknown:
        raise BenchError(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(PEER_NAMES)}")
    for name in which:  # every missing library said before anything loads
        for module in _REQUIRES[name]:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise _missing(name, exc, _REQUIRES[name][0].replace("_", "-")) from None
    if not hf_dir.is_dir():
        raise BenchError(f"--peers needs the model as a Hugging Face checkpoint; {hf_dir} is not a directory")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local files only, whatever a library tries
    work = Path(tempfile.mkdtemp(prefix="es-rerank-bench-peers-"))
    peers: list[Peer] = []
    try:
        for name in which:
            if name == "torch":
                peers.append(_torch_peer(hf_dir, threads, max_length, batch_size))
            elif name == "onnx":
                peers.append(_onnx_peer(hf_dir, work, threads, max_length, batch_size))
            elif name == "fastembed":
                peers.append(
                    _fastembed_peer(_peer_dir(work, "fastembed", hf_dir, onnx_path, max_length), threads, batch_size)
                )
            elif name == "flashrank":
                peers.append(
                    _flashrank_peer(_peer_dir(work, "flashrank", hf_dir, onnx_path, max_length), threads, max_length)
                )
            elif name == "infinity":
                peers.append(_infinity_peer(_peer_dir(work, "infinity", hf_dir, None, max_length), threads, batch_size))
    except BaseException:
        for p in peers:
            p.close()
        shutil.rmtree(work, ignore_errors=True)
        raise
    if peers:
        last = peers[-1].close

        def close_last_and_clean() -> None:
            try:
                last()
            finally:
                shutil.rmtree(work, ignore_errors=True)

        peers[-1].close = close_last_and_clean
    else:
        shutil.rmtree(work, ignore_errors=True)
    return peers
