"""``es-rerank bench``: the engine's speed on real pairs, side by side with its peers.

Pairs come from a BEIR data set (``corpus.jsonl``, ``queries*.jsonl``, ``qrels/``)
and a first-stage top K, either searched in OpenSearch (the BEIR BM25 baseline
query) or read from a saved run file (``{"qid": {"docid": score}}``, or TREC).

Three measurements, printed as tables (and a plot with ``--plot``):

1. **Throughput** on the same pairs (the first ``--throughput-queries`` queries at
   the largest K), one query per call as the proxy calls it, in one process with
   the same threads: each ONNX variant given with ``--onnx-file`` and, with
   ``--peers``, the rerankers a user would pick instead, on the same model
   (``tools/peers.py``): sentence-transformers' ``CrossEncoder`` on its PyTorch and
   its ONNX backends, fastembed's ``TextCrossEncoder``, FlashRank and Infinity's
   rerank engine. Calls are interleaved query by query (A, B, C, A, B, C...) so load
   from elsewhere on the machine hits every contender alike, and an fp32 numpy
   matrix multiply is timed between them the same way: the engine's achieved FLOP
   rate (FLOPs per pair from the model's shape and each pair's real token count)
   is printed as a fraction of that rate. Ratios to each peer are printed.
2. **Latency and concurrency**: for each K and 1, 4, 16 concurrent clients, pairs/s
   and per-query latency p50/p95/p99 through ``ascore`` (the cross-request batcher
   on), plus the longest time the batcher held a request waiting for company.
3. **Quality** (``--quality``): NDCG@10 of the first stage and of each variant's
   reranking over every judged query, and each variant's difference to the first.

The score cache is off here (every call runs the model)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BenchError
from ..reranker import OnnxReranker, ScoreStats, physical_cores
from .datasets import beir_files, load_passages, load_qrels, load_queries, load_run
from .peers import load_peers
from .reports import percentile

__all__ = [
    "BenchData",
    "ModelShape",
    "ThroughputResult",
    "CellResult",
    "QualityResult",
    "BenchResult",
    "search_run",
    "load_bench_data",
    "model_shape",
    "pair_flops",
    "numpy_matmul",
    "BenchOptions",
    "run_bench",
    "format_report",
    "plot_bench",
]


DEFAULT_KS = (10, 20, 50, 100)


DEFAULT_CONCURRENCY = (1, 4, 16)


@dataclass
class BenchData:
    """Queries, their first-stage candidates (best first) and the passage texts."""

    queries: dict[str, str]
    candidates: dict[str, list[str]]
    passages: dict[str, str]
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)

    def query_ids(self) -> list[str]:
        return [qid for qid in self.candidates if qid in self.queries and self.candidates[qid]]

    def pairs_for(self, qid: str, k: int) -> list[str]:
        return [self.passages[did] for did in self.candidates[qid][:k]]


def search_run(
    url: str, index: str, queries: Mapping[str, str], k: int, fields: Sequence[str] = ("title", "text")
) -> dict[str, list[str]]:
    """Top ``k`` doc ids per query from OpenSearch with the BEIR BM25 baseline query."""
    import httpx

    from .evaluation import default_first_stage_query, first_stage_body

    template = default_first_stage_query(fields)
    out: dict[str, list[str]] = {}
    with httpx.Client(base_url=url.rstrip("/"), timeout=30) as client:
        for qid, text in queries.items():
            try:
                response = client.post(f"/{index}/_search", json=first_stage_body(template, text, size=k))
            except httpx.HTTPError as exc:
                raise BenchError(f"cannot search {url}: {exc}") from None
            if response.status_code != 200:
                raise BenchError(f"{url}/{index}/_search answered {response.status_code}: {response.text[:200]}")
            out[qid] = [hit["_id"] for hit in response.json()["hits"]["hits"]]
    return out


def load_bench_data(
    corpus_dir: str | Path,
    *,
    split: str = "dev",
    run_file: str | Path | None = None,
    opensearch_url: str | None = None,
    index: str | None = None,
    k: int = 100,
    fields: Sequence[str] = ("title", "text"),
) -> BenchData:
    """Queries (judged ones, when qrels exist), their top-``k`` candidates and the passages."""
    files = beir_files(corpus_dir, split)
    queries = load_queries(files.queries)
    qrels: dict[str, dict[str, int]] = {}
    if files.qrels is not None:
        qrels = load_qrels(files.qrels)
        queries = {qid: text for qid, text in queries.items() if qid in qrels}
    if run_file is not None:
        candidates = load_run(run_file)
    elif opensearch_url and index:
        candidates = search_run(opensearch_url, index, queries, k, fields)
    else:
        raise BenchError("give a saved first stage (--run) or an OpenSearch to search (--opensearch-url and --index)")
    candidates = {qid: ids[:k] for qid, ids in candidates.items() if qid in queries}
    if not candidates:
        raise BenchError("no query of the queries file has first-stage candidates")
    corpus_path = files.corpus
    passages = load_passages(corpus_path, fields, {d for ids in candidates.values() for d in ids})
    missing = {d for ids in candidates.values() for d in ids} - passages.keys()
    if missing:
        raise BenchError(f"{len(missing)} candidate doc id(s) are not in {corpus_path} (e.g. {sorted(missing)[:3]})")
    return BenchData(queries=queries, candidates=candidates, passages=passages, qrels=qrels)


@dataclass(frozen=True)
class ModelShape:
    """What a BERT-like encoder's FLOPs depend on."""

    layers: int
    hidden: int
    intermediate: int
    # A pruned file's per-layer attention width (heads x head size) and feed-forward width;
    # empty: every layer is whole.
    attention_widths: tuple[int, ...] = ()
    ffn_widths: tuple[int, ...] = ()

    def flops(self, tokens: int) -> float:
        """Multiply-adds x 2 for one pair of ``tokens`` tokens: Q, K, V, output and the two FFN
        products per token, plus QK^T and attention x V (quadratic in ``tokens``)."""
        h, n = self.hidden, tokens
        attention = self.attention_widths or (h,) * self.layers
        ffn = self.ffn_widths or (self.intermediate,) * self.layers
        return float(sum(2 * n * (4 * h * a + 2 * h * f) + 4 * n * n * a for a, f in zip(attention, ffn, strict=True)))

    def of_file(self, onnx_path: str | Path) -> ModelShape:
        """This shape with the layer widths a fused file really has (``model prune`` makes them
        narrower), so a pruned file is credited with the work it does, not the whole model's."""
        import onnx

        graph = onnx.load(str(onnx_path), load_external_data=False).graph
        dims = {i.name: tuple(i.dims) for i in graph.initializer}
        attention = tuple(
            dims[n.input[1]][1] // 3
            for n in graph.node
            if n.op_type in ("Attention", "QAttention") and n.input[1] in dims
        )
        ffn = tuple(dims[n.input[1]][0] for n in graph.node if n.op_type == "BiasGelu" and n.input[1] in dims)
        if len(attention) != self.layers or len(ffn) != self.layers:
            return self  # not fused: the file is the whole model
        whole = attention == (self.hidden,) * self.layers and ffn == (self.intermediate,) * self.layers
        return self if whole else replace(self, attention_widths=attention, ffn_widths=ffn)


