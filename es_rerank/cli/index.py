"""``es-rerank index``: bulk-load a BEIR corpus into the config's upstream."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import load_settings
from ..errors import RerankError
from ._common import _fail


@click.command()
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--index", "index", required=True, help="index name")
@click.option(
    "--corpus",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="BEIR corpus.jsonl(.gz)",
)
@click.option(
    "--mapping",
    default=None,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="index body JSON, e.g. mappings/scifact.json",
)
@click.option("--recreate", is_flag=True, help="delete the index first")
def index(config_file: Path, index: str, corpus: Path, mapping: Path | None, recreate: bool) -> None:
    """Bulk-load a BEIR corpus into OpenSearch (the config's upstream)."""
    from ..tools.indexing import index_into_upstream

    try:
        n = index_into_upstream(load_settings(config_file).upstream, index, corpus, mapping=mapping, recreate=recreate)
    except RerankError as exc:
        _fail(exc)
    click.echo(f"indexed {n} documents into [{index}]")
