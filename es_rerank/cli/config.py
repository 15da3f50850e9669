"""``es-rerank check-config``: validate a config file, listing every problem."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import RerankError
from ._common import _fail, load_checked_settings


@click.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def check_config_command(file: Path) -> None:
    """Validate a config FILE; list every problem and exit non-zero if any."""
    try:
        settings = load_checked_settings(file)
    except RerankError as exc:
        _fail(exc)
    click.echo(
        f"{file}: ok ({len(settings.models)} model(s), {len(settings.indices)} index rule(s), "
        f"upstream {settings.upstream.url})"
    )
