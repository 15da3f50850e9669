"""What every command shares: click's context settings and the one way a command fails."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import click

from ..config import Settings, check_model_files, load_settings
from ..errors import ConfigError, RerankError

__all__ = ["CONTEXT", "_fail", "load_checked_settings", "judged_queries_options"]

F = TypeVar("F", bound=Callable[..., object])

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "auto_envvar_prefix": "ES_RERANK"}


def _fail(exc: RerankError) -> NoReturn:
    """Print ``error: <reason>`` on stderr and exit 1 (every command's failure)."""
    click.echo(f"error: {exc.reason}", err=True)
    sys.exit(1)


def load_checked_settings(path: Path) -> Settings:
    """A config file's settings, with its model files checked: every problem at once, as a ConfigError."""
    settings = load_settings(path)
    problems = check_model_files(settings)
    if problems:
        raise ConfigError("invalid configuration", problems)
    return settings


def judged_queries_options(command: F) -> F:
    """``--index``, ``--queries`` and ``--qrels``: what ``eval`` and ``plan`` measure on."""
    beir_file = click.Path(dir_okay=False, path_type=Path)
    for option in reversed(
        (
            click.option("--index", "index", required=True, metavar="NAME", help="index name"),
            click.option("--queries", "queries_file", required=True, type=beir_file, help="BEIR queries.jsonl"),
            click.option("--qrels", "qrels_file", required=True, type=beir_file, help="BEIR qrels .tsv (with header)"),
        )
    ):
        command = option(command)
    return command
