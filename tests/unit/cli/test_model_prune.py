"""`es-rerank model prune`: its --heads/--ffn parser, usage errors and calibrated runs on the small encoder."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from sdpaencoder import build_sdpa_model_dir  # noqa: E402  # tests/ is on sys.path (conftest)
from tinybeir import write_tiny_beir  # noqa: E402

from es_rerank.cli.model import _sizes, model  # noqa: E402
from es_rerank.reranker.modeldir import read_model_config  # noqa: E402

TOKENIZER_JSON = Path(__file__).resolve().parents[3] / "demo" / "model" / "tokenizer.json"
pytestmark = pytest.mark.skipif(not TOKENIZER_JSON.is_file(), reason=f"demo tokenizer not found at {TOKENIZER_JSON}")


def run(*args):
    return CliRunner().invoke(model, ["prune", *(str(a) for a in args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def beir(tmp_path_factory) -> Path:
    return write_tiny_beir(tmp_path_factory.mktemp("beir"))


@pytest.fixture()
def model_dir(tmp_path) -> Path:
    return build_sdpa_model_dir(tmp_path / "model", tokenizer_json=TOKENIZER_JSON, biases=True)


@pytest.mark.parametrize(
    "value, expected", [(None, None), ("1", 1), ("8", 8), ("2,1", [2, 1]), ("10, 11,10", [10, 11, 10])]
)
def test_sizes_take_one_count_for_every_layer_or_one_per_layer(value, expected):
    assert _sizes(None, None, value) == expected  # type: ignore[arg-type]  # click passes its context; unused


@pytest.mark.parametrize(
    "value, message",
    [
        ("x", "'x' is not a count or a comma-separated list of counts"),
        ("2,,1", "is not a count"),
        ("1.5", "is not a count"),
        ("0", "'0': every layer keeps at least 1"),
        ("2,-1", "every layer keeps at least 1"),
    ],
)
def test_sizes_refuse_what_is_not_a_positive_count(value, message):
    with pytest.raises(click.BadParameter, match=re.escape(message)):
        _sizes(None, None, value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "give --heads, --ffn or both"),
        (["--heads", "0"], "every layer keeps at least 1"),
        (["--heads", "x"], "'x' is not a count"),
        (["--ffn", "8,0"], "every layer keeps at least 1"),
        (["--heads", "2", "--calibration-pairs", "0"], "Invalid value for '--calibration-pairs'"),
    ],
)
def test_usage_errors_exit_2_and_write_nothing(model_dir, beir, extra, message):
    result = run(model_dir, "--calibration-corpus", beir, *extra)
    assert result.exit_code == 2
    assert message in result.output
    assert not (model_dir / "model.pruned.onnx").exists()


def test_the_calibration_corpus_is_required(model_dir):
    result = run(model_dir, "--heads", "2")
    assert result.exit_code == 2 and "Missing option '--calibration-corpus'" in result.output


def test_sizes_the_model_cannot_take_fail_with_the_library_message(model_dir, beir):
    result = run(model_dir, "--calibration-corpus", beir, "--heads", "2,2,2", "--calibration-pairs", 4)
    assert result.exit_code == 1
    assert "error: 3 attention sizes given for 2 layers" in result.stderr
    assert not (model_dir / "model.pruned.onnx").exists()


@pytest.mark.parametrize(
    "extra, heads, ffn",
    [
        (["--heads", "2,1", "--ffn", "40"], [2, 1], [40, 40]),
        (["--heads", "1"], [1, 1], [64, 64]),
    ],
)
def test_a_run_shows_progress_and_writes_model_pruned(model_dir, beir, extra, heads, ffn):
    result = run(model_dir, "--calibration-corpus", beir, "--calibration-pairs", 8, *extra)
    assert result.exit_code == 0, result.output
    out = model_dir / "model.pruned.onnx"
    assert out.is_file()
    assert re.search(
        rf"wrote {re.escape(str(out))} \([\d.]+ MB -> [\d.]+ MB; max \|diff\| \S+ vs model\.onnx on CPU\)",
        result.stdout,
    )
    assert f"heads per layer: {heads}; feed-forward neurons per layer: {ffn}" in result.stdout
    assert "[prune] fused the graph: 2 attention layers" in result.stderr
    assert "[prune] calibrating on 8 train pairs in 1 batches" in result.stderr
    assert f"[prune] layer 1 attention: kept {heads[1]} of 4 heads, output refitted (" in result.stderr
    pruned_blocks = sum(h < 4 for h in heads) + sum(n < 64 for n in ffn)
    assert len(re.findall(r"^\[prune\] layer \d ", result.stderr, flags=re.M)) == pruned_blocks
    pruned = onnx.load(str(out))
    assert [
        a.i for n in pruned.graph.node if n.op_type == "Attention" for a in n.attribute if a.name == "num_heads"
    ] == (heads)
    variant = read_model_config(model_dir).variants["model.pruned.onnx"]
    assert (variant["kind"], variant["heads"], variant["ffn"]) == ("pruned", heads, ffn)


def test_output_names_the_file_written(model_dir, beir):
    result = run(
        model_dir, "--calibration-corpus", beir, "--ffn", "32", "--calibration-pairs", 4, "--output", "small.onnx"
    )
    assert result.exit_code == 0, result.output
    assert (model_dir / "small.onnx").is_file() and not (model_dir / "model.pruned.onnx").exists()
    assert "heads per layer: [4, 4]; feed-forward neurons per layer: [32, 32]" in result.stdout
    assert read_model_config(model_dir).variants["small.onnx"]["ffn"] == [32, 32]
