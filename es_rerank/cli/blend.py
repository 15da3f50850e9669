"""``es-rerank blend``: the first-stage weight to blend into the model's score, chosen on a judged split."""

from __future__ import annotations

from pathlib import Path

import click

from ..blend import BLEND_METHODS
from ..errors import RerankError
from ..tools.blending import DEFAULT_WEIGHTS, format_report, run_blend, write_report
from ..tools.datasets import load_beir
from ..tools.planning import limit_queries
from ._common import _fail, load_checked_settings


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}") from None


@click.command("blend")
@click.option(
    "--config",
    "config_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML config (in-process, as eval)",
)
@click.option("--index", required=True, metavar="NAME", help="index name")
@click.option(
    "--queries",
    "queries_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="BEIR queries.jsonl of the split the weight is chosen on",
)
@click.option(
    "--qrels", "qrels_file", required=True, type=click.Path(dir_okay=False, path_type=Path), help="its qrels .tsv"
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="only the first N judged queries of the choosing split"
)
@click.option(
    "--report-limit",
    type=click.IntRange(min=1),
    default=None,
    help="only the first N judged queries of the report split",
)
@click.option(
    "--report-queries",
    "report_queries",
    type=click.Path(dir_okay=False, path_type=Path),
    help="queries of the split the choice is reported on",
)
@click.option("--report-qrels", "report_qrels", type=click.Path(dir_okay=False, path_type=Path), help="its qrels .tsv")
@click.option("--k", "k", default=100, show_default=True, help="window size K")
@click.option("--methods", default=",".join(BLEND_METHODS), show_default=True, help="normalizations to try")
@click.option(
    "--weights", default=",".join(str(w) for w in DEFAULT_WEIGHTS), show_default=True, help="first-stage weights to try"
)
@click.option(
    "--rerank-timeout",
    type=float,
    default=600.0,
    show_default=True,
    help="override server.rerank_timeout so a slow CPU is measured, not cut off",
)
@click.option(
    "--out",
    "out_dir",
    default="out/blend",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="folder for blend.json and table.txt",
)
def blend_command(
    config_file: Path,
    index: str,
    queries_file: Path,
    qrels_file: Path,
    limit: int | None,
    report_limit: int | None,
    report_queries: Path | None,
    report_qrels: Path | None,
    k: int,
    methods: str,
    weights: str,
    rerank_timeout: float,
    out_dir: Path,
) -> None:
    """Choose the first-stage weight (and normalization) to blend into the model's score on a judged split, and report it on another."""
    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    bad = [m for m in method_list if m not in BLEND_METHODS]
    if bad:
        raise click.BadParameter(f"unknown method(s) {bad}; known: {list(BLEND_METHODS)}", param_hint="--methods")
    if (report_queries is None) != (report_qrels is None):
        raise click.BadParameter("--report-queries and --report-qrels go together")
    try:
        settings = load_checked_settings(config_file)
        settings = settings.model_copy(
            update={"server": settings.server.model_copy(update={"rerank_timeout": rerank_timeout})}
        )
        choose = limit_queries(load_beir(queries_file, qrels_file), limit)
        report = (
            limit_queries(load_beir(report_queries, report_qrels), report_limit)
            if report_queries and report_qrels
            else None
        )
        result = run_blend(
            settings, index, choose, k=k, report=report, methods=method_list, weights=_floats(weights),
            progress=lambda message: click.echo(f"[blend] {message}", err=True),
        )  # fmt: skip
    except RerankError as exc:
        _fail(exc)
    text = format_report(result, index)
    click.echo(text)
    click.echo(f"\nwritten: {write_report(result, out_dir, text)}/blend.json, table.txt")
