"""The ``es-rerank`` command: click only, one file per command group, each command one call into tools/ or serving."""

from __future__ import annotations

import logging

import click

from ._common import CONTEXT
from .ab import ab
from .bench import bench
from .blend import blend_command
from .config import check_config_command
from .demo import demo
from .eval import eval_command
from .index import index
from .model import model
from .opensearch import opensearch
from .plan import plan_command
from .serve import serve

__all__ = ["main"]


@click.group(context_settings=CONTEXT)
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@click.pass_context
def main(ctx: click.Context, log_level: str) -> None:
    """es-rerank: reranks OpenSearch search results with a cross-encoder."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Per-request client logs would drown progress bars and es-rerank's own lines.
    for noisy in ("opensearch", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    ctx.obj = {"log_level": log_level}


for command in (
    check_config_command,
    serve,
    opensearch,
    index,
    demo,
    model,
    eval_command,
    bench,
    blend_command,
    plan_command,
    ab,
):
    main.add_command(command)
