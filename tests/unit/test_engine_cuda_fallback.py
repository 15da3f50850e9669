"""CUDA asked for but not usable: the engine says so loudly and sizes for the CPU.

ONNX Runtime with a CUDA provider it cannot load (an onnxruntime-gpu built for CUDA 13 on
a CUDA 12 image) lists CUDAExecutionProvider as available, logs an error and makes a CPU
session. That is played here by a stand-in module around the real (CPU) onnxruntime.
"""

from __future__ import annotations

import logging
import types

import onnxruntime as real_ort
import pytest

from es_rerank.reranker import _onnx
from es_rerank.reranker._onnx import CPU_BATCH_TOKENS, CUDA, OnnxReranker


def _cuda_that_falls_back() -> types.ModuleType:
    fake = types.ModuleType("onnxruntime")
    fake.__dict__.update({k: getattr(real_ort, k) for k in dir(real_ort) if not k.startswith("__")})
    fake.__version__ = "1.99.0-cuda13"
    fake.get_available_providers = lambda: [CUDA, "CPUExecutionProvider"]

    def session(model, sess_options=None, providers=None, **kwargs):
        return real_ort.InferenceSession(model, sess_options=sess_options, providers=["CPUExecutionProvider"], **kwargs)

    fake.InferenceSession = session
    return fake


def test_cuda_unusable_is_said_and_batches_are_cpu_sized(tiny_model_dir, monkeypatch, caplog):
    monkeypatch.setattr(_onnx, "import_onnxruntime", _cuda_that_falls_back)
    caplog.set_level(logging.ERROR, logger="es_rerank")
    fp16 = tiny_model_dir / "model.fp16-standin.onnx"
    fp16.write_bytes((tiny_model_dir / "model.onnx").read_bytes())
    with OnnxReranker(
        "m", tiny_model_dir / "model.onnx", tiny_model_dir / "tokenizer.json", providers=["auto"],
        variants={"cuda": fp16}, warmup=False, fuse_at_load=False,
    ) as model:  # fmt: skip
        assert model.provider == "CPUExecutionProvider"
        assert model.cuda_unusable
        assert model.max_batch_tokens == CPU_BATCH_TOKENS  # not the 65,536 sized for a GPU
        assert model.onnx_path == tiny_model_dir / "model.onnx"  # the CPU's file, not the fp16 one
        assert "CUDA was asked for" in model.info()["warning"]
        assert len(model.score("q", ["a passage", "another"])) == 2
    assert any("CUDA was asked for but ONNX Runtime" in r.message for r in caplog.records)


def test_health_says_degraded(tiny_model_dir, monkeypatch, serve_app, opensearch_url):
    import httpx

    from es_rerank import create_app, settings_from_dict

    monkeypatch.setattr(_onnx, "import_onnxruntime", _cuda_that_falls_back)
    settings = settings_from_dict(
        {
            "upstream": {"url": opensearch_url},
            "models": {"m": {"path": str(tiny_model_dir), "providers": ["cuda"], "warmup": False}},
        }
    )
    with serve_app(create_app(settings)) as srv:
        health = httpx.get(f"{srv.url}/_rerank/health").json()
    assert health["status"] == "degraded"
    assert "CUDA was asked for" in health["warnings"][0]
    assert health["models"]["m"]["provider"] == "CPUExecutionProvider"


@pytest.mark.parametrize("given", [4096])
def test_an_explicit_batch_budget_is_kept(tiny_model_dir, monkeypatch, given):
    monkeypatch.setattr(_onnx, "import_onnxruntime", _cuda_that_falls_back)
    with OnnxReranker(
        "m", tiny_model_dir / "model.onnx", tiny_model_dir / "tokenizer.json", providers=["cuda"],
        max_batch_tokens=given, warmup=False, fuse_at_load=False,
    ) as model:  # fmt: skip
        assert model.cuda_unusable and model.max_batch_tokens == given
