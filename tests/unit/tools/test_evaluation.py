"""es_rerank.tools.evaluation: metrics against hand computation, the first-stage query, the table, the command's checks."""

from __future__ import annotations

import copy
import json
import math

import pytest
from click.testing import CliRunner

from es_rerank.cli.eval import eval_command
from es_rerank.errors import EvaluationError
from es_rerank.tools.evaluation import (
    EvalResult,
    KResult,
    default_first_stage_query,
    first_stage_body,
    format_table,
    parse_ks,
    rank_metrics,
    write_outputs,
)

# --- metrics ------------------------------------------------------------------


def test_metrics_match_hand_computation_on_a_toy_run():
    qrels = {"q1": {"d1": 1, "d3": 1}, "q2": {"d9": 1}}
    # q1: relevant at ranks 2 and 4; q2: relevant at rank 1.
    rankings = {"q1": ["d2", "d1", "d4", "d3"], "q2": ["d9", "d8"]}
    means, per_query = rank_metrics(qrels, rankings, recall_at=2)

    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 / math.log2(2) + 1 / math.log2(3)
    assert per_query["q1"]["ndcg@10"] == pytest.approx(dcg / idcg, abs=1e-9)  # 0.6509...
    assert per_query["q1"]["mrr@10"] == pytest.approx(0.5)
    assert per_query["q1"]["recall@2"] == pytest.approx(0.5)  # d1 of {d1, d3} in the top 2
    assert per_query["q2"] == pytest.approx({"ndcg@10": 1.0, "mrr@10": 1.0, "recall@2": 1.0})
    assert means["ndcg@10"] == pytest.approx((dcg / idcg + 1.0) / 2)
    assert means["mrr@10"] == pytest.approx(0.75)


def test_metric_cutoffs_apply():
    qrels = {"q": {"d11": 1}}
    ranking = [f"d{i}" for i in range(1, 21)]  # relevant at rank 11
    means, _ = rank_metrics(qrels, {"q": ranking}, recall_at=20)
    assert means["ndcg@10"] == 0.0
    assert means["mrr@10"] == 0.0  # RR cut at 10, not 1/11
    assert means["recall@20"] == 1.0


def test_list_order_is_the_ranking_not_the_doc_ids():
    # trec_eval breaks score ties by doc id; scores come from ranks, so "b" stays first.
    means, _ = rank_metrics({"q": {"a": 1}}, {"q": ["b", "a"]}, recall_at=10)
    assert means["mrr@10"] == pytest.approx(0.5)


def test_a_query_without_hits_counts_as_zero():
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    means, per_query = rank_metrics(qrels, {"q1": ["d1"], "q2": []}, recall_at=10)
    assert per_query["q2"] == {"ndcg@10": 0.0, "mrr@10": 0.0, "recall@10": 0.0}
    assert means["ndcg@10"] == pytest.approx(0.5)


# --- helpers ------------------------------------------------------------------


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_parse_ks():
    assert parse_ks("100, 10,20,10") == [10, 20, 100]
    assert parse_ks([50, 10]) == [10, 50]
    for bad in ("0", "ten", "10,-5", ""):
        with pytest.raises(EvaluationError, match="K must be"):
            parse_ks(bad)


# --- the first-stage query ----------------------------------------------------


def test_default_first_stage_is_the_beir_baseline():
    body = first_stage_body(default_first_stage_query(["title", "text"]), 'a "quoted" {{x}} text', size=100)
    assert body == {
        "query": {
            "multi_match": {
                "query": 'a "quoted" {{x}} text',
                "fields": ["title", "text"],
                "type": "best_fields",
                "tie_breaker": 0.5,
            }
        },
        "size": 100,
        "_source": False,
    }


def test_first_stage_template_as_query_or_body_not_mutated():
    clause = {"bool": {"must": [{"match": {"title": "{{query_text}}"}}], "filter": [{"term": {"lang": "en"}}]}}
    kept = copy.deepcopy(clause)
    body = first_stage_body(clause, "heart", size=5)
    assert body["query"]["bool"]["must"][0] == {"match": {"title": "heart"}}
    assert clause == kept
    whole = {"query": {"match": {"text": "about {{query_text}}"}}, "_source": ["title"]}
    body = first_stage_body(whole, "heart", size=5)
    assert body == {"query": {"match": {"text": "about heart"}}, "_source": ["title"], "size": 5}


def test_first_stage_template_needs_the_placeholder():
    with pytest.raises(EvaluationError, match=r"has no \{\{query_text\}\}"):
        first_stage_body({"match": {"title": "fixed"}}, "heart", size=5)


# --- results ------------------------------------------------------------------


