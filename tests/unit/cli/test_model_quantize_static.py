"""`es-rerank model quantize --mode static`: its usage errors and one calibrated run on the tiny model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from tinybeir import write_tiny_beir  # noqa: E402  # tests/ is on sys.path (conftest)
from tinymodel import build_tiny_model  # noqa: E402

from es_rerank.cli.model import model  # noqa: E402
from es_rerank.reranker.modeldir import read_model_config  # noqa: E402

TOKENIZER_JSON = Path(__file__).resolve().parents[3] / "demo" / "model" / "tokenizer.json"
pytestmark = pytest.mark.skipif(not TOKENIZER_JSON.is_file(), reason=f"demo tokenizer not found at {TOKENIZER_JSON}")


def run(*args):
    return CliRunner().invoke(model, ["quantize", *(str(a) for a in args)], catch_exceptions=False)


@pytest.fixture()
def model_dir(tmp_path) -> Path:
    return build_tiny_model(tmp_path / "model", tokenizer_json=TOKENIZER_JSON)


def test_static_without_a_corpus_is_a_usage_error(model_dir):
    result = run(model_dir, "--mode", "static")
    assert result.exit_code == 2
    assert "--mode static needs --calibration-corpus" in result.output
    assert not (model_dir / "model.qdq.onnx").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mode", "dynamic"], "--calibration-corpus is for --mode static"),
        (["--mode", "static", "--preprocess"], "are for --mode dynamic"),
        (["--mode", "static", "--weight-type", "quint8"], "are for --mode dynamic"),
        (["--mode", "static", "--op-types", "all"], "are for --mode dynamic"),
        (["--mode", "static", "--calibrate-method", "mse"], "Invalid value for '--calibrate-method'"),
        (["--mode", "static", "--calibration-pairs", "0"], "Invalid value for '--calibration-pairs'"),
    ],
)
def test_options_that_do_not_go_together(model_dir, tmp_path, extra, message):
    beir = write_tiny_beir(tmp_path / "beir")
    result = run(model_dir, "--calibration-corpus", beir, *extra)
    assert result.exit_code == 2 and message in result.output


def test_static_run_shows_progress_and_writes_model_qdq(model_dir, tmp_path):
    beir = write_tiny_beir(tmp_path / "beir")
    result = run(model_dir, "--mode", "static", "--calibration-corpus", beir, "--no-fusions", "--calibration-pairs", 8)
    assert result.exit_code == 0, result.output
    assert re.search(r"wrote .*model\.qdq\.onnx \([\d.]+ MB -> [\d.]+ MB; max \|diff\| ", result.stdout)
    assert re.search(
        r"calibrated on 8 pairs \(minmax\); int8 nodes: DequantizeLinear \d+, QuantizeLinear \d+", result.stdout
    )
    assert "[quantize] calibration set: 8 pairs of train" in result.stderr
    assert "[quantize] calibration batch 1/1 (8/8 pairs)" in result.stderr
    assert read_model_config(model_dir).variants["model.qdq.onnx"]["kind"] == "int8-static"
