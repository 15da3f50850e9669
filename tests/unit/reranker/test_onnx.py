"""OnnxReranker on real ONNX Runtime sessions: tiny generated models, plus the shared real one."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from samplepairs import PASSAGES, QUERY

from es_rerank.config import ModelSettings
from es_rerank.errors import ModelError
from es_rerank.reranker import (
    OnnxReranker,
    Reranker,
    import_onnxruntime,
    resolve_providers,
)

TESTS = Path(__file__).resolve().parents[2]
if str(TESTS) not in sys.path:  # tests/ has no package marker; tinymodel lives there
    sys.path.insert(0, str(TESTS))

from tinymodel import build_tiny_model  # noqa: E402

REAL_MODEL = Path(__file__).resolve().parents[3].parent / "shared/models/scifact-minilm-l6-ce"
TOKENIZER_JSON = Path(__file__).resolve().parents[3] / "demo" / "model" / "tokenizer.json"

needs_tokenizer = pytest.mark.skipif(
    not TOKENIZER_JSON.is_file(), reason=f"shared tokenizer not found at {TOKENIZER_JSON}"
)


def _load(model_dir: Path, **kw) -> OnnxReranker:
    return OnnxReranker("tiny", model_dir / "model.onnx", model_dir / "tokenizer.json", **kw)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    if not TOKENIZER_JSON.is_file():
        pytest.skip(f"shared tokenizer not found at {TOKENIZER_JSON}")
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), tokenizer_json=TOKENIZER_JSON)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    with _load(tiny_dir) as reranker:
        yield reranker


def one_at_a_time(reranker: OnnxReranker, query: str, passages: list[str], **kw) -> np.ndarray:
    return np.concatenate([reranker.score(query, [p], **kw) for p in passages])


# -- scoring ---------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5, 32])
def test_batched_scores_equal_single_pair_scores(tiny, batch_size):
    scores = tiny.score(QUERY, PASSAGES, batch_size=batch_size)
    assert scores.dtype == np.float32
    assert scores.shape == (len(PASSAGES),)
    np.testing.assert_allclose(scores, one_at_a_time(tiny, QUERY, PASSAGES), atol=1e-5, rtol=0)


def test_order_is_restored_after_length_sorting(tiny):
    scores = tiny.score(QUERY, PASSAGES, batch_size=2)
    permutation = np.random.default_rng(1).permutation(len(PASSAGES))
    shuffled = tiny.score(QUERY, [PASSAGES[i] for i in permutation], batch_size=2)
    np.testing.assert_allclose(shuffled, scores[permutation], atol=1e-6)
    # the tiny model's score is meaningful: passages sharing the query's words win
    assert scores[1] > max(scores[0], scores[3], scores[5])
    assert int(np.argmax(tiny.score(QUERY, [PASSAGES[0], QUERY, PASSAGES[5]]))) == 1


def test_caller_data_is_not_changed(tiny):
    passages = tuple(PASSAGES)
    tiny.score(QUERY, passages, batch_size=3)
    assert passages == tuple(PASSAGES)


def test_empty_passages_give_an_empty_array(tiny):
    scores = tiny.score(QUERY, [])
    assert scores.dtype == np.float32 and scores.shape == (0,)


def test_empty_strings(tiny):
    assert np.isfinite(tiny.score(QUERY, [""])).all()
    assert np.isfinite(tiny.score("", ["some passage", ""])).all()


def test_huge_query_does_not_raise(tiny):
    query = " ".join(f"word{i % 50}" for i in range(2000))
    scores = tiny.score(query, ["short", "", PASSAGES[3]], batch_size=2)
    assert scores.shape == (3,) and np.isfinite(scores).all()
    # also when the window is tiny
    assert np.isfinite(tiny.score(query, ["short", ""], max_length=8)).all()


def test_max_length_override_matches_a_model_loaded_with_it(tiny, tiny_dir):
    short = tiny.score(QUERY, PASSAGES, max_length=32)
    with _load(tiny_dir, max_length=32) as reranker32:
        np.testing.assert_allclose(short, reranker32.score(QUERY, PASSAGES), atol=1e-6)
    full = tiny.score(QUERY, PASSAGES)
    assert not np.allclose(short[3], full[3])  # the long passage was cut
    np.testing.assert_allclose(short[4], full[4], atol=1e-6)  # a short one was not


def test_bad_per_call_arguments(tiny):
    with pytest.raises(ValueError):
        tiny.score(QUERY, ["x"], batch_size=0)
    with pytest.raises(ValueError):
        tiny.score(QUERY, ["x"], max_length=2)


def test_two_logit_head_ranks_like_single(tiny, tmp_path):
    two_dir = build_tiny_model(tmp_path, tokenizer_json=TOKENIZER_JSON, head="two")
    with _load(two_dir) as two:
        assert two.head == "two"
        single_scores = tiny.score(QUERY, PASSAGES)
        two_scores = two.score(QUERY, PASSAGES, batch_size=3)
    assert list(np.argsort(-two_scores)) == list(np.argsort(-single_scores))
    # logits [-l, l] -> l - (-l)
    np.testing.assert_allclose(two_scores, 2 * single_scores, atol=1e-5)


def test_configured_head_must_match_the_output(tiny_dir):
    with pytest.raises(ModelError, match="head 'two'"):
        _load(tiny_dir, head="two")
    with _load(tiny_dir, head="single") as reranker:
        assert reranker.head == "single"


@needs_tokenizer
def test_model_without_token_type_ids(tmp_path):
    model_dir = build_tiny_model(tmp_path, tokenizer_json=TOKENIZER_JSON, with_token_type_ids=False, seed=3)
    with _load(model_dir) as reranker:
        assert reranker.info()["inputs"] == ["input_ids", "attention_mask"]
        scores = reranker.score(QUERY, PASSAGES, batch_size=3)
        np.testing.assert_allclose(scores, one_at_a_time(reranker, QUERY, PASSAGES), atol=1e-5, rtol=0)


# -- async -----------------------------------------------------------------------------


def test_ascore_equals_score(tiny):
    expected = tiny.score(QUERY, PASSAGES, batch_size=4)

    async def main():
        single = await tiny.ascore(QUERY, PASSAGES, batch_size=4)
        many = await asyncio.gather(*(tiny.ascore(QUERY, PASSAGES[i:]) for i in range(3)))
        return single, many

    single, many = asyncio.run(main())
    np.testing.assert_allclose(single, expected, atol=1e-6)
    for i, scores in enumerate(many):
        np.testing.assert_allclose(scores, expected[i:], atol=1e-5)


# -- loading ---------------------------------------------------------------------------


@needs_tokenizer
def test_missing_files_name_the_path(tiny_dir, tmp_path):
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(ModelError, match=str(missing)):
        OnnxReranker("m", tiny_dir / "model.onnx", missing)
    missing = tmp_path / "nope" / "model.onnx"
    with pytest.raises(ModelError, match=str(missing)):
        OnnxReranker("m", missing, tiny_dir / "tokenizer.json")


def test_broken_onnx_file_is_a_model_error(tiny_dir, tmp_path):
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"not an onnx model")
    with pytest.raises(ModelError, match="cannot load"):
        OnnxReranker("m", broken, tiny_dir / "tokenizer.json")


def test_from_settings_info_and_close(tiny_dir):
    settings = ModelSettings(path=tiny_dir, max_length=64, batch_size=4, providers=["cpu"])
    reranker = OnnxReranker.from_settings("tiny", settings)
    assert isinstance(reranker, Reranker)
    info = reranker.info()
    json.dumps(info)
    assert info == {
        "name": "tiny",
        "provider": "CPUExecutionProvider",
        "providers": ["CPUExecutionProvider"],
        "status": "ready",
        "onnx": str(tiny_dir / "model.onnx"),
        "tokenizer": str(tiny_dir / "tokenizer.json"),
        "max_length": 64,
        "batch_size": 4,
        "head": "single",
        "inputs": ["input_ids", "attention_mask", "token_type_ids"],
        "intra_op_threads": reranker.intra_op_threads,
    }
    assert reranker.provider == "CPUExecutionProvider"
    reranker.close()
    reranker.close()
    assert reranker.info()["status"] == "closed"
    with pytest.raises(ModelError, match="closed"):
        reranker.score(QUERY, ["x"])
    with pytest.raises(ModelError, match="closed"):
        asyncio.run(reranker.ascore(QUERY, ["x"]))


def test_import_onnxruntime(monkeypatch):
    assert import_onnxruntime().InferenceSession
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ModelError, match=r"pip install 'es-rerank\[cpu\]'"):
        import_onnxruntime()


# -- providers -------------------------------------------------------------------------

CPU, CUDA, AZURE = "CPUExecutionProvider", "CUDAExecutionProvider", "AzureExecutionProvider"


@pytest.mark.parametrize(
    "requested, available, expected",
    [
        (["auto"], [AZURE, CPU], [CPU]),
        (["auto"], [CUDA, CPU], [CUDA, CPU]),
        (["auto"], [CPU, CUDA], [CUDA, CPU]),
        ([], [CUDA, CPU], [CUDA, CPU]),
        ([CPU], [CUDA, CPU], [CPU]),
        (["cuda", "cpu"], [CUDA, CPU], [CUDA, CPU]),
        (["CUDAExecutionProvider", "auto"], [CUDA, CPU], [CUDA, CPU]),
        (["AUTO"], [CPU], [CPU]),
    ],
)
def test_resolve_providers(requested, available, expected):
    assert resolve_providers(requested, available) == expected


@pytest.mark.parametrize("requested", [["cuda"], ["TensorrtExecutionProvider"], ["gpu", "cpu"]])
def test_resolve_providers_unknown_names_list_the_available_ones(requested):
    with pytest.raises(ModelError) as caught:
        resolve_providers(requested, [AZURE, CPU])
    assert f"{AZURE}, {CPU}" in caught.value.reason


# -- the real model --------------------------------------------------------------------


def test_real_model_ranks_the_relevant_passage_first_and_matches_onnxruntime():
    if not (REAL_MODEL / "model.onnx").is_file() or not TOKENIZER_JSON.is_file():
        pytest.skip(f"the shared model scifact-minilm-l6-ce is not at {REAL_MODEL}")
    import onnxruntime as ort
    from tokenizers import Tokenizer

    query = "Vitamin D deficiency is associated with an increased risk of multiple sclerosis."
    passages = [
        "Football clubs in the English Premier League spent record sums on transfers.",
        "In a prospective cohort of 7 million military personnel, high serum "
        "25-hydroxyvitamin D levels were associated with a lower risk of multiple "
        "sclerosis, suggesting that vitamin D deficiency increases MS risk.",
        "The recipe calls for fresh tomatoes, garlic and olive oil, simmered for twenty minutes.",
    ]
    with OnnxReranker("scifact", REAL_MODEL / "model.onnx", TOKENIZER_JSON, intra_op_threads=1) as reranker:
        assert reranker.head == "single"
        scores = reranker.score(query, passages)
    assert int(np.argmax(scores)) == 1

    tokenizer = Tokenizer.from_file(str(TOKENIZER_JSON))
    session = ort.InferenceSession(str(REAL_MODEL / "model.onnx"), providers=[CPU])
    direct = []
    for passage in passages:
        enc = tokenizer.encode(query, passage)
        feeds = {
            "input_ids": np.array([enc.ids], dtype=np.int64),
            "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([enc.type_ids], dtype=np.int64),
        }
        direct.append(session.run(["logits"], feeds)[0][0, 0])
    np.testing.assert_allclose(scores, np.array(direct, dtype=np.float32), atol=1e-4, rtol=0)


def test_cuda_options_reach_the_cuda_provider(tiny_model_dir, monkeypatch):
    """`cuda_options` (device_id, memory limit...) go to ONNX Runtime with the CUDA provider."""
    import types

    import onnxruntime as ort

    from es_rerank.reranker import _onnx

    asked = []

    def session(model, sess_options=None, providers=None, **kwargs):
        asked.append(providers)
        return ort.InferenceSession(model, sess_options=sess_options, providers=["CPUExecutionProvider"])

    shim = types.SimpleNamespace(
        **{k: getattr(ort, k) for k in dir(ort) if not k.startswith("_") and k != "preload_dlls"}
    )
    shim.get_available_providers = lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    shim.InferenceSession = session
    monkeypatch.setattr(_onnx, "import_onnxruntime", lambda: shim)
    with OnnxReranker(
        "tiny", tiny_model_dir / "model.onnx", tiny_model_dir / "tokenizer.json",
        providers=["cuda", "cpu"], cuda_options={"device_id": 1, "arena_extend_strategy": "kSameAsRequested"}, warmup=False,
    ) as reranker:  # fmt: skip
        assert reranker.provider == "CPUExecutionProvider"  # this machine has no CUDA: ONNX Runtime fell back
    assert asked == [
        [
            ("CUDAExecutionProvider", {"device_id": "1", "arena_extend_strategy": "kSameAsRequested"}),
            "CPUExecutionProvider",
        ]
    ]


@pytest.mark.parametrize(
    "option, message",
    [
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
        ({"batch_wait_ms": -1.0}, "batch_wait_ms must be 0 or more"),
        ({"max_length": 0}, "max_length must be at least"),
        ({"cache_size": -1}, "cache size must be 0 (off) or more"),
        ({"token_cache_size": -1}, "cache_size must be 0 (off) or more"),
    ],
)
def test_out_of_range_options_are_model_option_errors(tiny_model_dir, option, message):
    """A clear error the CLI prints (a RerankError), and still a ValueError for callers that catch one."""
    from es_rerank.errors import ModelOptionError, RerankError

    with pytest.raises(ModelOptionError, match=re.escape(message)) as info:
        OnnxReranker("tiny", tiny_model_dir / "model.onnx", tiny_model_dir / "tokenizer.json", **option)
    assert isinstance(info.value, RerankError) and isinstance(info.value, ValueError)
