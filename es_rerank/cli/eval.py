"""``es-rerank eval``: quality and cost of reranking per K on BEIR data."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import RerankError
from ..tools.evaluation import format_table, run_eval
from ._common import _fail, judged_queries_options, load_checked_settings


@click.command("eval")
@click.option(
    "--config",
    "config_file",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML config: evaluate in-process, through the same code the server runs",
)
@click.option(
    "--proxy", "proxy_url", default=None, metavar="URL", help="URL of a running es-rerank (black-box; needs --upstream)"
)
@click.option(
    "--upstream",
    "upstream_url",
    default=None,
    metavar="URL",
    help="OpenSearch URL for the first stage [default with --config: upstream.url]",
)
@judged_queries_options
@click.option("--k", "ks", default="10,20,50,100", metavar="K,...", help="window sizes K to evaluate, comma-separated")
@click.option(
    "--out",
    "out_dir",
    default="out/eval",
    type=click.Path(file_okay=False, path_type=Path),
    help="folder for results.json, table.txt and the plot",
)
@click.option(
    "--fields",
    default="title,text",
    metavar="FIELD,...",
    help="fields of the default first-stage query (black-box mode; with --config: the index's fields)",
)
@click.option(
    "--rerank-timeout",
    default=None,
    type=float,
    metavar="SECONDS",
    help="override server.rerank_timeout (in-process) so a slow CPU is measured, not cut off",
)
@click.option("--progress/--no-progress", default=True, help="a progress bar per K on stderr")
def eval_command(
    config_file: Path | None,
    proxy_url: str | None,
    upstream_url: str | None,
    index: str,
    queries_file: Path,
    qrels_file: Path,
    ks: str,
    out_dir: Path,
    fields: str,
    rerank_timeout: float | None,
    progress: bool,
) -> None:
    """Measure NDCG@10, MRR@10, Recall and the rerank stage's latency for each K on BEIR data."""
    try:
        result, paths = run_eval(
            index=index,
            queries_file=queries_file,
            qrels_file=qrels_file,
            settings=load_checked_settings(config_file) if config_file is not None else None,
            settings_name=str(config_file) if config_file is not None else None,
            proxy_url=proxy_url,
            upstream_url=upstream_url,
            ks=ks,
            fields=[f.strip() for f in fields.split(",") if f.strip()],
            rerank_timeout=rerank_timeout,
            out_dir=out_dir,
            progress=progress,
            note=lambda line: click.echo(line, err=True),
        )
    except RerankError as exc:
        _fail(exc)
    click.echo(format_table(result))
    click.echo(f"\nwrote {paths['results']}, {paths['table']} and {paths['plot']}")