def model_shape(model_dir: str | Path, onnx_path: str | Path | None = None) -> ModelShape:
    """Layers, hidden and intermediate sizes: from ``config.json`` (or ``hf/config.json``),
    else read off the ONNX graph's weights."""
    model_dir = Path(model_dir)
    for candidate in (model_dir / "config.json", model_dir / "hf" / "config.json"):
        if candidate.is_file():
            config = json.loads(candidate.read_text(encoding="utf-8"))
            try:
                return ModelShape(
                    int(config["num_hidden_layers"]), int(config["hidden_size"]), int(config["intermediate_size"])
                )
            except (KeyError, TypeError, ValueError):
                break
    if onnx_path is None:
        raise BenchError(f"no config.json in {model_dir} to read the model's shape from")
    import onnx

    model = onnx.load(str(onnx_path))
    shapes = [tuple(i.dims) for i in model.graph.initializer if len(i.dims) == 2]
    embedding = max(shapes, key=lambda s: s[0])  # the word embeddings: [vocab, hidden]
    hidden = int(embedding[1])
    ffn = [s for s in shapes if s[0] == hidden and s[1] > hidden and s[1] != 3 * hidden]
    if not ffn:
        raise BenchError(f"cannot read the model's shape from {onnx_path}")
    intermediate = int(max(ffn, key=lambda s: s[1])[1])
    layers = sum(1 for s in ffn if s[1] == intermediate)
    return ModelShape(layers, hidden, intermediate)


