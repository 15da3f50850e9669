"""Cold tokenization cost per passage with and without cutting long passages to their head
first (same tokens either way): SciFact abstracts, and 30,000-character documents made of
20 abstracts each. Then the tokenizer alone on the abstracts, with character offsets
(``encode_batch``) and without (``encode_batch_fast``, what the engine calls), and the
engine's tokenizer on one thread and on its own threads (one per physical core): run it
once more with ``TOKENIZERS_PARALLELISM=false``, where the library's own parallelism is off.

    python benchmarks/tokenize_heads.py ../shared/datasets/scifact/corpus.jsonl demo/model/tokenizer.json
"""

import json
import os
import sys
import time

from tokenizers import Tokenizer

from es_rerank.reranker import _tokenize
from es_rerank.reranker._onnx import physical_cores
from es_rerank.reranker._tokenize import PairTokenizer

corpus, tokenizer_path = sys.argv[1], sys.argv[2]
with open(corpus) as f:
    abstracts = [(d.get("title", "") + " " + d["text"]).strip() for d in map(json.loads, f)][:1000]
documents = [" ".join(abstracts[i : i + 20]) for i in range(0, 1000, 20)]
query = "0-dimensional biomaterials show inductive properties."


def cold_ms_per_passage(texts: list[str], threads: int = 1) -> float:
    best = float("inf")
    for _ in range(3):  # a fresh tokenizer each time: nothing cached
        tokenizer = PairTokenizer(tokenizer_path, cache_size=0, threads=threads)
        t0 = time.perf_counter()
        tokenizer.encode_pairs(query, texts, 256)
        best = min(best, time.perf_counter() - t0)
    return 1000 * best / len(texts)


default = _tokenize.CLIP_CHARS_PER_TOKEN
for label, texts in (("SciFact abstracts", abstracts[:500]), ("30k-char documents", documents)):
    for clip in (None, default):
        _tokenize.CLIP_CHARS_PER_TOKEN = clip or 10**9
        cut = "off" if clip is None else f"at {clip} chars/token"
        print(f"{label:20s} cut {cut}: {cold_ms_per_passage(texts):.3f} ms a passage", flush=True)

plain = Tokenizer.from_file(tokenizer_path)
plain.no_truncation()
plain.no_padding()
for method in ("encode_batch", "encode_batch_fast"):
    encode = getattr(plain, method)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        encode(abstracts[:500], add_special_tokens=False)
        best = min(best, time.perf_counter() - t0)
    print(f"SciFact abstracts    {method}: {1000 * best / 500:.3f} ms a passage", flush=True)

parallelism = os.environ.get("TOKENIZERS_PARALLELISM", "unset")
for threads in sorted({1, physical_cores()}):
    ms = cold_ms_per_passage(abstracts[:500], threads)
    print(
        f"SciFact abstracts    {threads} thread(s), TOKENIZERS_PARALLELISM {parallelism}: {ms:.3f} ms a passage",
        flush=True,
    )
