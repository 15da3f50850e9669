"""``es-rerank model``: pull, export, optimize, quantize, prune and check model directories."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import cast

import click

from ..errors import RerankError
from ..reranker.quantize import CALIBRATE_METHODS, INT8_RECIPE, STATIC_RECIPE
from ..tools.models import (
    OPSET,
    check_model,
    export_model,
    optimize_model,
    prune_model,
    pull_model,
    quantize_model,
    quantize_static_model,
)
from ._common import F, _fail


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _calibration_sampling(scope: str = "") -> Callable[[F], F]:
    """--calibration-split/-pairs/-seed: how the calibration pairs are drawn (quantize --mode static, prune)."""

    def decorate(command: F) -> F:
        for option in reversed(
            [
                click.option(
                    "--calibration-split",
                    default="train",
                    help=f"{scope}the split whose queries calibrate (not one you evaluate on)",
                ),
                click.option(
                    "--calibration-pairs",
                    default=256,
                    type=click.IntRange(min=1),
                    help=f"{scope}pairs, each query's relevant documents and 3 others",
                ),
                click.option(
                    "--calibration-seed",
                    default=0,
                    type=int,
                    help=f"{scope}seed of the queries' order and the other documents",
                ),
            ]
        ):
            command = option(command)
        return command

    return decorate


@click.group("model", context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def model() -> None:
    """Fetch, export, optimise, quantise, prune and check cross-encoder model directories.

    A model directory holds model.onnx (and variants), tokenizer.json and
    es-rerank-model.json; a config's models.<name>.path names one.
    """


@model.command("pull")
@click.argument("repo_id")
@click.option("--revision", default="main", help="branch, tag or commit of the repository")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="model directory to write [default: models/<owner>--<name>]",
)
@click.option(
    "--onnx-file", default=None, help="ONNX file in the repository [default: onnx/model.onnx, then model.onnx]"
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Hugging Face cache [default: HF_HUB_CACHE]",
)
@click.option("--endpoint", default=None, help="Hub URL [default: HF_ENDPOINT or https://huggingface.co]")
@click.option("--token", default=None, help="Hub token [default: HF_TOKEN or the saved login]")
@click.option("--force", is_flag=True, help="replace a model already in the directory")
def pull_command(
    repo_id: str,
    revision: str,
    out_dir: Path | None,
    onnx_file: str | None,
    cache_dir: Path | None,
    endpoint: str | None,
    token: str | None,
    force: bool,
) -> None:
    """Fetch REPO_ID's ONNX file and tokenizer.json from the Hugging Face Hub."""
    try:
        result = pull_model(
            repo_id,
            revision=revision,
            out_dir=out_dir,
            onnx_file=onnx_file,
            cache_dir=cache_dir,
            endpoint=endpoint,
            token=token,
            force=force,
        )
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
def optimize_command(
    model_dir: Path, fp16: bool, onnx_file: str | None, model_type: str, num_heads: int | None, hidden_size: int | None
) -> None:
    """ONNX Runtime transformer fusions: writes model.opt.onnx (and model.fp16.onnx)."""
    try:
        result = optimize_model(
            model_dir,
            onnx_file=onnx_file,
            fp16=fp16,
            model_type=model_type,
            num_heads=num_heads,
            hidden_size=hidden_size,
        )
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
@click.option(
    "--mode",
    default="dynamic",
    type=click.Choice(["dynamic", "static"]),
    help="dynamic: activation scales at run time; static: calibrated QDQ (needs --calibration-corpus)",
)
@click.option("--onnx-file", default=None, help="ONNX file to quantise [default: the directory's]")
# The defaults are es-rerank's measured recipes (reranker.quantize.INT8_RECIPE, STATIC_RECIPE).
@click.option(
    "--per-channel/--per-tensor",
    default=INT8_RECIPE["per_channel"],
    show_default=True,
    help="one weight scale per output channel, or one per tensor",
)
@click.option("--reduce-range", is_flag=True, help="7-bit weights (for CPUs without VNNI)")
@click.option(
    "--fusions-first/--no-fusions",
    default=INT8_RECIPE["fuse"],
    show_default=True,
    help="apply transformer fusions before quantising",
)
@click.option("--preprocess", is_flag=True, help="dynamic: run ONNX Runtime's quant_pre_process first")
@click.option(
    "--op-types",
    default=None,
    help="comma-separated operator types to quantise; 'all' = every one ONNX Runtime can (dynamic) "
    f"[default: {','.join(cast('list[str]', INT8_RECIPE['op_types']))} (dynamic), "
    f"{','.join(cast('list[str]', STATIC_RECIPE['op_types']))} (static)]",
)
@click.option("--weight-type", default="qint8", type=click.Choice(["qint8", "quint8"]), help="static: qint8 only")
@click.option(
    "--output", default=None, help="file name written in MODEL_DIR [default: model.int8.onnx, model.qdq.onnx (static)]"
)
@click.option(
    "--calibration-corpus",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="static: BEIR folder whose pairs calibrate the activations (corpus.jsonl, queries-SPLIT.jsonl, qrels/SPLIT.tsv)",
)
@_calibration_sampling("static: ")
@click.option(
    "--calibrate-method",
    default=STATIC_RECIPE["calibrate_method"],
    type=click.Choice(CALIBRATE_METHODS),
    help="static: activation ranges as seen, a percentile, or by entropy",
)
@click.option(
    "--dynamic-rest/--static-only",
    default=STATIC_RECIPE["dynamic_rest"],
    show_default=True,
    help="static: quantise what QDQ leaves (fused Attention, MatMuls after GELU) dynamically, or keep it fp32",
)
def quantize_command(
    model_dir: Path,
    mode: str,
    onnx_file: str | None,
    per_channel: bool,
    reduce_range: bool,
    fusions_first: bool,
    preprocess: bool,
    op_types: str | None,
    weight_type: str,
    output: str | None,
    calibration_corpus: Path | None,
    calibration_split: str,
    calibration_pairs: int,
    calibration_seed: int,
    calibrate_method: str,
    dynamic_rest: bool,
) -> None:
    """int8 quantisation for CPU: writes model.int8.onnx (dynamic) or model.qdq.onnx (static, calibrated)."""
    types = [t.strip() for t in op_types.split(",") if t.strip()] if op_types and op_types != "all" else None
    if mode == "static":
        if calibration_corpus is None:
            raise click.UsageError(
                "--mode static needs --calibration-corpus (a BEIR folder, e.g. ../shared/datasets/scifact)"
            )
        if preprocess or weight_type != "qint8" or op_types == "all":
            raise click.UsageError("--preprocess, --weight-type quint8 and --op-types all are for --mode dynamic")
    elif calibration_corpus is not None:
        raise click.UsageError("--calibration-corpus is for --mode static")
    try:
        if calibration_corpus is not None:
            result = quantize_static_model(
                model_dir, calibration_corpus, onnx_file=onnx_file, calibration_split=calibration_split,
                calibration_pairs=calibration_pairs, seed=calibration_seed,
                calibrate_method=calibrate_method,  # type: ignore[arg-type]  # click.Choice: a Literal's value
                per_channel=per_channel, reduce_range=reduce_range, fusions_first=fusions_first, op_types=types,
                dynamic_rest=dynamic_rest, output=output or "model.qdq.onnx",
                progress=lambda message: click.echo(f"[quantize] {message}", err=True),
            )  # fmt: skip
        else:
            result = quantize_model(
                model_dir,
                mode=mode,  # type: ignore[arg-type]  # click.Choice: one of the Literal's values
                onnx_file=onnx_file,
                per_channel=per_channel,
                reduce_range=reduce_range,
                fusions_first=fusions_first,
                preprocess=preprocess,
                op_types=types if op_types else cast("list[str]", INT8_RECIPE["op_types"]),
                weight_type=weight_type,  # type: ignore[arg-type]  # click.Choice, as above
                output=output or "model.int8.onnx",
            )
    except RerankError as exc:
        _fail(exc)
    click.echo(
        f"wrote {result.output} ({_mb(result.source_bytes)} -> {_mb(result.output_bytes)}; "
        f"max |diff| {result.max_abs_diff:.3g} vs {result.source.name} on CPU)"
    )
    if mode == "static":
        calibration = result.options["calibration"]
        ops = ", ".join(f"{k} {v}" for k, v in result.options["ops"].items())
        click.echo(f"calibrated on {calibration['pairs']} pairs ({calibration['method']}); int8 nodes: {ops}")


