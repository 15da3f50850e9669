"""The model's first pass over real batches, after each kind of warm-up: does a warm-up
remove the slow first runs?

A fresh session per (ONNX file, warm-up); then every query's pairs are batched as the
engine batches them (longest first, padded to a multiple of 8, rows and tokens capped)
and run twice over, the model alone, each batch timed. A query is slow when its model
time is over twice the median of the second pass plus 5 ms. Warm-ups:

  none     one small batch, as on CPU
  full     every width and row count, all rows full (the engine's warm-up before padded rows)
  padded   the engine's CUDA warm-up: the same shapes with full and with padded rows

    python benchmarks/gpu_first_pass.py MODEL_DIR CORPUS_DIR \\
        [--run benchmarks/scifact-dev-bm25-top100.json] [--onnx-file model.fp16.onnx] \\
        [--warmup none,full,padded] [--queries 300] [--k 100] [--provider cuda] [--cuda-option K=V]

MODEL_DIR holds the ONNX files and tokenizer.json (``bash benchmarks/gpu.sh`` writes one
with model.fp16.onnx into bench-gpu/model). ``--provider cpu`` checks the script itself.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from es_rerank.bench import load_bench_data
from es_rerank.reranker import OnnxReranker
from es_rerank.reranker._onnx import cuda_warmup_batches
from es_rerank.reranker._tokenize import plan_batches

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


def summary(times: list[float]) -> str:
    a = np.asarray(times)
    return f"p50 {np.percentile(a, 50):7.2f}  p95 {np.percentile(a, 95):7.2f}  max {a.max():8.2f} ms"


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
    args = parser.parse_args()
    kinds = [w.strip() for w in args.warmup.split(",") if w.strip()]
    if unknown := set(kinds) - set(WARMUPS):
        parser.error(f"unknown warm-up(s) {sorted(unknown)}: use {', '.join(WARMUPS)}")
    cuda_options = dict(option.split("=", 1) for option in args.cuda_option)

    data = load_bench_data(args.corpus, run_file=args.run, k=args.k)
    qids = data.query_ids()[: args.queries]
    print(f"{len(qids)} queries x K={args.k}, batches of <= {args.batch_size} rows and {args.max_batch_tokens} tokens", flush=True)
    for onnx_file in args.onnx_file or ["model.fp16.onnx"]:
        for kind in kinds:
            engine = OnnxReranker(
                "first-pass", args.model_dir / onnx_file, args.model_dir / "tokenizer.json",
                providers=[args.provider], cuda_options=cuda_options or None, warmup=False,
                batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens, cache_size=0,
            )  # fmt: skip
            with engine:
                took = warm_up(engine, kind)
                queries = []
                for qid in qids:  # tokenized up front: only the model is timed
                    encodings = engine._tokenizer.encode_pairs(data.queries[qid], data.pairs_for(qid, args.k), engine.max_length)
                    runs = plan_batches([len(e.ids) for e in encodings], engine.batch_size,
                                        max_tokens=engine.max_batch_tokens, pad_multiple=engine.pad_multiple,
                                        max_width=engine.max_length)  # fmt: skip
                    queries.append((encodings, runs))
                passes = [[model_ms(engine, e, r) for e, r in queries] for _ in range(2)]
            bound = 2 * float(np.median(passes[1])) + 5
            label = f"{onnx_file} {engine.provider} warm-up {kind} ({took:.1f} s)"
            for number, times in enumerate(passes, 1):
                slow = [(i, t) for i, t in enumerate(times) if t > bound]
                shown = ", ".join(f"q{i}: {t:.0f} ms" for i, t in slow[:8])
                print(f"{label} pass {number}: {summary(times)}  slow (> {bound:.1f} ms): {len(slow)} {shown}", flush=True)


if __name__ == "__main__":
    main()
