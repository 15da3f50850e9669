"""``es-rerank serve``: the proxy in front of OpenSearch."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..config import load_settings
from ..errors import RerankError
from ._common import _fail


@click.command()
@click.option(
    "--config", "config_file", required=True, type=click.Path(dir_okay=False, path_type=Path), help="YAML config"
)
@click.option("--host", default=None, help="bind address [default: server.host of the config]")
@click.option("--port", default=None, type=int, help="port [default: server.port of the config]")
@click.pass_context
def serve(ctx: click.Context, config_file: Path, host: str | None, port: int | None) -> None:
    """Serve the proxy in front of OpenSearch."""
    from .. import server  # looked up at call time: tests replace server.serve

    try:
        server.serve(load_settings(config_file), host=host, port=port, log_level=ctx.obj["log_level"])
    except RerankError as exc:
        _fail(exc)


def serve_argv(config_file: Path, *, port: int | None = None, log_level: str = "warning") -> list[str]:
    """The command line that runs ``es-rerank serve`` in a child process on this interpreter
    (benchmarks and tests start real servers with it)."""
    argv = [sys.executable, "-m", "es_rerank.cli", "--log-level", log_level, "serve", "--config", str(config_file)]
    return argv + (["--port", str(port)] if port is not None else [])