def _result(fallbacks: int = 0) -> EvalResult:
    rows = [
        KResult(
            k=k,
            first_stage={"ndcg@10": 0.62754, "mrr@10": 0.6, f"recall@{k}": recall},
            reranked={"ndcg@10": ndcg, "mrr@10": 0.65, "recall@10": 0.75},
            rerank_ms=[100.0 * k / 10, 120.0 * k / 10, 200.0 * k / 10],
            total_ms=[110.0, 130.0, 210.0],
            pairs=3 * k,
            fallbacks=fallbacks,
            outcomes={"reranked/reranked": 3, **({"fallback/rerank_timeout": fallbacks} if fallbacks else {})},
        )
        for k, recall, ndcg in ((10, 0.7553, 0.6696), (100, 0.8973, 0.6901))
    ]
    return EvalResult(
        index="scifact",
        mode="in-process",
        target="es-rerank.yaml",
        upstream="http://127.0.0.1:9200",
        first_stage_query=default_first_stage_query(),
        queries=3,
        unjudged=0,
        results=rows,
        model="scifact",
    )


def test_table_has_a_row_per_k_with_every_figure():
    table = format_table(_result())
    lines = table.splitlines()
    assert lines[0] == "index [scifact], 3 queries (in-process: es-rerank.yaml), model scifact"
    assert "first stage" in lines[1] and "reranked" in lines[1] and "rerank ms" in lines[1]
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
    rows = [line.split() for line in lines[4:]]
    assert rows[0] == [
        "10",
        "|",
        "0.6275",
        "0.6000",
        "0.7553",
        "|",
        "0.6696",
        "0.6500",
        "0.7500",
        "|",
        "120.0",
        "192.0",
        "|",
        "71.4",
    ]  # 30 pairs in 0.42 s
    assert rows[1][0] == "100" and rows[1][4] == "0.8973" and rows[1][6] == "0.6901"
    assert len({len(line) for line in lines[1:]}) == 1  # columns line up
    assert "warning" not in table


def test_table_warns_about_fallbacks():
    table = format_table(_result(fallbacks=2))
    assert (
        "warning: K = 10: 2 of 5 answer(s) not reranked (fallback/rerank_timeout 2); "
        "latency and pairs/s are over the 3 reranked, NDCG over all"
    ) in table


def test_k_result_latency_figures():
    row = _result().results[0]
    assert row.rerank_p50_ms == pytest.approx(120.0)
    assert row.rerank_p95_ms == pytest.approx(192.0)  # numpy's linear interpolation
    assert row.pairs_per_s == pytest.approx(30 / 0.42)


def test_write_outputs(tmp_path):
    paths = write_outputs(_result(), tmp_path / "out")
    data = json.loads(paths["results"].read_text())
    assert {"index", "mode", "first_stage_query", "queries", "results"} <= set(data)
    assert [r["k"] for r in data["results"]] == [10, 100]
    assert set(data["results"][0]["latency"]) >= {"rerank_p50_ms", "rerank_p95_ms", "pairs", "pairs_per_s"}
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["table"].read_text().startswith("index [scifact]")


# --- the command's checks before anything runs --------------------------------


def test_cli_needs_exactly_one_target(tmp_path):
    queries = _write(tmp_path / "q.jsonl", '{"_id": "1", "text": "a"}\n')
    qrels = _write(tmp_path / "r.tsv", "query-id\tcorpus-id\tscore\n1\td1\t1\n")
    base = ["--index", "x", "--queries", str(queries), "--qrels", str(qrels)]
    result = CliRunner().invoke(eval_command, base)
    assert result.exit_code == 1
    assert (
        result.output.strip()
        == "error: give either --config FILE (in-process) or --proxy URL with --upstream URL (black-box)"
    )
    result = CliRunner().invoke(eval_command, [*base, "--proxy", "http://127.0.0.1:1"])
    assert result.exit_code == 1 and "--proxy needs --upstream" in result.output


def test_cli_k_over_max_window_fails_before_loading_anything(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.onnx").write_bytes(b"")
    (model / "tokenizer.json").write_text("{}")
    config = _write(
        tmp_path / "c.yaml",
        f"upstream: {{url: 'http://127.0.0.1:1'}}\nmodels: {{m: {{path: '{model}'}}}}\n"
        "indices: [{pattern: docs, window: 20, max_window: 50}]\n",
    )
    queries = _write(tmp_path / "q.jsonl", '{"_id": "1", "text": "a"}\n')
    qrels = _write(tmp_path / "r.tsv", "query-id\tcorpus-id\tscore\n1\td1\t1\n")
    args = [
        "--config",
        str(config),
        "--index",
        "docs",
        "--queries",
        str(queries),
        "--qrels",
        str(qrels),
        "--out",
        str(tmp_path / "o"),
    ]
    result = CliRunner().invoke(eval_command, [*args, "--k", "10,100"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: K = 100 is larger than the index's max_window (50); lower K or raise max_window for [docs]"
    ]
    result = CliRunner().invoke(eval_command, [*args, "--index", "other"])
    assert result.exit_code == 1 and "index [other] matches no `indices` entry" in result.output


def test_eval_is_a_subcommand_of_es_rerank():
    from es_rerank.cli import main

    assert main.commands.get("eval") is eval_command
