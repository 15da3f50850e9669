"""Model-only throughput on CUDA at fixed shapes (rows x 256 tokens), fp32 and fp16, and the
tokenizer's pairs/s cold and from the passage token cache: the GPU ceiling under
``es-rerank bench``'s end-to-end figures.

    python benchmarks/gpu_model_only.py MODEL_DIR CORPUS_DIR   # MODEL_DIR holds model.onnx and model.fp16.onnx
"""

import json
import sys
import time
from pathlib import Path

from es_rerank.reranker import OnnxReranker

model_dir, corpus = Path(sys.argv[1]), Path(sys.argv[2])
with open(corpus / "corpus.jsonl") as f:
    docs = [json.loads(line) for _, line in zip(range(2048), f)]
texts = [(d.get("title", "") + " " + d["text"]).strip() for d in docs]
query = "0-dimensional biomaterials show inductive properties."
for name in ("model.onnx", "model.fp16.onnx"):
    engine = OnnxReranker(
        "m",
        model_dir / name,
        model_dir / "tokenizer.json",
        providers=["cuda"],
        batch_size=2048,
        max_batch_tokens=1 << 20,
    )
    for label, q in (("cold", query), ("warm", query + " x")):
        t0 = time.perf_counter()
        pairs = engine._tokenizer.encode_pairs(q, texts, 256)
        dt = time.perf_counter() - t0
        print(
            f"{name}: {label} tokenize {len(texts)} passages {1000 * dt:.1f} ms = {len(texts) / dt:.0f} pairs/s",
            flush=True,
        )
    for rows in (100, 256, 512, 1024, 2048):
        batch = pairs[:rows]
        engine._run_batch(batch, 256)
        n = max(3, 4096 // rows)
        t0 = time.perf_counter()
        for _ in range(n):
            engine._run_batch(batch, 256)
        dt = (time.perf_counter() - t0) / n
        print(f"{name}: {rows} x 256 tokens: {1000 * dt:.2f} ms/run = {rows / dt:.0f} pairs/s", flush=True)
    engine.close()
