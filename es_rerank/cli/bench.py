"""``es-rerank bench``: the engine against its peers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import click

from ..errors import RerankError
from ..tools.bench import BenchOptions, format_report, load_bench_data, plot_bench, run_bench
from ..tools.datasets import save_run
from ..tools.peers import PEER_NAMES
from ._common import _fail


def _key_values(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--cuda-option")
        out[key.strip()] = value.strip()
    return out


def _ints(text: str) -> list[int]:
    try:
        values = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise click.BadParameter(f"expected positive integers, got {text!r}")
    return values


@click.command("bench")
@click.option(
    "--model", "model_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="model directory"
)
@click.option(
    "--onnx-file",
    "onnx_files",
    multiple=True,
    default=["model.onnx"],
    help="ONNX file(s) in the model directory to compare (repeat)",
)
@click.option("--tokenizer-file", default="tokenizer.json")
@click.option(
    "--corpus",
    "corpus_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="BEIR data set directory",
)
@click.option("--split", default="dev", help="queries-<split>.jsonl and qrels/<split>.tsv")
@click.option(
    "--run", "run_file", type=click.Path(dir_okay=False, path_type=Path), help="saved first stage (JSON or TREC run)"
)
@click.option("--opensearch-url", help="search the first stage here instead of --run")
@click.option("--index", help="index to search")
@click.option(
    "--save-run",
    "save_run_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write the first stage used as a JSON run",
)
@click.option(
    "--fields",
    default="title,text",
    help="document fields joined into a passage (title: a short-passage set from the same first stage)",
)
@click.option("--ks", default="10,20,50,100", help="window sizes K")
@click.option("--concurrency", default="1,4,16", help="concurrent clients")
@click.option("--provider", default="cpu", help="ONNX Runtime provider: cpu, cuda or auto")
@click.option("--threads", default=0, help="intra-op threads for every contender; 0 = physical cores")
@click.option("--max-length", default=256)
@click.option("--batch-size", default=32, help="rows per model run at most (and the peers' batch size)")
@click.option(
    "--max-batch-tokens",
    type=int,
    default=None,
    help="padded tokens per model run [default: 1024 on CPU, 65536 on CUDA]",
)
@click.option(
    "--sweep-batch-tokens",
    default="",
    help="comma-separated token budgets: one contender per ONNX file and budget (e.g. 256,512,1024,2048)",
)
@click.option(
    "--cuda-option",
    "cuda_option",
    multiple=True,
    metavar="KEY=VALUE",
    help="an ONNX Runtime CUDA provider option (repeat)",
)
@click.option("--allow-spinning", is_flag=True, help="let ONNX Runtime's idle threads spin")
@click.option("--batch-wait-ms", default=2.0, help="the batcher's wait bound")
@click.option("--throughput-queries", default=20, help="queries in the throughput comparison")
@click.option("--queries-per-cell", default=32, help="queries per (K, clients) latency cell, over all rounds")
@click.option("--rounds", default=2, help="latency cells of one K alternate between client counts this many times")
@click.option(
    "--peers",
    "with_peers",
    is_flag=True,
    help="also time the peers on the same model: sentence-transformers' CrossEncoder (torch and onnx backends), fastembed, FlashRank, Infinity",
)
@click.option(
    "--peer",
    "peer_names",
    multiple=True,
    type=click.Choice(list(PEER_NAMES)),
    help="only these peers (repeat; implies --peers)",
)
@click.option(
    "--hf-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Hugging Face checkpoint for the peers [default: MODEL/hf]",
)
@click.option("--throughput/--no-throughput", default=True, help="the interleaved throughput comparison")
@click.option("--latency/--no-latency", default=True, help="the latency/concurrency cells")
@click.option("--quality", is_flag=True, help="NDCG@10 of each ONNX file over every judged query")
@click.option(
    "--token-cache-size",
    default=20_000,
    show_default=True,
    help="passages whose tokens the engine keeps; 0 = tokenize every pair",
)
@click.option("--matmul-size", default=2048, help="n of the n x n fp32 numpy product timed between calls")
@click.option(
    "--deadline-ms", type=float, default=None, help="per-query deadline in the latency cells (counted as timeouts)"
)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="write a PNG plot here")
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="write all figures as JSON here"
)
def bench(
    model_dir: Path,
    onnx_files: tuple[str, ...],
    tokenizer_file: str,
    corpus_dir: Path,
    split: str,
    run_file: Path | None,
    opensearch_url: str | None,
    index: str | None,
    save_run_file: Path | None,
    fields: str,
    ks: str,
    concurrency: str,
    provider: str,
    threads: int,
    max_length: int,
    batch_size: int,
    max_batch_tokens: int | None,
    sweep_batch_tokens: str,
    cuda_option: tuple[str, ...],
    allow_spinning: bool,
    batch_wait_ms: float,
    throughput_queries: int,
    queries_per_cell: int,
    rounds: int,
    with_peers: bool,
    peer_names: tuple[str, ...],
    hf_dir: Path | None,
    throughput: bool,
    latency: bool,
    quality: bool,
    token_cache_size: int,
    matmul_size: int,
    deadline_ms: float | None,
    plot_path: Path | None,
    json_path: Path | None,
) -> None:
    """Measure the reranker on real pairs: throughput against peers and numpy, latency under concurrency, quality.

    Long only in its options (one a line); the body is one call into :mod:`es_rerank.tools.bench`.
    """
    k_values, clients = _ints(ks), _ints(concurrency)
    peers = list(peer_names) or (list(PEER_NAMES) if with_peers else [])

    def say(message: str) -> None:
        click.echo(f"[bench] {message}", err=True)

    try:
        data = load_bench_data(
            corpus_dir,
            split=split,
            run_file=run_file,
            opensearch_url=opensearch_url,
            index=index,
            k=max(k_values),
            fields=[f.strip() for f in fields.split(",") if f.strip()],
        )
        if save_run_file:
            say(f"first stage written to {save_run(data.candidates, save_run_file)}")
        options = BenchOptions(
            onnx_files=tuple(onnx_files),
            tokenizer_file=tokenizer_file,
            provider=provider,
            threads=threads,
            max_length=max_length,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
            batch_token_sweep=tuple(_ints(sweep_batch_tokens)) if sweep_batch_tokens else (),
            allow_spinning=allow_spinning,
            cuda_options=_key_values(cuda_option),
            batch_wait_ms=batch_wait_ms,
            ks=tuple(k_values),
            concurrency=tuple(clients),
            throughput_queries=throughput_queries,
            queries_per_cell=queries_per_cell,
            rounds=rounds,
            peers=tuple(peers),
            hf_dir=hf_dir,
            throughput=throughput,
            latency=latency,
            quality=quality,
            token_cache_size=token_cache_size,
            deadline_s=deadline_ms / 1000 if deadline_ms else None,
            matmul_n=matmul_size,
        )
        result = run_bench(model_dir, data, options, progress=say)
    except RerankError as exc:
        _fail(exc)
    click.echo(format_report(result))
    if plot_path:
        click.echo(f"plot: {plot_bench(result, plot_path)}")
    if json_path:
        Path(json_path).write_text(json.dumps(result.to_dict(), indent=1, default=str), encoding="utf-8")
        click.echo(f"figures: {json_path}")
