"""The proxy honours a model directory's es-rerank-model.json where the YAML is silent."""

from __future__ import annotations

import json
import shutil

from es_rerank.config import ModelSettings
from es_rerank.reranker import OnnxReranker


def _dir_with_config(tiny_model_dir, tmp_path, config):
    out = tmp_path / "m"
    shutil.copytree(tiny_model_dir, out)
    (out / "model.onnx").rename(out / "renamed.onnx")
    (out / "es-rerank-model.json").write_text(json.dumps({"format": 1, "onnx_file": "renamed.onnx", **config}))
    return out


def test_model_dir_config_fills_what_yaml_leaves_unset(tiny_model_dir, tmp_path):
    path = _dir_with_config(tiny_model_dir, tmp_path, {"max_length": 128, "head": "single"})
    model = OnnxReranker.from_settings("m", ModelSettings(path=path))
    try:
        assert model.onnx_path.name == "renamed.onnx"
        assert model.max_length == 128 and model.info()["head"] == "single"
    finally:
        model.close()


def test_yaml_wins_but_max_length_never_exceeds_the_model(tiny_model_dir, tmp_path):
    path = _dir_with_config(tiny_model_dir, tmp_path, {"max_length": 128})
    model = OnnxReranker.from_settings("m", ModelSettings(path=path, max_length=512))
    try:
        assert model.max_length == 128
    finally:
        model.close()
    shutil.copy(path / "renamed.onnx", path / "model.onnx")
    model = OnnxReranker.from_settings("m", ModelSettings(path=path, onnx_file="model.onnx", max_length=64))
    try:
        assert model.onnx_path.name == "model.onnx" and model.max_length == 64
    finally:
        model.close()