def pair_flops(shape: ModelShape, lengths: Iterable[int]) -> float:
    return sum(shape.flops(int(n)) for n in lengths)


def numpy_matmul(n: int = 2048, repeats: int = 1) -> tuple[float, float]:
    """(FLOPs, seconds) of the fastest of ``repeats`` fp32 ``n x n`` matrix products."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3, best


ScoreFn = Callable[[str, list[str]], Any]


@dataclass
class _Contender:
    """A peer (``peer_score``) or an es-rerank engine, timed side by side."""

    label: str
    peer_score: ScoreFn | None = None
    engine: OnnxReranker | None = None
    seconds: float = 0.0
    per_query: list[float] = field(default_factory=list)
    pairs: int = 0
    stats: ScoreStats | None = None  # an engine's tokenize/model split, summed over the timed calls
    close: Callable[[], None] | None = None  # a peer's: releases its threads and folders

    @property
    def kind(self) -> str:
        return "engine" if self.engine is not None else "peer"

    def score(self, query: str, passages: list[str]) -> Any:
        if self.engine is not None:
            return self.engine.score(query, passages, stats=self.stats)
        assert self.peer_score is not None
        return self.peer_score(query, passages)


def _peer_contenders(
    hf_dir: Path, onnx_path: Path, threads: int, max_length: int, batch_size: int, which: Sequence[str]
) -> list[_Contender]:
    """The peers named in ``which`` (es_rerank/tools/peers.py; the ``peers`` extra)."""
    return [
        _Contender(p.label, peer_score=p.score, close=p.close)
        for p in load_peers(
            hf_dir, onnx_path, threads=threads, max_length=max_length, batch_size=batch_size, which=which
        )
    ]


@dataclass
class ThroughputResult:
    label: str
    kind: str
    pairs: int
    seconds: float
    pairs_per_s: float
    flop_rate: float  # FLOP/s achieved over the real tokens
    flop_fraction: float  # of numpy's fp32 matmul rate in the same run
    p50_ms: float
    tokenize_ms: float = math.nan  # per query (engines only)
    model_ms: float = math.nan  # per query: model runs including input/output copies
    model_pairs_per_s: float = math.nan  # pairs over the model runs' time alone
    token_cache_hit_rate: float = math.nan  # passages whose tokens came from the cache


@dataclass
class CellResult:
    label: str
    k: int
    concurrency: int
    queries: int
    pairs: int
    seconds: float
    pairs_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_hold_ms: float
    merged_runs: int
    runs: int
    timeouts: int


@dataclass
class QualityResult:
    label: str
    queries: int
    k: int
    ndcg10: float
    first_stage_ndcg10: float
    pairs_per_s: float


@dataclass
class BenchResult:
    provider: str
    threads: int
    model_shape: ModelShape
    throughput_k: int
    throughput_queries: int
    mean_tokens: float
    gflop_per_pair: float
    numpy_flop_rate: float  # total FLOPs / total seconds of the interleaved matmuls
    numpy_best_flop_rate: float
    batch_wait_ms: float
    max_batch_tokens: int
    matmul_n: int = 2048
    throughput: list[ThroughputResult] = field(default_factory=list)
    cells: list[CellResult] = field(default_factory=list)
    quality: list[QualityResult] = field(default_factory=list)
    cell_token_cache_hit_rate: dict[str, float] = field(default_factory=dict)  # per engine, over its latency cells
    # the tokenizers library's own parallelism (off where "false"); the engine tokenizes on its threads either way
    tokenizers_parallelism: str = field(default_factory=lambda: os.environ.get("TOKENIZERS_PARALLELISM", "unset"))

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _throughput(
    contenders: list[_Contender],
    data: BenchData,
    qids: list[str],
    k: int,
    matmul_n: int,
    interleave: bool = True,
) -> tuple[float, float]:
    """Time every contender on the same queries, interleaved; numpy matmuls between them
    (``interleave``; else one after the others: on a GPU host BLAS threads left spinning
    would only slow the tokenizer down).

    Returns numpy's rate as total FLOPs over total time, and its best single rate.
    """
    for c in contenders:  # first calls pay one-off costs (allocations, lazy init)
        c.score(data.queries[qids[0]], data.pairs_for(qids[0], min(k, 8)))
        if c.engine is not None:
            c.stats = ScoreStats()
            c.engine.clear_token_cache()  # start cold: only repeats across queries hit
    numpy_matmul(matmul_n)
    np_flops = np_seconds = 0.0
    np_best = 0.0
    for i, qid in enumerate(qids):
        query, passages = data.queries[qid], data.pairs_for(qid, k)
        rotation = contenders[i % len(contenders) :] + contenders[: i % len(contenders)]
        for c in rotation:
            t0 = time.perf_counter()
            c.score(query, passages)
            dt = time.perf_counter() - t0
            c.seconds += dt
            c.per_query.append(dt)
            c.pairs += len(passages)
        if interleave or i == len(qids) - 1:
            flops, seconds = numpy_matmul(matmul_n)
            np_flops += flops
            np_seconds += seconds
            np_best = max(np_best, flops / seconds)
    return np_flops / np_seconds, np_best


def _stage_split(c: _Contender) -> dict[str, float]:
    """An engine's time per query in the tokenizer and in the model, and its token cache hit rate."""
    if c.stats is None or c.engine is None or not c.per_query:
        return {}
    n = len(c.per_query)
    cache = c.engine.token_cache_info()
    looked_up = cache["hits"] + cache["misses"]
    return {
        "tokenize_ms": c.stats.tokenize_ms / n,
        "model_ms": c.stats.inference_ms / n,
        "model_pairs_per_s": c.stats.pairs / (c.stats.inference_ms / 1000) if c.stats.inference_ms else math.nan,
        "token_cache_hit_rate": cache["hits"] / looked_up if looked_up else math.nan,
    }


