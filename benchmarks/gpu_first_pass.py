"""The model's first pass over real batches, after each kind of warm-up: does a warm-up
remove the slow first runs?

A fresh process and session per (ONNX file, warm-up), each with a CUDA JIT cache of its
own, so nothing one loads helps the next; then every query's pairs are batched as the
engine batches them (longest first, padded to a multiple of 8, rows and tokens capped)
and run twice over, the model alone, each batch timed. A query is slow when its model
time is over twice the median of the second pass plus 5 ms. Last, a pass through the
engine itself (``score``: tokenize, batch, run) with its token cache emptied, timing
garbage collections too: the kernels are loaded by then, so what is slow there is slow
in Python. Warm-ups:

  none     one small batch, as on CPU
  full     every width and row count, all rows full (the engine's warm-up before padded rows)
  padded   the engine's CUDA warm-up: the same shapes with full and with padded rows

    python benchmarks/gpu_first_pass.py MODEL_DIR CORPUS_DIR \\
        [--run benchmarks/scifact-dev-bm25-top100.json] [--onnx-file model.fp16.onnx] \\
        [--warmup none,full,padded] [--queries 300] [--k 100] [--provider cuda] [--cuda-option K=V] \\
        [--profile --profile-dir DIR]

MODEL_DIR holds the ONNX files and tokenizer.json (``bash benchmarks/gpu.sh`` writes one
with model.fp16.onnx into bench-gpu/model). ``--provider cpu`` checks the script itself.

``--profile`` runs each session with ONNX Runtime's profiler and prints, for the slowest
runs of the first pass, the nodes that took longest on the host: a one-off cost (kernel
or module loading, a memory arena growing, a library's plan or heuristic) is paid inside
the launch of the node that needs it, so it shows there even though CUDA kernels run
asynchronously. ``ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO=1`` makes ONNX Runtime print
the attention kernel it picks.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from es_rerank.reranker import OnnxReranker, ScoreStats
from es_rerank.reranker._onnx import cuda_warmup_batches, import_onnxruntime
from es_rerank.reranker._tokenize import plan_batches
from es_rerank.reranker.optimize import CPU_DISABLED_OPTIMIZERS
from es_rerank.tools.bench import load_bench_data

WARMUPS = ("none", "full", "padded")


def warm_up(engine: OnnxReranker, kind: str) -> float:
    """Seconds the ``kind`` of warm-up took on ``engine`` (made with ``warmup=False``)."""
    started = time.perf_counter()
    (full,) = engine._tokenizer.encode_pairs("warm up", ["warm up " * engine.max_length], engine.max_length)
    if kind != "none":
        for pairs, width in cuda_warmup_batches(full, engine.pad_multiple, engine.batch_size, engine.max_batch_tokens):
            if kind == "padded" or min(len(p.ids) for p in pairs) == width:
                engine._run_batch(pairs, width)
    small = engine._tokenizer.encode_pairs("warm up", ["warm up"], engine.max_length)
    engine._run_batch(small, len(small[0].ids))
    return time.perf_counter() - started


def model_ms(engine: OnnxReranker, encodings: list, runs: list[tuple[np.ndarray, int]]) -> float:
    started = time.perf_counter()
    for positions, width in runs:
        engine._run_batch([encodings[i] for i in positions], width)
    return (time.perf_counter() - started) * 1000


def profiled(engine: OnnxReranker, path: Path, prefix: str, cuda_options: dict[str, str]) -> None:
    """Give ``engine`` a session of ``path`` like its own, with the profiler on."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = prefix
    options.intra_op_num_threads = engine.intra_op_threads
    providers = [(p, cuda_options) if p == "CUDAExecutionProvider" and cuda_options else p for p in engine.providers]
    engine._session = ort.InferenceSession(
        str(path), options, providers=providers,
        disabled_optimizers=list(CPU_DISABLED_OPTIMIZERS) if engine.provider == "CPUExecutionProvider" else None,
    )  # fmt: skip


