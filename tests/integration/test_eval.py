"""`es-rerank eval` end to end: real OpenSearch, the proxy in-process and served, the CLI.

A small SciFact index (a few hundred documents plus the relevant documents of a
handful of dev queries) and the tiny test model keep it fast; what is checked is
the wiring: the table, results.json, the plot, that the first stage is what
OpenSearch answers, that in-process and black-box agree, and the bad-input errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from demoslice import index_demo_slice
from opensearchpy import OpenSearch

from es_rerank import create_app, load_settings
from es_rerank.cli.eval import eval_command
from es_rerank.tools.evaluation import default_first_stage_query, first_stage_body, rank_metrics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
INDEX = "rr-eval"
N_QUERIES = 8
N_DOCS = 300
MAX_WINDOW = 50


def _cli(args: list[str]):
    """Through `es-rerank eval` when the command is registered, else the command itself."""
    from es_rerank.cli import main

    if "eval" in main.commands:
        return CliRunner().invoke(main, ["eval", *args])
    return CliRunner().invoke(eval_command, args)


@pytest.fixture(scope="module")
def beir(opensearch_url, tmp_path_factory):
    """Queries, qrels (the first dev queries) and an index holding their relevant documents."""
    out = tmp_path_factory.mktemp("beir")
    client = OpenSearch(opensearch_url, timeout=60)
    n_docs = index_demo_slice(client, INDEX, out, queries=N_QUERIES, docs=N_DOCS)
    yield {
        "dir": out,
        "queries": out / "queries.jsonl",
        "qrels": out / "qrels.tsv",
        "client": client,
        "docs": n_docs,
    }
    client.indices.delete(index=INDEX, ignore_unavailable=True)


@pytest.fixture(scope="module")
def config(beir, opensearch_url, tiny_model_dir) -> Path:
    path = beir["dir"] / "es-rerank.yaml"
    path.write_text(
        f"upstream: {{url: '{opensearch_url}', timeout: 30}}\n"
        f"models: {{tiny: {{path: '{tiny_model_dir}'}}}}\n"
        f"indices: [{{pattern: 'rr-eval*', model: tiny, window: 20, max_window: {MAX_WINDOW}}}]\n"
    )
    return path


def _args(beir, *extra: str) -> list[str]:
    return ["--index", INDEX, "--queries", str(beir["queries"]), "--qrels", str(beir["qrels"]), "--no-progress", *extra]


@pytest.fixture(scope="module")
def in_process(beir, config):
    out = beir["dir"] / "out-in-process"
    result = _cli(_args(beir, "--config", str(config), "--k", "10,20", "--out", str(out)))
    return result, out


def test_in_process_table_results_and_plot(in_process):
    result, out = in_process
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"index [{INDEX}], {N_QUERIES} queries (in-process: ")
    assert lines[2].split() == [
        "K",
        "|",
        "NDCG@10",
        "MRR@10",
        "Recall@K",
        "|",
        "NDCG@10",
        "MRR@10",
        "Recall@10",
        "|",
        "p50",
        "p95",
        "|",
        "pairs/s",
    ]
    rows = {line.split()[0]: line.split() for line in lines[4:6]}
    assert set(rows) == {"10", "20"}
    assert all(len(row) == 14 for row in rows.values())

    data = json.loads((out / "results.json").read_text())
    assert {
        "index",
        "mode",
        "target",
        "upstream",
        "first_stage_query",
        "queries",
        "unjudged",
        "model",
        "results",
    } <= set(data)
    assert data["mode"] == "in-process" and data["queries"] == N_QUERIES and data["model"] == "tiny"
    assert data["first_stage_query"] == default_first_stage_query(["title", "text"])
    by_k = {r["k"]: r for r in data["results"]}
    assert set(by_k) == {10, 20}
    for k, r in by_k.items():
        assert set(r["first_stage"]) == {"ndcg@10", "mrr@10", f"recall@{k}"}
        assert set(r["reranked"]) == {"ndcg@10", "mrr@10", "recall@10"}
        assert set(r["latency"]) >= {"rerank_p50_ms", "rerank_p95_ms", "pairs", "pairs_per_s"}
        assert 0 < r["latency"]["pairs"] <= k * N_QUERIES and r["latency"]["pairs_per_s"] > 0
        assert r["fallbacks"] == 0
        assert len(r["per_query"]) == N_QUERIES
    assert by_k[20]["first_stage"]["recall@20"] >= by_k[10]["first_stage"]["recall@10"]
    # At K = 10 the reranked page holds the same documents as the first stage's top 10.
    assert by_k[10]["reranked"]["recall@10"] == pytest.approx(by_k[10]["first_stage"]["recall@10"])
    assert (out / "ndcg_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "table.txt").read_text().splitlines()[2] == lines[2]


def test_first_stage_is_what_opensearch_answers(in_process, beir):
    _, out = in_process
    data = json.loads((out / "results.json").read_text())
    queries = [json.loads(line) for line in beir["queries"].read_text().splitlines()]
    qrels: dict[str, dict[str, int]] = {}
    for line in beir["qrels"].read_text().splitlines()[1:]:
        qid, did, rel = line.split("\t")
        qrels.setdefault(qid, {})[did] = int(rel)
    template = default_first_stage_query(["title", "text"])
    run = {
        q["_id"]: [
            h["_id"]
            for h in beir["client"].search(index=INDEX, body=first_stage_body(template, q["text"], size=20))["hits"][
                "hits"
            ]
        ]
        for q in queries
    }
    expected, _ = rank_metrics(qrels, run, recall_at=20)
    got = next(r for r in data["results"] if r["k"] == 20)["first_stage"]
    assert got == pytest.approx(expected)


def test_black_box_agrees_with_in_process(in_process, beir, config, opensearch_url, serve_app):
    _, in_out = in_process
    out = beir["dir"] / "out-black-box"
    with serve_app(create_app(load_settings(config))) as served:
        result = _cli(
            _args(beir, "--proxy", served.url, "--upstream", opensearch_url, "--k", "10,20", "--out", str(out))
        )
    assert result.exit_code == 0, result.output
    assert f"(black-box: {served.url})" in result.output.splitlines()[0]
    black = json.loads((out / "results.json").read_text())
    inproc = json.loads((in_out / "results.json").read_text())
    assert black["mode"] == "black-box"
    for b, i in zip(black["results"], inproc["results"]):
        assert b["k"] == i["k"]
        assert b["first_stage"] == pytest.approx(i["first_stage"])
        assert b["reranked"] == pytest.approx(i["reranked"])  # same model, same code: same ranking
        # In-process runs without the score cache: K = 20 scores all its 20 pairs a query,
        # where the served proxy (caches on) finds the first 10 from the K = 10 run.
        assert i["latency"]["pairs"] == b["k"] * N_QUERIES
        assert b["latency"]["pairs"] == (N_QUERIES * 10 if b["k"] == 10 else i["latency"]["pairs"] - N_QUERIES * 10)
    assert (out / "ndcg_latency.png").is_file()


# --- bad input: one clear message, exit status 1 ---------------------------------


def _one_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_qrels_with_unknown_query_ids(beir, config):
    bad = beir["dir"] / "bad-qrels.tsv"
    bad.write_text(beir["qrels"].read_text() + "999999\t4983\t1\n")
    args = _args(beir, "--config", str(config), "--k", "10", "--out", str(beir["dir"] / "o1"))
    args[args.index("--qrels") + 1] = str(bad)
    message = _one_error(_cli(args))
    assert "judges 1 query id(s)" in message and "'999999'" in message


def test_empty_queries_file(beir, config):
    empty = beir["dir"] / "empty.jsonl"
    empty.write_text("")
    args = _args(beir, "--config", str(config), "--k", "10", "--out", str(beir["dir"] / "o2"))
    args[args.index("--queries") + 1] = str(empty)
    assert _one_error(_cli(args)) == f"error: queries file {empty} holds no queries"


def test_k_larger_than_max_window(beir, config):
    message = _one_error(
        _cli(_args(beir, "--config", str(config), "--k", f"10,{MAX_WINDOW + 1}", "--out", str(beir["dir"] / "o3")))
    )
    assert message == (
        f"error: K = {MAX_WINDOW + 1} is larger than the index's max_window ({MAX_WINDOW}); "
        "lower K or raise max_window for [rr-eval*]"
    )
    assert not (beir["dir"] / "o3").exists()


def test_k_larger_than_max_window_black_box(beir, config, opensearch_url, serve_app):
    with serve_app(create_app(load_settings(config))) as served:
        result = _cli(
            _args(
                beir,
                "--proxy",
                served.url,
                "--upstream",
                opensearch_url,
                "--k",
                f"10,{MAX_WINDOW + 1}",
                "--out",
                str(beir["dir"] / "o4"),
            )
        )
    message = _one_error(result)
    assert f"(K = {MAX_WINDOW + 1}) answered 400" in message
    assert f"[ext.rerank.window_size] {MAX_WINDOW + 1} is larger than the maximum of {MAX_WINDOW}" in message


def test_missing_index(beir, config):
    # Matches the config's pattern, but OpenSearch has no such index: said before any scoring.
    args = _args(beir, "--config", str(config), "--k", "10", "--out", str(beir["dir"] / "o5"))
    args[args.index("--index") + 1] = "rr-eval-missing"
    message = _one_error(_cli(args))
    assert "answered 404: index_not_found_exception" in message


# --- fallbacks are counted apart from the latency -------------------------------


class _EveryOtherFallsBack:
    """The real proxy, with every second search's answer marked as a timeout fallback.

    A fallback's x-rerank-inference-ms is its deadline (here 99999 ms), not scoring
    time: eval must count it by outcome and keep it out of p50/p95 and pairs/s.
    """

    def __init__(self, app) -> None:
        self.app = app
        self.searches = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        self.searches += 1
        fall_back = self.searches % 2 == 0

        async def send_marked(message):
            if fall_back and message["type"] == "http.response.start":
                marks = {
                    b"x-rerank": b"fallback",
                    b"x-rerank-reason": b"rerank_timeout",
                    b"x-rerank-inference-ms": b"99999.0",
                }
                headers = [(k, marks.get(k.lower(), v)) for k, v in message["headers"]]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_marked)


def test_fallbacks_reported_apart_from_latency(beir, config):
    import asyncio

    from es_rerank.tools.datasets import load_beir
    from es_rerank.tools.evaluation import evaluate_async, format_table

    settings = load_settings(config)
    proxy = create_app(settings)
    app = _EveryOtherFallsBack(proxy)
    data = load_beir(beir["queries"], beir["qrels"])

    async def run():
        try:
            return await evaluate_async(data, index=INDEX, ks=[10], settings=settings, app=app)
        finally:
            await proxy.upstream.aclose()

    result = asyncio.run(run())
    r = result.results[0]
    # The preflight's search (size 0) is the first POST; queries alternate after it.
    assert r.outcomes == {"reranked/reranked": N_QUERIES // 2, "fallback/rerank_timeout": N_QUERIES // 2}
    assert r.fallbacks == N_QUERIES // 2 and r.reranked_count == N_QUERIES // 2
    assert r.rerank_p95_ms < 99999.0 and r.rerank_p50_ms < 99999.0
    assert r.pairs <= 10 * (N_QUERIES // 2)
    data_out = r.to_dict()
    assert data_out["latency"]["reranked_answers"] == N_QUERIES // 2
    assert data_out["outcomes"]["fallback/rerank_timeout"] == N_QUERIES // 2
    assert {q["outcome"] for q in data_out["per_query"].values()} == {"reranked/reranked", "fallback/rerank_timeout"}
    table = format_table(result)
    assert (
        f"K = 10: {N_QUERIES // 2} of {N_QUERIES} answer(s) not reranked (fallback/rerank_timeout {N_QUERIES // 2})"
        in table
    )
