"""``es-rerank plan``: the K, max_tokens and model with the best NDCG@10 within a p95 budget."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click

from ..errors import RerankError
from ..tools.datasets import load_beir
from ..tools.evaluation import parse_ks
from ..tools.planning import config_block, format_plan_table, limit_queries, plan, write_plan_outputs
from ._common import _fail, judged_queries_options, load_checked_settings


@click.command("plan")
@click.option(
    "--config",
    "config_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML config: upstream, the index's rule, the models",
)
@judged_queries_options
@click.option(
    "--p95-ms",
    "budget",
    required=True,
    type=click.FloatRange(min=0, min_open=True),
    help="budget: the rerank stage's p95 in ms",
)
@click.option("--concurrency", default=1, type=click.IntRange(min=1), help="searches in flight at once")
@click.option("--k", "ks", default="10,20,50,100", metavar="K,...", help="window sizes K")
@click.option(
    "--max-tokens",
    "max_tokens",
    default="128,192,256",
    metavar="N,...",
    help="max_tokens (tokens per query-passage pair)",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="NAME",
    help="a configured model to try (repeatable) [default: every model of the config]",
)
@click.option("--limit", default=None, type=click.IntRange(min=1), help="only the first N judged queries")
@click.option(
    "--rerank-timeout",
    default=None,
    type=float,
    metavar="SECONDS",
    help="cut a search's scoring off here [default: 3 x the budget, at least 1 s]",
)
@click.option(
    "--out",
    "out_dir",
    default="out/plan",
    type=click.Path(file_okay=False, path_type=Path),
    help="folder for plan.json, table.txt, plan.png and config.yaml",
)
@click.option("--progress/--no-progress", default=True, help="a progress bar on stderr")
def plan_command(
    config_file: Path,
    index: str,
    queries_file: Path,
    qrels_file: Path,
    budget: float,
    concurrency: int,
    ks: str,
    max_tokens: str,
    models: tuple[str, ...],
    limit: int | None,
    rerank_timeout: float | None,
    out_dir: Path,
    progress: bool,
) -> None:
    """Find the K, max_tokens and model with the best NDCG@10 within a p95 budget, on this machine."""
    try:
        settings = load_checked_settings(config_file)
        data = limit_queries(load_beir(queries_file, qrels_file), limit)
        result = plan(
            data,
            settings=settings,
            index=index,
            budget_p95_ms=budget,
            ks=parse_ks(ks),
            max_tokens=parse_ks(max_tokens),
            models=list(models) or None,
            concurrency=concurrency,
            rerank_timeout=rerank_timeout,
            progress=progress,
            echo=lambda line: click.echo(line, err=True),
        )
        paths = write_plan_outputs(result, out_dir)
    except RerankError as exc:
        _fail(exc)
        return
    click.echo(format_plan_table(result))
    files = ", ".join(str(p) for p in paths.values())
    if result.best is None:
        fastest = min((c for c in result.cells if not math.isnan(c.p95_ms)), key=lambda c: c.p95_ms, default=None)
        click.echo(
            f"\nno configuration meets p95 <= {budget:g} ms"
            + (
                f"; the fastest: model {fastest.model}, K = {fastest.k}, max_tokens {fastest.max_tokens}, "
                f"p95 {fastest.p95_ms:.0f} ms"
                if fastest
                else ""
            )
        )
        click.echo(f"wrote {files}")
        sys.exit(3)
    click.echo("\n" + config_block(result))
    click.echo(f"\nwrote {files}")