def slowest_runs(profile: Path, first: int, shapes: list[tuple[int, int, int]], top: int = 3, nodes: int = 5) -> None:
    """The ``top`` slowest model runs from run number ``first`` on, with their slowest nodes."""
    events = json.loads(profile.read_text())
    runs = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"]
    )
    runs = runs[first : first + len(shapes)]
    node_events = [e for e in events if e.get("cat") == "Node"]
    for number in sorted(range(len(runs)), key=lambda i: -runs[i]["dur"])[:top]:
        run = runs[number]
        inside = [e for e in node_events if run["ts"] <= e["ts"] <= run["ts"] + run["dur"]]
        query, rows, width = shapes[number]
        worst = ", ".join(
            f"{e['args'].get('op_name', '?')} {e['name'].removesuffix('_kernel_time')} {e['dur'] / 1000:.1f} ms"
            + (
                f" (arena +{int(e['args']['mem_arena_held_delta']) >> 20} MiB)"
                if int(e["args"].get("mem_arena_held_delta", 0)) >= 1 << 20
                else ""
            )
            for e in sorted(inside, key=lambda e: -e["dur"])[:nodes]
        )
        print(
            f"    run {number} (q{query}, {rows} x {width}): {run['dur'] / 1000:.1f} ms; nodes {sum(e['dur'] for e in inside) / 1000:.1f} ms: {worst}",
            flush=True,
        )


def engine_pass(engine: OnnxReranker, searches: list[tuple[str, list[str]]]) -> list[tuple[float, float, float, float]]:
    """``engine.score`` on each search: (total, tokenize, model, garbage collection) ms.

    With the kernels loaded by the passes before, a slow search here is slow in Python:
    tokenizing, or a garbage collection while the token cache fills."""
    paused = [0.0]
    started: list[float] = []

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            paused[0] += (time.perf_counter() - started.pop()) * 1000

    rows = []
    gc.callbacks.append(on_gc)
    try:
        for query, passages in searches:
            stats, before, t0 = ScoreStats(), paused[0], time.perf_counter()
            engine.score(query, passages, stats=stats)
            rows.append(((time.perf_counter() - t0) * 1000, stats.tokenize_ms, stats.inference_ms, paused[0] - before))
    finally:
        gc.callbacks.remove(on_gc)
    return rows


def summary(times: list[float]) -> str:
    a = np.asarray(times)
    return f"p50 {np.percentile(a, 50):7.2f}  p95 {np.percentile(a, 95):7.2f}  max {a.max():8.2f} ms"


