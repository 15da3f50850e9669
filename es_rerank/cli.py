"""The ``es-rerank`` command: a thin layer over the typed API."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from .config import check_model_files, load_settings
from .errors import RerankError
from .bench import bench
from .evaluation import eval_command
from .modeltools import model
from .planning import plan_command

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "auto_envvar_prefix": "ES_RERANK"}


def _fail(exc: RerankError) -> None:
    click.echo(f"error: {exc.reason}", err=True)
    sys.exit(1)


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


@main.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def check_config(file: Path) -> None:
    """Validate a config FILE; list every problem and exit non-zero if any."""
    try:
        settings = load_settings(file)
        problems = check_model_files(settings)
        if problems:
            from .errors import ConfigError

            raise ConfigError("invalid configuration", problems)
    except RerankError as exc:
        _fail(exc)
    click.echo(
        f"{file}: ok ({len(settings.models)} model(s), {len(settings.indices)} index rule(s), "
        f"upstream {settings.upstream.url})"
    )


@main.command()
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False, path_type=Path), help="YAML config")
@click.option("--host", default=None, help="bind address [default: server.host of the config]")
@click.option("--port", default=None, type=int, help="port [default: server.port of the config]")
@click.pass_context
def serve(ctx: click.Context, config_file: Path, host: str | None, port: int | None) -> None:
    """Serve the proxy in front of OpenSearch."""
    from .server import serve as run

    try:
        run(load_settings(config_file), host=host, port=port, log_level=ctx.obj["log_level"])
    except RerankError as exc:
        _fail(exc)


@main.group()
def opensearch() -> None:
    """A local single-node OpenSearch for development, tests and the demo."""


def _node(version: str, port: int, distribution: str):
    from .localnode import LocalOpenSearch

    return LocalOpenSearch(version=version, port=port, distribution=distribution, on_progress=click.echo)


_node_options = [
    click.option("--version", "version", default=None, help="distribution version [default: 2.19.6]"),
    click.option("--port", default=9200, type=int, help="HTTP port on 127.0.0.1"),
    click.option("--distribution", default="opensearch", type=click.Choice(["opensearch", "elasticsearch"])),
]


def node_options(fn):
    for option in reversed(_node_options):
        fn = option(fn)
    return fn


def _version(version: str | None, distribution: str) -> str:
    from .localnode import DEFAULT_VERSION

    if version:
        return version
    return DEFAULT_VERSION if distribution == "opensearch" else "7.10.2"


@opensearch.command("start")
@node_options
def opensearch_start(version: str | None, port: int, distribution: str) -> None:
    """Fetch (once) and start the node; wait until it answers."""
    try:
        status = _node(_version(version, distribution), port, distribution).start()
    except RerankError as exc:
        _fail(exc)
    click.echo(f"running: {status.url} (pid {status.pid}, version {status.version})")


@opensearch.command("stop")
@node_options
def opensearch_stop(version: str | None, port: int, distribution: str) -> None:
    """Stop the node started by `opensearch start`."""
    try:
        stopped = _node(_version(version, distribution), port, distribution).stop()
    except RerankError as exc:
        _fail(exc)
    click.echo("stopped" if stopped else "not running")


@opensearch.command("status")
@node_options
def opensearch_status(version: str | None, port: int, distribution: str) -> None:
    """Say whether the node runs and where."""
    status = _node(_version(version, distribution), port, distribution).status()
    if status.running:
        click.echo(f"running: {status.url} (pid {status.pid}, version {status.version}, home {status.home})")
    else:
        click.echo("not running")
        sys.exit(3)


@main.command()
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--index", "index", required=True, help="index name")
@click.option("--corpus", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path), help="BEIR corpus.jsonl(.gz)")
@click.option("--mapping", default=None, type=click.Path(dir_okay=False, exists=True, path_type=Path), help="index body JSON, e.g. mappings/scifact.json")
@click.option("--recreate", is_flag=True, help="delete the index first")
def index(config_file: Path, index: str, corpus: Path, mapping: Path | None, recreate: bool) -> None:
    """Bulk-load a BEIR corpus into OpenSearch (the config's upstream)."""
    from opensearchpy import OpenSearch

    from .indexing import index_corpus, load_mapping

    try:
        settings = load_settings(config_file)
        up = settings.upstream
        auth = (up.username, up.password) if up.username else None
        client = OpenSearch(up.url, http_auth=auth, timeout=up.timeout, verify_certs=up.verify_certs)
        n = index_corpus(client, index, corpus, mapping=load_mapping(mapping) if mapping else None, recreate=recreate)
    except RerankError as exc:
        _fail(exc)
    click.echo(f"indexed {n} documents into [{index}]")


@main.command()
@click.option("--port", default=8000, type=int, help="es-rerank's port")
@click.option("--opensearch-port", default=9200, type=int, help="the local OpenSearch's port")
@click.option("--opensearch-url", default=None, metavar="URL", help="use this running OpenSearch instead of starting a local one")
@click.option("--model", "model_dir", default=None, type=click.Path(file_okay=False, path_type=Path), help="model directory [default: demo/model]")
@click.option("--corpus", default=None, type=click.Path(dir_okay=False, path_type=Path), help="[default: demo/scifact/corpus.jsonl.gz]")
@click.option("--index", "index_name", default="scifact", help="the index to fill and rerank")
@click.option("--window", default=20, type=int, help="K: hits reranked per search (CPU: 20 answers in about a second)")
@click.option("--write-config", "config_out", default="es-rerank.demo.yaml", type=click.Path(dir_okay=False, path_type=Path), help="where to write the config the demo serves (for serve, eval and plan)")
@click.pass_context
def demo(ctx: click.Context, port: int, opensearch_port: int, opensearch_url: str | None, model_dir: Path | None,
         corpus: Path | None, index_name: str, window: int, config_out: Path) -> None:
    """Start OpenSearch, index SciFact, serve es-rerank with the demo model."""
    import logging
    import socket

    from .localnode import LocalOpenSearch
    from .config import settings_from_dict
    from .server import demo_config, prepare_demo_index, repo_root, serve as run, when_serving, write_demo_config

    root = repo_root()
    model_dir = model_dir or root / "demo" / "model"
    corpus = corpus or root / "demo" / "scifact" / "corpus.jsonl.gz"
    mapping = root / "mappings" / "scifact.json"
    # The demo tells its own progress; the indexer's log lines would say it a second time.
    logging.getLogger("es_rerank.indexing").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        for path in (model_dir, corpus, mapping):
            if not path.exists():
                raise RerankError(f"{path} not found: run the demo from a checkout of es-rerank, or pass --model/--corpus")
        with socket.socket() as probe:  # a taken port would answer the "serving" check for someone else
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                raise RerankError(f"port {port} is taken: pass another --port") from None
        if opensearch_url is None:
            status = LocalOpenSearch(port=opensearch_port, on_progress=click.echo).start()
            upstream, where = status.url, f"OpenSearch {status.version} at {status.url}"
        else:
            upstream, where = opensearch_url.rstrip("/"), f"OpenSearch at {opensearch_url}"
        click.echo(where)
        prepare_demo_index(upstream, corpus, mapping, index=index_name, echo=click.echo)
        config = demo_config(upstream_url=upstream, model_dir=model_dir, port=port, window=window, index=index_name)
        settings = settings_from_dict(config, env={})
        written = write_demo_config(config_out, config)
        click.echo(f"wrote the config it serves to {written}")
        proxy = f"http://127.0.0.1:{port}"
        query = '{"query":{"match":{"text":"vitamin D deficiency and depression"}},"size":5,"_source":["title"]}'
        stop = "Stop with Ctrl-C." if opensearch_url else f"Stop with Ctrl-C; `es-rerank opensearch stop --port {opensearch_port}` stops OpenSearch."
        banner = (
            f"\nes-rerank serving on {proxy}: index [{index_name}] reranked with K = {window} on CPU "
            f"(about a second a search; raise --window for quality, lower it for speed).\n"
            f"Try the same query direct and through es-rerank:\n"
            f"  curl -s -H 'content-type: application/json' '{upstream}/{index_name}/_search?pretty' -d '{query}'\n"
            f"  curl -s -H 'content-type: application/json' '{proxy}/{index_name}/_search?pretty' -d '{query}'\n"
            f"Measure it: es-rerank eval --config {written} --index {index_name} ...  (see README)\n{stop}\n"
        )
        click.echo("loading the model ...")
        when_serving("127.0.0.1", port, lambda: click.echo(banner))
        run(settings, port=port, log_level=ctx.obj["log_level"])
    except RerankError as exc:
        _fail(exc)


main.add_command(model)
main.add_command(eval_command)
main.add_command(bench)
main.add_command(plan_command)

if __name__ == "__main__":  # pragma: no cover
    main()
