"""``es-rerank opensearch start|stop|status``: a local single-node OpenSearch for development."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from ..errors import RerankError
from ._common import _fail


@click.group()
def opensearch() -> None:
    """A local single-node OpenSearch for development, tests and the demo."""


def _node(version: str | None, port: int, distribution: str) -> Any:
    from ..tools.localnode import DEFAULT_VERSION, LocalOpenSearch

    if not version:
        version = DEFAULT_VERSION if distribution == "opensearch" else "7.10.2"
    return LocalOpenSearch(version=version, port=port, distribution=distribution, on_progress=click.echo)  # type: ignore[arg-type]


_node_options = [
    click.option("--version", "version", default=None, help="distribution version [default: 2.19.6]"),
    click.option("--port", default=9200, type=int, help="HTTP port on 127.0.0.1"),
    click.option("--distribution", default="opensearch", type=click.Choice(["opensearch", "elasticsearch"])),
]


def node_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_node_options):
        fn = option(fn)
    return fn


@opensearch.command("start")
@node_options
def opensearch_start(version: str | None, port: int, distribution: str) -> None:
    """Fetch (once) and start the node; wait until it answers."""
    try:
        status = _node(version, port, distribution).start()
    except RerankError as exc:
        _fail(exc)
    click.echo(f"running: {status.url} (pid {status.pid}, version {status.version})")


@opensearch.command("stop")
@node_options
def opensearch_stop(version: str | None, port: int, distribution: str) -> None:
    """Stop the node started by `opensearch start`."""
    try:
        stopped = _node(version, port, distribution).stop()
    except RerankError as exc:
        _fail(exc)
    click.echo("stopped" if stopped else "not running")


@opensearch.command("status")
@node_options
def opensearch_status(version: str | None, port: int, distribution: str) -> None:
    """Say whether the node runs and where."""
    status = _node(version, port, distribution).status()
    if status.running:
        click.echo(f"running: {status.url} (pid {status.pid}, version {status.version}, home {status.home})")
    else:
        click.echo("not running")
        sys.exit(3)
