"""es_rerank.tools.bench (es-rerank bench): data loading, FLOP counting and a whole (tiny) run; no timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from es_rerank.cli.bench import bench
from es_rerank.errors import BenchError
from es_rerank.tools.bench import (
    BenchOptions,
    ModelShape,
    format_report,
    load_bench_data,
    model_shape,
    run_bench,
)
from es_rerank.tools.datasets import save_run

REAL_MODEL = Path(__file__).resolve().parents[3].parent / "shared/models/scifact-minilm-l6-ce"


def test_flops_per_pair_match_the_model_card():
    shape = ModelShape(layers=6, hidden=384, intermediate=1536)
    assert shape.flops(252) / 1e9 == pytest.approx(5.94, abs=0.01)
    assert shape.flops(0) == 0


def test_model_shape_from_config_or_graph(tmp_path, tiny_model_dir):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(
        json.dumps({"num_hidden_layers": 6, "hidden_size": 384, "intermediate_size": 1536})
    )
    assert model_shape(tmp_path) == ModelShape(6, 384, 1536)
    with pytest.raises(BenchError):
        model_shape(tiny_model_dir)  # no config and no graph given


@pytest.mark.skipif(not (REAL_MODEL / "model.onnx").is_file(), reason="shared model not present")
def test_model_shape_read_off_the_real_graph():
    assert model_shape(Path("/nonexistent"), REAL_MODEL / "model.onnx") == ModelShape(6, 384, 1536)


def _fused_layers(path: Path, attention: list[int], ffn: list[int], hidden: int = 8) -> Path:
    """A graph with only what ModelShape.of_file reads: each layer's fused Attention weights
    [hidden, 3 x width] and BiasGelu bias [width] (it is never run)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    inits, nodes, x = [], [], "x"
    for layer, (a, f) in enumerate(zip(attention, ffn)):
        inits += [
            numpy_helper.from_array(np.zeros((hidden, 3 * a), np.float32), f"qkv{layer}"),
            numpy_helper.from_array(np.zeros(f, np.float32), f"b{layer}"),
        ]
        nodes += [
            helper.make_node("Attention", [x, f"qkv{layer}"], [f"a{layer}"], domain="com.microsoft", num_heads=1),
            helper.make_node("BiasGelu", [f"a{layer}", f"b{layer}"], [f"g{layer}"], domain="com.microsoft"),
        ]
        x = f"g{layer}"
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", x)]
    onnx.save(helper.make_model(helper.make_graph(nodes, "layers", io[:1], io[1:], inits)), str(path))
    return path


def test_a_pruned_file_is_credited_with_the_flops_it_does(tmp_path):
    whole = ModelShape(layers=2, hidden=8, intermediate=32)
    assert whole.of_file(_fused_layers(tmp_path / "whole.onnx", [8, 8], [32, 32])) == whole
    pruned = whole.of_file(_fused_layers(tmp_path / "pruned.onnx", [4, 8], [16, 32]))
    assert (pruned.attention_widths, pruned.ffn_widths) == ((4, 8), (16, 32))
    n, h = 10, 8
    first = 2 * n * (4 * h * 4 + 2 * h * 16) + 4 * n * n * 4  # Q, K, V and output 4 wide, FFN 16 wide
    assert pruned.flops(n) == first + whole.flops(n) / 2
    assert pruned.flops(n) < whole.flops(n)
    assert whole.of_file(_fused_layers(tmp_path / "one.onnx", [4], [16])) == whole  # not this model's layers


