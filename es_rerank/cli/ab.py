"""``es-rerank ab report|simulate``: A/B and interleaving experiments, read back from OpenSearch."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import RerankError
from ._common import _fail

__all__ = ["ab"]

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"


@click.group("ab")
def ab() -> None:
    """Live experiments: reranked against BM25 order (A/B or team-draft interleaving), recorded in UBI's indices."""


@ab.command("report")
@click.option("--experiment", required=True, metavar="NAME", help="the experiment's name in the config")
@click.option(
    "--opensearch-url",
    default="http://127.0.0.1:9200",
    envvar="ES_RERANK_UPSTREAM_URL",
    help="where ubi_queries and ubi_events are",
)
@click.option(
    "--since",
    default=None,
    metavar="DATE",
    help="first search to count (ISO date/time or OpenSearch date math, e.g. now-7d)",
)
@click.option("--until", default=None, metavar="DATE", help="last search to count")
@click.option(
    "--out",
    "out_dir",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="folder for report.json, report.txt and report.png",
)
@click.option("--k", default=5, type=click.IntRange(min=1), help="CTR@k: a click in the top k")
@click.option(
    "--metric",
    default="rr",
    type=click.Choice(["rr", "ctr_at_k", "clicks", "abandoned"]),
    help="A/B: the metric of the accumulating curve and the impressions count",
)
@click.option("--queries-index", default="ubi_queries", help="ubi.queries_index of the config")
@click.option("--events-index", default="ubi_events", help="ubi.events_index of the config")
@click.option(
    "--click-action",
    "click_actions",
    multiple=True,
    default=["click"],
    help="action_name values counted as clicks (repeatable)",
)
@click.option("--username", default=None, envvar="ES_RERANK_UPSTREAM_USERNAME", help="OpenSearch user")
@click.option("--password", default=None, envvar="ES_RERANK_UPSTREAM_PASSWORD", help="OpenSearch password")
def report(
    experiment: str,
    opensearch_url: str,
    since: str | None,
    until: str | None,
    out_dir: Path | None,
    k: int,
    metric: str,
    queries_index: str,
    events_index: str,
    click_actions: tuple[str, ...],
    username: str | None,
    password: str | None,
) -> None:
    """Per arm: searches, users, CTR@k, clicks per search, reciprocal rank, abandonment; the
    difference with a bootstrap CI and p-value (A/B) or wins/losses/ties with a sign test (interleaving)."""
    from ..tools.ab.report import format_report, report_command

    try:
        result, paths = report_command(
            opensearch_url,
            experiment,
            since=since,
            until=until,
            out_dir=out_dir,
            queries_index=queries_index,
            events_index=events_index,
            k=k,
            metric=metric,
            click_actions=click_actions,
            auth=(username, password or "") if username else None,
        )
    except RerankError as exc:
        _fail(exc)
    click.echo(format_report(result))
    if paths:
        click.echo("wrote " + ", ".join(str(p) for p in paths.values()))


@ab.command("simulate")
@click.option(
    "--opensearch-url",
    default="http://127.0.0.1:9200",
    envvar="ES_RERANK_UPSTREAM_URL",
    help="a running OpenSearch with the corpus indexed",
)
@click.option("--index", default="scifact", help="the indexed corpus (es-rerank index)")
@click.option(
    "--model",
    "model_dir",
    default=str(SHARED / "models" / "scifact-minilm-l6-ce"),
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="model directory",
)
@click.option(
    "--queries",
    "queries_file",
    default=str(SHARED / "datasets" / "scifact" / "queries-dev.jsonl"),
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="BEIR queries.jsonl",
)
@click.option(
    "--qrels",
    "qrels_file",
    default=str(SHARED / "datasets" / "scifact" / "qrels" / "dev.tsv"),
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="BEIR qrels .tsv",
)
@click.option("--window", default=20, type=click.IntRange(min=2), help="K: hits reranked per search")
@click.option("--users", default=1000, type=click.IntRange(min=2), help="simulated users (stable client ids)")
@click.option("--ab-impressions", default=16000, type=click.IntRange(min=10), help="searches in the A/B experiment")
@click.option(
    "--interleave-impressions",
    default=6000,
    type=click.IntRange(min=10),
    help="searches in the interleaving experiment",
)
@click.option("--page-size", default=10, type=click.IntRange(min=1), help="hits per page shown to a simulated user")
@click.option(
    "--attract-rel", default=0.8, type=click.FloatRange(0, 1), help="click probability of a relevant hit the user reads"
)
@click.option(
    "--attract-nonrel", default=0.1, type=click.FloatRange(0, 1), help="click probability of a non-relevant hit"
)
@click.option("--gamma", default=0.9, type=click.FloatRange(0, 1), help="probability of reading on to the next hit")
@click.option("--concurrency", default=4, type=click.IntRange(min=1), help="searches in flight")
@click.option("--seed", default=1, type=int, help="seed of users, queries and clicks")
@click.option(
    "--out",
    "out_dir",
    default="out/ab-sim",
    type=click.Path(file_okay=False, path_type=Path),
    help="folder for simulation.json/png and each mode's report",
)
@click.option("--progress/--no-progress", default=True, help="progress bars on stderr")
def simulate(
    opensearch_url: str,
    index: str,
    model_dir: Path,
    queries_file: Path,
    qrels_file: Path,
    window: int,
    users: int,
    ab_impressions: int,
    interleave_impressions: int,
    page_size: int,
    attract_rel: float,
    attract_nonrel: float,
    gamma: float,
    concurrency: int,
    seed: int,
    out_dir: Path,
    progress: bool,
) -> None:
    """Run the whole loop: simulated users search through an in-process proxy, click by a
    cascade model on the qrels, post UBI events; then the report of each mode."""
    from ..tools.ab.simulate import ClickModel, format_summary
    from ..tools.ab.simulate import simulate as run

    try:
        summary = run(
            opensearch_url=opensearch_url,
            model_dir=model_dir,
            queries_file=queries_file,
            qrels_file=qrels_file,
            index=index,
            window=window,
            users=users,
            impressions_ab=ab_impressions,
            impressions_il=interleave_impressions,
            page_size=page_size,
            clicks=ClickModel(attract_rel=attract_rel, attract_nonrel=attract_nonrel, gamma=gamma),
            seed=seed,
            concurrency=concurrency,
            out_dir=out_dir,
            progress=progress,
            echo=lambda line: click.echo(line, err=True),
        )
    except RerankError as exc:
        _fail(exc)
    from ..tools.ab.report import format_report

    for mode in ("ab", "interleave"):
        click.echo(format_report(summary["reports"][mode]))
        click.echo("")
    click.echo(format_summary(summary))
    click.echo(f"{summary['seconds']} s; UBI documents dropped: {summary['ubi_dropped'] or 'none'}; wrote {out_dir}/")
