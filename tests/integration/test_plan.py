"""`es-rerank plan` on a tiny slice: real OpenSearch, the proxy in-process, two tiny models.

What is checked is the wiring and the choosing: one row per grid cell, the frontier,
the best cell within the budget, the YAML block (a config es-rerank accepts), the
outputs, and the answer when nothing fits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from demoslice import index_demo_slice
from opensearchpy import OpenSearch

from es_rerank.cli import main
from es_rerank.config import settings_from_dict
from es_rerank.tools.datasets import load_beir
from es_rerank.tools.planning import PlanCell, best_within, pareto_frontier, plan

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
INDEX = "rr-plan"
N_QUERIES = 4
N_DOCS = 120


@pytest.fixture(scope="module")
def setup(opensearch_url, tiny_model_dir, tmp_path_factory):
    from tinymodel import build_tiny_model

    out = tmp_path_factory.mktemp("plan")
    client = OpenSearch(opensearch_url, timeout=60)
    index_demo_slice(client, INDEX, out, queries=N_QUERIES, docs=N_DOCS)

    other = build_tiny_model(out / "tiny-b", tokenizer_json=ROOT / "demo" / "model" / "tokenizer.json", seed=7)
    config = out / "es-rerank.yaml"
    config.write_text(
        f"upstream: {{url: '{opensearch_url}', timeout: 30}}\n"
        f"models: {{tiny: {{path: '{tiny_model_dir}'}}, tiny_b: {{path: '{other}'}}}}\n"
        f"indices: [{{pattern: 'rr-plan*', model: tiny, window: 10, max_window: 10}}]\n"
    )
    yield {
        "dir": out,
        "config": config,
        "queries": out / "queries.jsonl",
        "qrels": out / "qrels.tsv",
        "tiny": tiny_model_dir,
        "tiny_b": other,
        "url": opensearch_url,
    }
    client.indices.delete(index=INDEX, ignore_unavailable=True)


def _args(setup, *extra: str) -> list[str]:
    return [
        "plan",
        "--config",
        str(setup["config"]),
        "--index",
        INDEX,
        "--queries",
        str(setup["queries"]),
        "--qrels",
        str(setup["qrels"]),
        "--k",
        "5,20",
        "--max-tokens",
        "32,64",
        "--no-progress",
        *extra,
    ]


def test_plan_prints_grid_frontier_and_config(setup):
    out = setup["dir"] / "out"
    result = CliRunner().invoke(main, _args(setup, "--p95-ms", "60000", "--out", str(out)))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"index [{INDEX}], {N_QUERIES} queries, 1 concurrent, budget rerank p95 <= 60000 ms")
    assert lines[1].split()[:9] == ["model", "max_tokens", "K", "NDCG@10", "Recall@K", "p50", "ms", "p95", "ms"]
    rows = [line.split() for line in lines[3:11]]
    # 2 models x 2 max_tokens x 2 K, K = 20 above the index's max_window of 10: plan allows it.
    assert sorted((r[0], r[1], r[2]) for r in rows) == sorted(
        (m, t, k) for m in ("tiny", "tiny_b") for t in ("32", "64") for k in ("5", "20")
    )
    assert sum("best" in r for r in rows) == 1 and any("*" in r for r in rows)
    assert all(r[8] == "0" for r in rows)  # every answer reranked
    # No score cache: K = 20 runs all its pairs, though K = 5 scored the first 5 of each query before.
    pairs = {
        (c["model"], c["max_tokens"], c["k"]): c["pairs"] for c in json.loads((out / "plan.json").read_text())["cells"]
    }
    assert all(pairs[(m, t, 20)] == 20 * N_QUERIES and pairs[(m, t, 5)] == 5 * N_QUERIES for m, t, _ in pairs)

    data = json.loads((out / "plan.json").read_text())
    assert len(data["cells"]) == 8 and data["best"] is not None and data["frontier"]
    best = data["best"]
    best_cell = next(
        c
        for c in data["cells"]
        if (c["model"], c["max_tokens"], c["k"]) == (best["model"], best["max_tokens"], best["k"])
    )
    assert best_cell["ndcg10"] == max(c["ndcg10"] for c in data["cells"])  # the budget excludes nothing
    assert (out / "plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The YAML block printed is the one written, and es-rerank accepts it as a config.
    block = (out / "config.yaml").read_text()
    assert block.strip() in result.output
    entry = yaml.safe_load(block)["indices"][0]
    assert entry["pattern"] == "rr-plan*" and (entry["model"], entry["max_tokens"], entry["window"]) == (
        best["model"],
        best["max_tokens"],
        best["k"],
    )
    config = yaml.safe_load(setup["config"].read_text())
    config["indices"] = [{**entry, "max_window": 500}]
    settings_from_dict(config, env={})


def test_plan_when_nothing_fits(setup):
    out = setup["dir"] / "out-none"
    result = CliRunner().invoke(
        main, _args(setup, "--p95-ms", "0.001", "--model", "tiny", "--k", "5", "--out", str(out))
    )
    assert result.exit_code == 3, result.output
    assert "no configuration meets p95 <= 0.001 ms; the fastest: model tiny, K = 5" in result.output
    assert not (out / "config.yaml").exists() and (out / "plan.json").is_file()


def test_plan_api_skips_max_tokens_past_the_model(setup):
    from es_rerank.config import load_settings

    data = load_beir(setup["queries"], setup["qrels"])
    echoed: list[str] = []
    result = plan(
        data,
        settings=load_settings(setup["config"]),
        index=INDEX,
        budget_p95_ms=60000,
        ks=[5],
        max_tokens=[64, 100000],
        models=["tiny"],
        concurrency=2,
        echo=echoed.append,
    )
    assert [(c.model, c.max_tokens, c.k) for c in result.cells] == [("tiny", 64, 5)]
    assert result.concurrency == 2 and result.cells[0].reranked == N_QUERIES
    assert echoed == ["skipped: model tiny: max_tokens 100000 is above its max_length 256"]


def _cell(ndcg: float, p95: float, not_reranked: int = 0, k: int = 10) -> PlanCell:
    return PlanCell("m", 256, k, ndcg, 0.6, 0.9, p95 / 2, p95, 10.0, 100, 10, not_reranked)


def test_frontier_and_best():
    a, b, c, d = _cell(0.60, 100), _cell(0.65, 200), _cell(0.64, 300), _cell(0.70, 900, not_reranked=1)
    assert pareto_frontier([c, a, d, b]) == [a, b, d]  # c is beaten by b on both
    assert best_within([a, b, c, d], 250) is b
    assert best_within([a, b, c, d], 1000) is b  # d fell back once: not within any budget
    assert best_within([a, b, c, d], 50) is None