@pytest.fixture
def beir(tmp_path) -> Path:
    """A small BEIR data set and a saved first stage."""
    docs = {
        "d1": ("Vitamin D", "Vitamin D deficiency raises the risk of multiple sclerosis."),
        "d2": ("Football", "Clubs spent record sums on transfers."),
        "d3": ("Cooking", "Tomatoes, garlic and olive oil " * 20),
        "d4": ("MS risk", "Smoking and low vitamin d are risk factors for multiple sclerosis."),
        "d5": ("Harvest", "The harvest was good this year in the village."),
    }
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": k, "title": t, "text": x}) + "\n" for k, (t, x) in docs.items())
    )
    queries = {
        "q1": "vitamin d and multiple sclerosis",
        "q2": "football transfers",
        "q3": "olive oil",
        "q4": "unjudged",
    }
    (root / "queries-dev.jsonl").write_text(
        "".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in queries.items())
    )
    (root / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td4\t1\nq2\td2\t1\nq3\td3\t1\n")
    save_run({q: ["d5", "d3", "d2", "d4", "d1"] for q in queries}, root / "run.json")
    return root


def test_load_bench_data(beir):
    data = load_bench_data(beir, run_file=beir / "run.json", k=3)
    assert sorted(data.queries) == ["q1", "q2", "q3"]  # judged queries only
    assert data.candidates["q1"] == ["d5", "d3", "d2"]
    assert data.passages["d2"] == "Football Clubs spent record sums on transfers."
    with pytest.raises(BenchError, match="--run"):
        load_bench_data(beir)


@pytest.fixture
def model_dir(tiny_model_dir, tmp_path) -> Path:
    """The tiny model with a config.json (the shape FLOPs are counted from)."""
    out = tmp_path / "model"
    out.mkdir()
    for name in ("model.onnx", "tokenizer.json"):
        (out / name).symlink_to(tiny_model_dir / name)
    (out / "config.json").write_text(json.dumps({"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 16}))
    return out


def test_a_whole_run_on_the_tiny_model(beir, model_dir):
    data = load_bench_data(beir, run_file=beir / "run.json", k=5)
    options = BenchOptions(
        onnx_files=("model.onnx", "model.onnx"), ks=(2, 5), concurrency=(1, 3),
        throughput_queries=2, queries_per_cell=3, quality=True, matmul_n=64,
    )  # fmt: skip
    result = run_bench(model_dir, data, options)
    assert [t.pairs for t in result.throughput] == [10, 10]
    for t in result.throughput:  # the engine's split: its model time is part of its wall time
        assert 0 < t.model_ms * len(data.query_ids()[:2]) <= t.seconds * 1000 and t.tokenize_ms >= 0
        assert 0 <= t.token_cache_hit_rate <= 1
    assert len(result.cells) == 2 * 2 * 2
    for cell in result.cells:
        assert cell.pairs == cell.queries * cell.k and cell.timeouts == 0
    q = result.quality
    assert len(q) == 2 and q[0].ndcg10 == q[1].ndcg10 and 0 <= q[0].first_stage_ndcg10 <= 1
    report = format_report(result)
    assert "Throughput" in report and "Latency" in report and "Quality" in report
    pytest.importorskip("matplotlib")
    from es_rerank.tools.bench import plot_bench

    assert plot_bench(result, model_dir / "bench.png").stat().st_size > 0


def test_a_token_budget_sweep_is_one_contender_per_file_and_budget(beir, model_dir):
    data = load_bench_data(beir, run_file=beir / "run.json", k=5)
    options = BenchOptions(batch_token_sweep=(16, 64), throughput_queries=2, latency=False, matmul_n=64)
    result = run_bench(model_dir, data, options)
    assert [t.label for t in result.throughput] == [
        "es-rerank model.onnx @16 tokens",
        "es-rerank model.onnx @64 tokens",
    ]
    assert [t.pairs for t in result.throughput] == [10, 10]


def test_the_command(beir, model_dir, tmp_path):
    out = tmp_path / "figures.json"
    args = [
        "--model", str(model_dir), "--corpus", str(beir), "--run", str(beir / "run.json"),
        "--ks", "3", "--concurrency", "1,2", "--throughput-queries", "1", "--queries-per-cell", "2",
        "--matmul-size", "64", "--json", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 0, result.output
    assert "pairs/s" in result.output
    figures = json.loads(out.read_text())
    assert figures["throughput"][0]["pairs"] == 3
    assert "Where an engine's time goes" in result.output
    bad = CliRunner().invoke(bench, args + ["--cuda-option", "device_id"])
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.output
    titles = CliRunner().invoke(
        bench, args + ["--fields", "title", "--no-latency", "--sweep-batch-tokens", "32,64"]
    )  # the short-passage set
    assert titles.exit_code == 0, titles.output
    swept = json.loads(out.read_text())
    assert 0 < swept["mean_tokens"] < figures["mean_tokens"]
    assert [t["label"] for t in swept["throughput"]] == [f"es-rerank model.onnx @{n} tokens" for n in (32, 64)]


def test_peers_without_their_libraries_say_what_to_install(beir, model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    data = load_bench_data(beir, run_file=beir / "run.json", k=2)
    with pytest.raises(BenchError, match=r"es-rerank\[peers\]"):
        options = BenchOptions(ks=(2,), peers=("torch",), latency=False, throughput_queries=1, matmul_n=64)
        run_bench(model_dir, data, options)


def test_the_first_pass_script_runs_on_cpu(beir, model_dir, tmp_path):
    """benchmarks/gpu_first_pass.py is meant for a GPU; here it is checked on CPU, so it is ready."""
    script = Path(__file__).resolve().parents[3] / "benchmarks" / "gpu_first_pass.py"
    args = [
        sys.executable, str(script), str(model_dir), str(beir), "--run", str(beir / "run.json"),
        "--onnx-file", "model.onnx", "--provider", "cpu", "--k", "5", "--batch-size", "4", "--max-batch-tokens", "256",
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if " pass " in line]
    assert [line.split(" warm-up ")[1].split()[0] for line in lines] == [
        "none",
        "none",
        "full",
        "full",
        "padded",
        "padded",
    ]
    assert done.stdout.count("engine pass, cold token cache") == 3
    profiled = subprocess.run(
        args + ["--warmup", "none", "--profile", "--profile-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert profiled.returncode == 0, profiled.stderr
    assert "slowest runs of pass 1" in profiled.stdout and " ms; nodes " in profiled.stdout
    assert len(list(tmp_path.glob("first-pass-model-none*.json"))) == 1
    bad = subprocess.run(args + ["--warmup", "tepid"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "tepid" in bad.stderr
