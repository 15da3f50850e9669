"""``es-rerank demo``: OpenSearch, SciFact and es-rerank with the demo model, in one command."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import RerankError
from ._common import _fail


@click.command()
@click.option("--port", default=8000, type=int, help="es-rerank's port")
@click.option("--opensearch-port", default=9200, type=int, help="the local OpenSearch's port")
@click.option(
    "--opensearch-url", default=None, metavar="URL", help="use this running OpenSearch instead of starting a local one"
)
@click.option(
    "--model",
    "model_dir",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="model directory [default: demo/model]",
)
@click.option(
    "--corpus",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="[default: demo/scifact/corpus.jsonl.gz]",
)
@click.option("--index", "index_name", default="scifact", help="the index to fill and rerank")
@click.option("--window", default=20, type=int, help="K: hits reranked per search (CPU: 20 answers in about a second)")
@click.option(
    "--write-config",
    "config_out",
    default="es-rerank.demo.yaml",
    type=click.Path(dir_okay=False, path_type=Path),
    help="where to write the config the demo serves (for serve, eval and plan)",
)
@click.pass_context
def demo(
    ctx: click.Context,
    port: int,
    opensearch_port: int,
    opensearch_url: str | None,
    model_dir: Path | None,
    corpus: Path | None,
    index_name: str,
    window: int,
    config_out: Path,
) -> None:
    """Start OpenSearch, index SciFact, serve es-rerank with the demo model."""
    from ..tools.demo import run_demo

    try:
        run_demo(
            port=port,
            opensearch_port=opensearch_port,
            opensearch_url=opensearch_url,
            model_dir=model_dir,
            corpus=corpus,
            index=index_name,
            window=window,
            config_out=config_out,
            log_level=ctx.obj["log_level"],
            echo=click.echo,
        )
    except RerankError as exc:
        _fail(exc)