async def _cell(
    engine: OnnxReranker,
    data: BenchData,
    qids: list[str],
    k: int,
    concurrency: int,
    deadline_s: float | None,
) -> tuple[list[float], list[ScoreStats], float, int]:
    """``concurrency`` clients, each scoring its share of ``qids`` one query at a time."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for qid in qids:
        queue.put_nowait(qid)
    latencies: list[float] = []
    stats_list: list[ScoreStats] = []
    timeouts = 0

    async def client() -> None:
        nonlocal timeouts
        while True:
            try:
                qid = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            stats = ScoreStats()
            t0 = time.perf_counter()
            try:
                await asyncio.wait_for(
                    engine.ascore(data.queries[qid], data.pairs_for(qid, k), stats=stats), deadline_s
                )
            except TimeoutError:
                timeouts += 1
            latencies.append(time.perf_counter() - t0)
            stats_list.append(stats)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, stats_list, time.perf_counter() - t0, timeouts


@dataclass(frozen=True, kw_only=True)
class BenchOptions:
    """What ``es-rerank bench`` measures and how (every option of :func:`run_bench`).

    Engine: ``onnx_files`` (each a contender), ``tokenizer_file``, ``provider`` (cpu, cuda,
    auto), ``threads`` (0: physical cores), ``max_length``, ``batch_size``,
    ``max_batch_tokens`` (None: the engine's default), ``batch_token_sweep`` (one contender per
    ONNX file and token budget: how the run size suits the passages' lengths), ``batch_wait_ms``, ``allow_spinning``,
    ``cuda_options``, ``token_cache_size``. Measurements: ``ks``, ``concurrency`` (clients per
    latency cell), ``throughput_queries``, ``queries_per_cell``, ``rounds``, ``peers`` (a subset
    of :data:`~es_rerank.tools.peers.PEER_NAMES`; ``hf_dir`` their checkpoint), ``throughput``,
    ``latency``, ``quality``, ``deadline_s`` (per query in the latency cells), ``matmul_n``.
    """

    onnx_files: tuple[str, ...] = ("model.onnx",)
    tokenizer_file: str = "tokenizer.json"
    provider: str = "cpu"
    threads: int = 0
    max_length: int = 256
    batch_size: int = 32
    max_batch_tokens: int | None = None
    batch_token_sweep: tuple[int, ...] = ()
    batch_wait_ms: float = 2.0
    allow_spinning: bool = False
    cuda_options: Mapping[str, str] | None = None
    token_cache_size: int = 20_000
    ks: tuple[int, ...] = DEFAULT_KS
    concurrency: tuple[int, ...] = DEFAULT_CONCURRENCY
    throughput_queries: int = 20
    queries_per_cell: int = 16
    rounds: int = 2
    peers: tuple[str, ...] = ()
    hf_dir: str | Path | None = None
    throughput: bool = True
    latency: bool = True
    quality: bool = False
    deadline_s: float | None = None
    matmul_n: int = 2048


def run_bench(
    model_dir: str | Path,
    data: BenchData,
    options: BenchOptions | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Measure; see the module docstring. ``peers`` is a subset of :data:`~es_rerank.tools.peers.PEER_NAMES`."""
    o = options or BenchOptions()
    onnx_files = o.onnx_files
    tokenizer_file = o.tokenizer_file
    provider = o.provider
    threads = o.threads
    max_length = o.max_length
    batch_size = o.batch_size
    max_batch_tokens = o.max_batch_tokens
    batch_wait_ms = o.batch_wait_ms
    allow_spinning = o.allow_spinning
    cuda_options = o.cuda_options
    token_cache_size = o.token_cache_size
    ks = o.ks
    concurrency = o.concurrency
    throughput_queries = o.throughput_queries
    queries_per_cell = o.queries_per_cell
    rounds = o.rounds
    peers = o.peers
    hf_dir = o.hf_dir
    throughput = o.throughput
    latency = o.latency
    quality = o.quality
    deadline_s = o.deadline_s
    matmul_n = o.matmul_n
    say = progress or (lambda message: None)
    if rounds < 1 or throughput_queries < 1 or queries_per_cell < 1:
        raise BenchError("rounds, throughput_queries and queries_per_cell must be at least 1")
    model_dir = Path(model_dir)
    threads = threads or physical_cores()
    qids = data.query_ids()
    k_max = max(ks)
    engines: list[tuple[str, OnnxReranker]] = []
    try:
        budgets: tuple[int | None, ...] = o.batch_token_sweep or (max_batch_tokens,)
        for file in onnx_files:
            for budget in budgets:
                name = f"{file} @{budget} tokens" if o.batch_token_sweep else file
                engine = OnnxReranker(
                    name,
                    model_dir / file,
                    model_dir / tokenizer_file,
                    providers=[provider],
                    max_length=max_length,
                    batch_size=batch_size,
                    intra_op_threads=threads,
                    max_batch_tokens=budget,
                    batch_wait_ms=batch_wait_ms,
                    cache_size=0,
                    token_cache_size=token_cache_size,
                    allow_spinning=allow_spinning,
                    cuda_options=cuda_options,
                )
                engines.append((name, engine))
        first = engines[0][1]
        wanted = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}.get(provider.lower())
        if wanted and first.provider != wanted:
            raise BenchError(f"asked for {wanted} but ONNX Runtime runs the model on {first.provider}")
        shape = model_shape(model_dir, model_dir / onnx_files[0])
        t_qids = qids[:throughput_queries]
        lengths = [n for qid in t_qids for n in first.token_lengths(data.queries[qid], data.pairs_for(qid, k_max))]
        flops_total = pair_flops(shape, lengths)
        file_flops = {
            f"es-rerank {name}": pair_flops(shape.of_file(engine.onnx_path), lengths) for name, engine in engines
        }
        result = BenchResult(
            provider=first.provider,
            threads=threads,
            model_shape=shape,
            throughput_k=k_max,
            throughput_queries=len(t_qids),
            mean_tokens=float(np.mean(lengths)),
            gflop_per_pair=flops_total / len(lengths) / 1e9,
            numpy_flop_rate=math.nan,
            numpy_best_flop_rate=math.nan,
            batch_wait_ms=batch_wait_ms,
            max_batch_tokens=first.max_batch_tokens,
            matmul_n=matmul_n,
        )

        # 1. throughput, interleaved with the peers and numpy
        contenders: list[_Contender] = []
        if throughput:
            for name, e in engines:
                contenders.append(_Contender(f"es-rerank {name}", engine=e))
        if peers and throughput:
            say(f"loading peers: {', '.join(peers)}")
            onnx_path = model_dir / "model.onnx" if (model_dir / "model.onnx").is_file() else model_dir / onnx_files[0]
            contenders += _peer_contenders(
                Path(hf_dir or model_dir / "hf"), onnx_path, threads, max_length, batch_size, peers
            )
        if contenders:
            say(f"throughput: {len(t_qids)} queries x K={k_max}, {len(contenders)} contender(s), interleaved")
            try:
                np_rate, np_best = _throughput(
                    contenders, data, t_qids, k_max, matmul_n, interleave=first.provider == "CPUExecutionProvider"
                )
            finally:
                for c in contenders:
                    if c.close is not None:
                        c.close()
            result.numpy_flop_rate, result.numpy_best_flop_rate = np_rate, np_best
        for c in contenders:
            rate = file_flops.get(c.label, flops_total) / c.seconds
            result.throughput.append(
                ThroughputResult(
                    label=c.label,
                    kind=c.kind,
                    pairs=c.pairs,
                    seconds=c.seconds,
                    pairs_per_s=c.pairs / c.seconds,
                    flop_rate=rate,
                    flop_fraction=rate / np_rate,
                    p50_ms=percentile(c.per_query, 50) * 1000,
                    **_stage_split(c),
                )
            )

        # 2. latency under concurrency, through ascore and the batcher; the client counts
        #    of one K alternate round by round, so load from elsewhere hits them alike
        if latency:
            for name, engine in engines:
                before = engine.token_cache_info()
                for k in sorted(ks):
                    acc: dict[int, dict[str, Any]] = {}
                    for round_no in range(rounds):
                        for clients in sorted(concurrency):
                            n = max(queries_per_cell // rounds, clients)
                            offset = round_no * n
                            cell_qids = [qids[(offset + i) % len(qids)] for i in range(n)]
                            runs0, merged0 = engine._batcher.runs, engine._batcher.merged_runs
                            say(f"latency: {name} K={k} clients={clients} round {round_no + 1}/{rounds} ({n} queries)")
                            latencies, stats, seconds, timeouts = asyncio.run(
                                _cell(engine, data, cell_qids, k, clients, deadline_s)
                            )
                            a = acc.setdefault(
                                clients, {"lat": [], "stats": [], "seconds": 0.0, "timeouts": 0, "runs": 0, "merged": 0}
                            )
                            a["lat"] += latencies
                            a["stats"] += stats
                            a["seconds"] += seconds
                            a["timeouts"] += timeouts
                            a["runs"] += engine._batcher.runs - runs0
                            a["merged"] += engine._batcher.merged_runs - merged0
                    for clients, a in sorted(acc.items()):
                        pairs = sum(s.pairs for s in a["stats"])
                        result.cells.append(
                            CellResult(
                                label=f"es-rerank {name}",
                                k=k,
                                concurrency=clients,
                                queries=len(a["lat"]),
                                pairs=pairs,
                                seconds=a["seconds"],
                                pairs_per_s=pairs / a["seconds"],
                                p50_ms=percentile(a["lat"], 50) * 1000,
                                p95_ms=percentile(a["lat"], 95) * 1000,
                                p99_ms=percentile(a["lat"], 99) * 1000,
                                max_hold_ms=max(s.hold_ms for s in a["stats"]),
                                merged_runs=a["merged"],
                                runs=a["runs"],
                                timeouts=a["timeouts"],
                            )
                        )
                after = engine.token_cache_info()
                hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
                if hits + misses:
                    result.cell_token_cache_hit_rate[f"es-rerank {name}"] = hits / (hits + misses)

        # 3. quality over every judged query
        if quality:
            if not data.qrels:
                raise BenchError("--quality needs qrels for the split")
            from .evaluation import rank_metrics

            first_stage = {qid: data.candidates[qid][:k_max] for qid in qids}
            fs, _ = rank_metrics(data.qrels, first_stage, recall_at=k_max)
            for name, engine in engines:
                say(f"quality: {name} over {len(qids)} queries x K={k_max}")
                rankings: dict[str, list[str]] = {}
                pairs = 0
                t0 = time.perf_counter()
                for qid in qids:
                    ids = data.candidates[qid][:k_max]
                    scores = engine.score(data.queries[qid], [data.passages[d] for d in ids])
                    rankings[qid] = [ids[i] for i in np.argsort(-scores, kind="stable")]
                    pairs += len(ids)
                seconds = time.perf_counter() - t0
                means, _ = rank_metrics(data.qrels, rankings, recall_at=k_max)
                result.quality.append(
                    QualityResult(
                        label=f"es-rerank {name}",
                        queries=len(qids),
                        k=k_max,
                        ndcg10=means["ndcg@10"],
                        first_stage_ndcg10=fs["ndcg@10"],
                        pairs_per_s=pairs / seconds,
                    )
                )
        return result
    finally:
        for _, engine in engines:
            engine.close()


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _bar(value: float, top: float, width: int = 40) -> str:
    n = 0 if top <= 0 or not math.isfinite(value) else int(round(width * value / top))
    return "#" * max(0, min(width, n))


def format_report(result: BenchResult) -> str:
    """The tables and a text plot, as printed by ``es-rerank bench``."""
    out: list[str] = []
    shape = result.model_shape
    out.append(
        f"provider {result.provider}, {result.threads} thread(s); model {shape.layers} layers, "
        f"hidden {shape.hidden}, intermediate {shape.intermediate}; batches of <= {result.max_batch_tokens} tokens, "
        f"wait {result.batch_wait_ms:g} ms; "
        f"TOKENIZERS_PARALLELISM {result.tokenizers_parallelism}"
    )
    if result.throughput:
        out.append(
            f"throughput pairs: {result.throughput_queries} queries x K={result.throughput_k}, "
            f"mean {result.mean_tokens:.1f} tokens/pair, {result.gflop_per_pair:.2f} GFLOP/pair"
        )
        out.append(
            f"numpy fp32 matmul ({result.matmul_n}x{result.matmul_n}, between the calls): "
            f"{result.numpy_flop_rate / 1e9:.1f} GFLOP/s "
            f"(fastest single product {result.numpy_best_flop_rate / 1e9:.1f})"
        )
    out.append("")
    if result.throughput:
        peers = [t for t in result.throughput if t.kind == "peer"]
        cpu = result.provider == "CPUExecutionProvider"
        header = ["contender", "pairs", "pairs/s", "GFLOP/s", "of numpy", "p50 ms/query"] + [
            f"x {p.label.split()[-1]}" for p in peers
        ]
        rows = []
        for t in result.throughput:
            rows.append(
                [
                    t.label,
                    str(t.pairs),
                    f"{t.pairs_per_s:.1f}",
                    f"{t.flop_rate / 1e9:.1f}",
                    f"{t.flop_fraction:.1%}" if cpu else "n/a (GPU)",
                    f"{t.p50_ms:.0f}",
                ]
                + [f"{t.pairs_per_s / p.pairs_per_s:.2f}" for p in peers]
            )
        out.append("Throughput (same pairs, same threads, interleaved query by query)")
        out.append(_table(header, rows))
        split = [t for t in result.throughput if not math.isnan(t.model_ms)]
        if split:
            out.append("")
            out.append("Where an engine's time goes, per query (model = model runs with their input/output copies)")
            out.append(
                _table(
                    ["contender", "tokenize ms", "model ms", "model-only pairs/s", "token cache hits"],
                    [
                        [
                            t.label,
                            f"{t.tokenize_ms:.2f}",
                            f"{t.model_ms:.2f}",
                            f"{t.model_pairs_per_s:.1f}",
                            f"{t.token_cache_hit_rate:.0%}",
                        ]
                        for t in split
                    ],
                )
            )
        top = max(t.pairs_per_s for t in result.throughput)
        out.append("")
        for t in result.throughput:
            out.append(f"  {t.label:<34} {_bar(t.pairs_per_s, top)} {t.pairs_per_s:.1f}")
        out.append("")
    if result.cells:
        out.append("Latency per query and throughput under concurrency (ascore, cross-request batcher)")
        header = [
            "engine",
            "K",
            "clients",
            "queries",
            "pairs/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max hold ms",
            "merged runs",
            "timeouts",
        ]
        rows = [
            [
                c.label,
                str(c.k),
                str(c.concurrency),
                str(c.queries),
                f"{c.pairs_per_s:.1f}",
                f"{c.p50_ms:.0f}",
                f"{c.p95_ms:.0f}",
                f"{c.p99_ms:.0f}",
                f"{c.max_hold_ms:.2f}",
                f"{c.merged_runs}/{c.runs}",
                str(c.timeouts),
            ]
            for c in result.cells
        ]
        out.append(_table(header, rows))
        out.append("")
        top = max(c.pairs_per_s for c in result.cells)
        for c in result.cells:
            out.append(
                f"  {c.label} K={c.k:<4} clients={c.concurrency:<3} "
                f"{_bar(c.pairs_per_s, top)} {c.pairs_per_s:.1f} pairs/s"
            )
        by_key: dict[tuple[str, int], dict[int, CellResult]] = {}
        for c in result.cells:
            by_key.setdefault((c.label, c.k), {})[c.concurrency] = c
        out.append("")
        for (label, k), cells in by_key.items():
            lo, hi = min(cells), max(cells)
            if lo != hi:
                ratio = cells[hi].pairs_per_s / cells[lo].pairs_per_s
                out.append(
                    f"  {label} K={k}: {hi} clients {cells[hi].pairs_per_s:.1f} pairs/s vs {lo} client "
                    f"{cells[lo].pairs_per_s:.1f} pairs/s ({ratio:.2f}x); longest batcher hold "
                    f"{max(c.max_hold_ms for c in cells.values()):.2f} ms (bound {result.batch_wait_ms:g} ms)"
                )
        for label, rate in result.cell_token_cache_hit_rate.items():
            out.append(
                f"  {label}: {rate:.0%} of the cells' passages had their tokens cached "
                "(earlier calls in this run saw them)"
            )
        out.append("")
    if result.quality:
        out.append(
            f"Quality (NDCG@10, {result.quality[0].queries} judged queries, first stage top {result.quality[0].k})"
        )
        base = result.quality[0]
        header = ["engine", "first stage", "reranked", "vs first variant", "pairs/s"]
        rows = [
            [
                q.label,
                f"{q.first_stage_ndcg10:.4f}",
                f"{q.ndcg10:.4f}",
                f"{q.ndcg10 - base.ndcg10:+.4f}",
                f"{q.pairs_per_s:.1f}",
            ]
            for q in result.quality
        ]
        out.append(_table(header, rows))
        out.append("")
    return "\n".join(out)


def plot_bench(result: BenchResult, path: str | Path) -> Path:
    """A PNG: throughput per contender, and pairs/s and p95 latency against K per client count."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchError("the plot needs matplotlib: pip install 'es-rerank[bench]'") from None
    path = Path(path)
    panels = (1 if result.throughput else 0) + (2 if result.cells else 0)
    if not panels:
        raise BenchError("nothing to plot: no throughput and no latency figures")
    fig, axes_array = plt.subplots(1, panels, figsize=(5.5 * panels, 4.5), squeeze=False)
    axes = list(axes_array[0])
    if result.throughput:
        ax = axes.pop(0)
        labels = [t.label.replace("sentence-transformers", "ST") for t in result.throughput]
        ax.barh(labels, [t.pairs_per_s for t in result.throughput])
        ax.set_xlabel(f"pairs/s (K={result.throughput_k}, {result.threads} threads, {result.provider})")
        ax.invert_yaxis()
    if result.cells:
        rate_ax, latency_ax = axes
        groups: dict[tuple[str, int], list[CellResult]] = {}
        for c in result.cells:
            groups.setdefault((c.label, c.concurrency), []).append(c)
        for (label, conc), cells in groups.items():
            cells = sorted(cells, key=lambda c: c.k)
            name = f"{label.removeprefix('es-rerank ')}, {conc} client(s)"
            rate_ax.plot([c.k for c in cells], [c.pairs_per_s for c in cells], marker="o", label=name)
            latency_ax.plot([c.k for c in cells], [c.p95_ms for c in cells], marker="o", label=name)
        rate_ax.set_xlabel("K")
        rate_ax.set_ylabel("pairs/s")
        rate_ax.legend(fontsize=7)
        latency_ax.set_xlabel("K")
        latency_ax.set_ylabel("p95 latency per query (ms)")
        latency_ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