def measure(args: argparse.Namespace, onnx_file: str, kind: str, cuda_options: dict[str, str]) -> None:
    """One fresh session of ``onnx_file``, the ``kind`` of warm-up, then two passes."""
    data = load_bench_data(args.corpus, run_file=args.run, k=args.k)
    qids = data.query_ids()[: args.queries]
    print(
        f"{len(qids)} queries x K={args.k}, batches of <= {args.batch_size} rows and {args.max_batch_tokens} tokens",
        flush=True,
    )
    engine = OnnxReranker(
        "first-pass", args.model_dir / onnx_file, args.model_dir / "tokenizer.json",
        providers=[args.provider], cuda_options=cuda_options or None, warmup=False,
        batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens, cache_size=0,
    )  # fmt: skip
    with engine:
        if args.profile:
            prefix = args.profile_dir / f"first-pass-{Path(onnx_file).stem}-{kind}"
            profiled(engine, args.model_dir / onnx_file, str(prefix), cuda_options)
        warm_runs = [0]
        run_batch = engine._run_batch
        engine._run_batch = lambda pairs, width: warm_runs.__setitem__(0, warm_runs[0] + 1) or run_batch(pairs, width)
        took = warm_up(engine, kind)
        engine._run_batch = run_batch
        queries = []
        for qid in qids:  # tokenized up front: only the model is timed
            encodings = engine._tokenizer.encode_pairs(
                data.queries[qid], data.pairs_for(qid, args.k), engine.max_length
            )
            runs = plan_batches([len(e.ids) for e in encodings], engine.batch_size,
                                max_tokens=engine.max_batch_tokens, pad_multiple=engine.pad_multiple,
                                max_width=engine.max_length)  # fmt: skip
            queries.append((encodings, runs))
        passes = [[model_ms(engine, e, r) for e, r in queries]]
        profile = Path(engine._session.end_profiling()) if args.profile else None  # pass 1 only
        passes.append([model_ms(engine, e, r) for e, r in queries])
        engine.clear_token_cache()
        rows = engine_pass(engine, [(data.queries[q], data.pairs_for(q, args.k)) for q in qids])
    bound = 2 * float(np.median(passes[1])) + 5
    label = f"{onnx_file} {engine.provider} warm-up {kind} ({took:.1f} s)"
    for number, times in enumerate(passes, 1):
        slow = [(i, t) for i, t in enumerate(times) if t > bound]
        shown = ", ".join(f"q{i}: {t:.0f} ms" for i, t in slow[:8])
        print(f"{label} pass {number}: {summary(times)}  slow (> {bound:.1f} ms): {len(slow)} {shown}", flush=True)
    totals = [row[0] for row in rows]
    bound = 2 * float(np.median(totals)) + 5
    slow = [(i, row) for i, row in enumerate(rows) if row[0] > bound]
    shown = ", ".join(
        f"q{i}: {t:.0f} ms (tokenize {tok:.0f}, model {m:.0f}, gc {g:.0f})" for i, (t, tok, m, g) in slow[:8]
    )
    print(f"{label} engine pass, cold token cache: {summary(totals)}  gc {sum(r[3] for r in rows):.0f} ms in all"
          f"  slow (> {bound:.1f} ms): {len(slow)} {shown}", flush=True)  # fmt: skip
    if profile is not None:
        shapes = [(i, len(positions), width) for i, (_, runs) in enumerate(queries) for positions, width in runs]
        print(f"  {profile}: slowest runs of pass 1", flush=True)
        slowest_runs(profile, warm_runs[0], shapes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--run", type=Path, default=Path(__file__).with_name("scifact-dev-bm25-top100.json"))
    parser.add_argument("--onnx-file", action="append", help="repeatable [model.fp16.onnx]")
    parser.add_argument("--warmup", default=",".join(WARMUPS), help=f"comma-separated, of {', '.join(WARMUPS)}")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--provider", default="cuda")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-batch-tokens", type=int, default=65536)
    parser.add_argument("--cuda-option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--profile", action="store_true", help="profile the sessions; show the slowest first-pass runs")
    parser.add_argument("--profile-dir", type=Path, default=Path("."), help="where the profiles go [.]")
    args = parser.parse_args()
    kinds = [w.strip() for w in args.warmup.split(",") if w.strip()]
    if unknown := set(kinds) - set(WARMUPS):
        parser.error(f"unknown warm-up(s) {sorted(unknown)}: use {', '.join(WARMUPS)}")
    files = args.onnx_file or ["model.fp16.onnx"]
    cuda_options = dict(option.split("=", 1) for option in args.cuda_option)
    if len(files) == 1 and len(kinds) == 1:
        measure(args, files[0], kinds[0], cuda_options)
        return
    # One process each, with a CUDA JIT cache of its own: what one configuration loaded
    # or compiled (CUDA modules, cuBLAS handles, JIT-compiled kernels) does not help the next.
    rest = list(sys.argv[1:])
    for flag in ("--onnx-file", "--warmup"):
        while flag in rest:
            i = rest.index(flag)
            del rest[i : i + 2]
        rest = [a for a in rest if not a.startswith(flag + "=")]
    for onnx_file in files:
        for kind in kinds:
            with tempfile.TemporaryDirectory() as cache:
                env = {**os.environ, "CUDA_CACHE_PATH": cache}
                done = subprocess.run(
                    [sys.executable, __file__, *rest, "--onnx-file", onnx_file, "--warmup", kind], env=env
                )
            if done.returncode:
                raise SystemExit(done.returncode)


if __name__ == "__main__":
    main()