def _sizes(ctx: click.Context, param: click.Parameter, value: str | None) -> int | list[int] | None:
    """One count for every layer ("8") or one per layer ("10,11,10,8,6,5")."""
    if value is None:
        return None
    try:
        sizes = [int(part) for part in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a count or a comma-separated list of counts") from None
    if any(size < 1 for size in sizes):
        raise click.BadParameter(f"{value!r}: every layer keeps at least 1")
    return sizes[0] if len(sizes) == 1 else sizes


@model.command("prune")
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--onnx-file", default=None, help="ONNX file to prune [default: the directory's]")
@click.option("--heads", callback=_sizes, help="attention heads each layer keeps: N for all, or N,N,... per layer")
@click.option("--ffn", callback=_sizes, help="feed-forward neurons each layer keeps: N for all, or N,N,... per layer")
@click.option(
    "--calibration-corpus",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="BEIR folder whose pairs rank the heads and neurons and refit each layer (corpus.jsonl, queries, qrels)",
)
@_calibration_sampling()
@click.option("--output", default="model.pruned.onnx", help="file name written in MODEL_DIR")
def prune_command(
    model_dir: Path,
    onnx_file: str | None,
    heads: int | list[int] | None,
    ffn: int | list[int] | None,
    calibration_corpus: Path,
    calibration_split: str,
    calibration_pairs: int,
    calibration_seed: int,
    output: str,
) -> None:
    """Fewer attention heads and feed-forward neurons per layer; each layer refitted on calibration pairs.

    Writes a fused fp32 file (model.pruned.onnx); `model quantize --onnx-file model.pruned.onnx`
    makes its int8 copy. Check the result's NDCG with `es-rerank eval` before serving it.
    """
    if heads is None and ffn is None:
        raise click.UsageError("give --heads, --ffn or both")
    try:
        result = prune_model(
            model_dir, calibration_corpus, heads=heads, ffn=ffn, onnx_file=onnx_file,
            calibration_split=calibration_split, calibration_pairs=calibration_pairs, seed=calibration_seed,
            output=output, progress=lambda message: click.echo(f"[prune] {message}", err=True),
        )  # fmt: skip
    except RerankError as exc:
        _fail(exc)
    click.echo(
        f"wrote {result.output} ({_mb(result.source_bytes)} -> {_mb(result.output_bytes)}; "
        f"max |diff| {result.max_abs_diff:.3g} vs {result.source.name} on CPU)"
    )
    click.echo(f"heads per layer: {result.kept('attention')}; feed-forward neurons per layer: {result.kept('ffn')}")


@model.command("check")
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--reference",
    type=click.Path(path_type=Path),
    default=None,
    help="model directory or ONNX file to compare scores with",
)
@click.option("--onnx-file", default=None, help="ONNX file in MODEL_DIR [default: the directory's]")
@click.option(
    "--provider",
    "providers",
    multiple=True,
    default=("auto",),
    help="ONNX Runtime provider(s), in order (auto, cpu, cuda...)",
)
@click.option("--repeats", default=5, type=click.IntRange(min=1), help="timed runs after one warm-up")
@click.option("--tolerance", default=None, type=float, help="exit non-zero when max |diff| to the reference is larger")
def check_command(
    model_dir: Path,
    reference: Path | None,
    onnx_file: str | None,
    providers: tuple[str, ...],
    repeats: int,
    tolerance: float | None,
) -> None:
    """Load MODEL_DIR as the proxy does, score built-in pairs, report provider, latency and drift."""
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
