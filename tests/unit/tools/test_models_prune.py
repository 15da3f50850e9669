"""Structured pruning (tools.models.prune): the least-squares refit on synthetic Gram
matrices, the blocks found in a fused encoder, pruning a graph, and a model directory."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import helper, numpy_helper  # noqa: E402
from sdpaencoder import FFN, HEADS, HIDDEN, build_sdpa_encoder, build_sdpa_model_dir, sdpa_feeds  # noqa: E402  # tests/ is on sys.path (conftest)
from tinybeir import write_tiny_beir  # noqa: E402

from es_rerank.errors import ModelError  # noqa: E402
from es_rerank.reranker.modeldir import read_model_config  # noqa: E402
from es_rerank.reranker.optimize import fuse_attention  # noqa: E402
from es_rerank.tools.models import PruneResult, prune_model  # noqa: E402
from es_rerank.tools.models.prune import BlockReport, find_blocks, prune_graph, refit  # noqa: E402

TOKENIZER_JSON = Path(__file__).resolve().parents[3] / "demo" / "model" / "tokenizer.json"
HEAD_SIZE = HIDDEN // HEADS


# --- refit on synthetic Gram matrices -------------------------------------------------


def _gram(x: np.ndarray) -> np.ndarray:
    """[X 1]^T [X 1], as prune's calibration pass accumulates it."""
    xa = np.hstack([x, np.ones((len(x), 1))])
    return xa.T @ xa


def _relative_error(x: np.ndarray, weight: np.ndarray, columns: np.ndarray, rows: np.ndarray, shift) -> float:
    target = x @ weight
    return float(np.sum((target - (x[:, columns] @ rows + shift)) ** 2) / np.sum(target**2))


def test_refit_recovers_a_target_the_kept_columns_span():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 6))
    x[:, 4] = x[:, 0] + 2 * x[:, 1]  # the dropped columns are combinations of kept ones
    x[:, 5] = x[:, 2] - 0.5 * x[:, 3]
    weight = rng.standard_normal((6, 3))
    columns = np.arange(4)
    rows, shift, error = refit(_gram(x), weight, columns, intercept=False, ridge=0.0)
    assert rows.shape == (4, 3)
    np.testing.assert_array_equal(shift, np.zeros(3))
    assert error < 1e-10
    np.testing.assert_allclose(x[:, columns] @ rows, x @ weight, atol=1e-8)
    # the dropped rows folded into the kept ones they are made of
    expected = weight[:4].copy()
    expected[0] += weight[4]
    expected[1] += 2 * weight[4]
    expected[2] += weight[5]
    expected[3] -= 0.5 * weight[5]
    np.testing.assert_allclose(rows, expected, atol=1e-8)
    # dropping the columns alone loses their share
    assert _relative_error(x, weight, columns, weight[columns], 0.0) > 0.1


def test_refit_keeps_the_rows_when_the_dropped_ones_are_zero():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 5))
    weight = rng.standard_normal((5, 4))
    weight[[1, 3]] = 0.0
    columns = np.array([0, 2, 4])
    rows, _, error = refit(_gram(x), weight, columns, intercept=False, ridge=0.0)
    assert error < 1e-10
    np.testing.assert_allclose(rows, weight[columns], atol=1e-8)
    np.testing.assert_allclose(x[:, columns] @ rows, x @ weight, atol=1e-8)


def test_refit_moves_a_constant_column_into_the_bias():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 6))
    x[:, 5] = 3.0  # a dropped column that is constant: its share is a constant offset
    weight = rng.standard_normal((6, 3))
    columns = np.arange(5)
    rows, shift, error = refit(_gram(x), weight, columns, intercept=True, ridge=0.0)
    assert error < 1e-10
    np.testing.assert_allclose(shift, 3.0 * weight[5], atol=1e-8)
    np.testing.assert_allclose(rows, weight[:5], atol=1e-8)
    np.testing.assert_allclose(x[:, columns] @ rows + shift, x @ weight, atol=1e-8)
    # without the intercept the kept (zero-mean) columns cannot make the offset
    _, no_shift, no_intercept_error = refit(_gram(x), weight, columns, intercept=False, ridge=0.0)
    np.testing.assert_array_equal(no_shift, np.zeros(3))
    assert no_intercept_error > 0.05


@pytest.mark.parametrize("intercept", [False, True])
@pytest.mark.parametrize("ridge", [0.0, 1e-3, 1e-1])
def test_refit_beats_dropping_the_columns_and_reports_its_true_error(intercept, ridge):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, 8)) @ rng.standard_normal((8, 8)) + 0.5  # correlated columns, an offset
    weight = rng.standard_normal((8, 4))
    columns = np.array([0, 2, 3, 5, 7])
    rows, shift, error = refit(_gram(x), weight, columns, intercept=intercept, ridge=ridge)
    assert error == pytest.approx(_relative_error(x, weight, columns, rows, shift), rel=1e-6)
    dropped = _relative_error(x, weight, columns, weight[columns], 0.0)
    assert 0 < error < 0.5 * dropped


def test_more_ridge_fits_the_calibration_data_less_well():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((400, 8)) @ rng.standard_normal((8, 8))
    weight = rng.standard_normal((8, 4))
    columns = np.array([1, 2, 4, 6])
    errors = [refit(_gram(x), weight, columns, intercept=True, ridge=r)[2] for r in (0.0, 1e-2, 1.0)]
    assert errors[0] < errors[1] < errors[2]


# --- graphs ---------------------------------------------------------------------------


CALIBRATION = [sdpa_feeds(seed, rows=16, width=16) for seed in range(10, 22)]
HELD_OUT = sdpa_feeds(99, rows=64, width=16)  # not in the calibration set


def _scores(model, feeds=HELD_OUT) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0][:, 0]


def _fused(tmp_path: Path, *, biases: bool, layers: int = 2):
    model = onnx.load(str(build_sdpa_encoder(tmp_path / f"model-{biases}.onnx", layers=layers, biases=biases)))
    assert fuse_attention(model) == layers
    return model


def _copy(model):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _weights(model) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _num_heads(model) -> list[int]:
    return [
        next(a.i for a in node.attribute if a.name == "num_heads")
        for node in model.graph.node
        if node.op_type == "Attention"
    ]


def _kept_units(block, original: dict[str, np.ndarray], pruned: dict[str, np.ndarray]) -> list[int]:
    """Which of ``block``'s units the pruned in-weight still holds (its columns are copies)."""
    before, after = original[block.in_weight], pruned[block.in_weight]
    parts = 3 if block.kind == "attention" else 1  # Q, K and V side by side
    width = block.units * block.unit
    kept_width = after.shape[1] // parts

    def unit_of(part: int, j: int) -> int:
        piece = after[:, part * kept_width + j * block.unit : part * kept_width + (j + 1) * block.unit]
        found = [
            u
            for u in range(block.units)
            if np.array_equal(before[:, part * width + u * block.unit : part * width + (u + 1) * block.unit], piece)
        ]
        assert len(found) == 1, f"{block.kind} {block.layer}: pruned columns {j} are no unit of the original"
        return found[0]

    kept = [unit_of(0, j) for j in range(kept_width // block.unit)]
    for part in range(1, parts):  # K and V keep the same heads as Q
        assert [unit_of(part, j) for j in range(len(kept))] == kept
    return kept


# --- find_blocks ----------------------------------------------------------------------


@pytest.mark.parametrize("biases", [False, True])
def test_find_blocks_finds_each_layers_attention_and_feed_forward(tmp_path, biases):
    model = _fused(tmp_path, biases=biases)
    blocks = find_blocks(model.graph)
    assert [(b.kind, b.layer) for b in blocks] == [("attention", 0), ("ffn", 0), ("attention", 1), ("ffn", 1)]
    inits = _weights(model)
    for block in blocks:
        p = f"l{block.layer}_"
        if block.kind == "attention":
            assert (block.units, block.unit) == (HEADS, HEAD_SIZE)
            assert block.node.op_type == "Attention" and block.signal == block.node.output[0]
            assert inits[block.in_weight].shape == (HIDDEN, 3 * HIDDEN)
            assert inits[block.in_bias].shape == (3 * HIDDEN,)  # the fused Q, K, V bias
            assert block.out_weight == p + "wo"
            assert block.out_bias == (p + "bo" if biases else None)
        else:
            assert (block.units, block.unit) == (FFN, 1)
            assert (block.in_weight, block.out_weight) == (p + "w1", p + "w2")
            assert block.in_bias == (p + "b1" if biases else None)
            assert block.out_bias == (p + "b2" if biases else None)
            assert block.signal == (p + "gelu" if biases else p + "relu")


def test_find_blocks_on_an_unfused_graph_finds_only_the_feed_forward(tmp_path):
    model = onnx.load(str(build_sdpa_encoder(tmp_path / "model.onnx", layers=2)))
    assert [(b.kind, b.layer) for b in find_blocks(model.graph)] == [("ffn", 0), ("ffn", 1)]


def test_find_blocks_refuses_a_shared_initializer(tmp_path):
    model = _fused(tmp_path, biases=False)
    out_projection = next(n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] == "l1_wo")
    out_projection.input[1] = "l0_wo"  # both layers' output projections read one weight
    with pytest.raises(ModelError, match="initializer 'l0_wo' is shared by several nodes; cannot prune it in place"):
        find_blocks(model.graph)


def test_find_blocks_refuses_an_attention_already_pruned_or_read_twice(tmp_path):
    model = _fused(tmp_path, biases=False)
    attention = next(n for n in model.graph.node if n.op_type == "Attention")
    attention.attribute.append(helper.make_attribute("qkv_hidden_sizes", [16, 16, 16]))
    with pytest.raises(ModelError, match="already pruned or has no weight initializer"):
        find_blocks(model.graph)
    model = _fused(tmp_path, biases=False)
    attention = next(n for n in model.graph.node if n.op_type == "Attention")
    model.graph.node.append(helper.make_node("Identity", [attention.output[0]], ["peek"], name="peek"))
    with pytest.raises(ModelError, match="does not feed one output projection"):
        find_blocks(model.graph)


# --- prune_graph ----------------------------------------------------------------------


@pytest.mark.parametrize("biases", [False, True])
def test_prune_graph_shrinks_each_block_and_the_graph_still_runs(tmp_path, biases):
    model = _fused(tmp_path, biases=biases)
    reference = _scores(model)
    messages: list[str] = []
    reports = prune_graph(model, CALIBRATION, heads=[3, 1], ffn=[48, 20], progress=messages.append)
    assert [(r.kind, r.layer, r.kept, r.units) for r in reports] == [
        ("attention", 0, 3, HEADS),
        ("ffn", 0, 48, FFN),
        ("attention", 1, 1, HEADS),
        ("ffn", 1, 20, FFN),
    ]
    assert all(isinstance(r, BlockReport) and 0 < r.error < 1 for r in reports)
    assert len(messages) == 4
    assert re.fullmatch(r"layer 1 attention: kept 1 of 4 heads, output refitted \(\d+\.\d\d% error\)", messages[2])
    assert re.fullmatch(r"layer 0 ffn: kept 48 of 64 neurons, output refitted \(\d+\.\d\d% error\)", messages[1])
    onnx.checker.check_model(model)
    assert _num_heads(model) == [3, 1]
    w = _weights(model)
    for layer, heads, neurons in ((0, 3, 48), (1, 1, 20)):
        p = f"l{layer}_"
        assert w[f"attention_{layer}_qkv_weight"].shape == (HIDDEN, 3 * heads * HEAD_SIZE)
        assert w[f"attention_{layer}_qkv_bias"].shape == (3 * heads * HEAD_SIZE,)
        assert w[p + "wo"].shape == (heads * HEAD_SIZE, HIDDEN)
        assert w[p + "w1"].shape == (HIDDEN, neurons)
        assert w[p + "w2"].shape == (neurons, HIDDEN)
        if biases:
            assert w[p + "b1"].shape == (neurons,)
            assert w[p + "bo"].shape == w[p + "b2"].shape == (HIDDEN,)
    scores = _scores(model)
    assert scores.shape == reference.shape and np.all(np.isfinite(scores))
    assert not np.array_equal(scores, reference)


@pytest.mark.parametrize("biases", [False, True])
def test_the_refit_brings_the_pruned_graph_closer_than_removing_the_units(tmp_path, biases):
    """The same heads and neurons removed without the refit (their output rows zeroed)
    drift further from the original scores, on pairs the calibration did not see."""
    original = _fused(tmp_path, biases=biases)
    reference = _scores(original)
    pruned = _copy(original)
    prune_graph(pruned, CALIBRATION, heads=[3, 3], ffn=[48, 48])
    before, after = _weights(original), _weights(pruned)
    removed = _copy(original)
    inits = {i.name: i for i in removed.graph.initializer}
    for block in find_blocks(original.graph):
        kept = _kept_units(block, before, after)
        assert len(kept) == (3 if block.kind == "attention" else 48)
        rows = before[block.out_weight].copy()
        for unit in set(range(block.units)) - set(kept):
            rows[unit * block.unit : (unit + 1) * block.unit] = 0.0
        inits[block.out_weight].CopyFrom(numpy_helper.from_array(rows, block.out_weight))
    refitted, without = _scores(pruned), _scores(removed)
    assert np.corrcoef(refitted, reference)[0, 1] > 0.95  # strongly correlated with the unpruned scores
    assert np.corrcoef(refitted, reference)[0, 1] > np.corrcoef(without, reference)[0, 1]
    assert np.max(np.abs(refitted - reference)) < np.max(np.abs(without - reference))
    assert np.mean((refitted - reference) ** 2) < 0.6 * np.mean((without - reference) ** 2)


def test_keeping_every_unit_leaves_the_graph_as_it_was(tmp_path):
    model = _fused(tmp_path, biases=True)
    before = model.SerializeToString()
    messages: list[str] = []
    reports = prune_graph(model, CALIBRATION, heads=[HEADS, HEADS], ffn=None, progress=messages.append)
    assert [(r.kind, r.kept, r.units, r.error) for r in reports] == [
        ("attention", HEADS, HEADS, 0.0),
        ("ffn", FFN, FFN, 0.0),
    ] * 2
    assert messages == []
    assert model.SerializeToString() == before
    np.testing.assert_array_equal(_scores(model), _scores(onnx.load_from_string(before)))


def test_pruning_only_the_feed_forward_keeps_every_head(tmp_path):
    model = _fused(tmp_path, biases=False)
    reports = prune_graph(model, CALIBRATION, ffn=[32, 32])
    assert [r.kept for r in reports] == [HEADS, 32, HEADS, 32]
    assert _num_heads(model) == [HEADS, HEADS]
    assert _weights(model)["attention_1_qkv_weight"].shape == (HIDDEN, 3 * HIDDEN)
    assert np.corrcoef(_scores(model), _scores(_fused(tmp_path, biases=False)))[0, 1] > 0.9


@pytest.mark.parametrize(
    "kwargs, batches, message",
    [
        ({"heads": [2]}, CALIBRATION, "1 attention sizes given for 2 layers"),
        ({"ffn": [32, 32, 32]}, CALIBRATION, "3 ffn sizes given for 2 layers"),
        ({"heads": [2, 0]}, CALIBRATION, "layer 1 attention: cannot keep 0 of 4"),
        ({"heads": [5, 2]}, CALIBRATION, "layer 0 attention: cannot keep 5 of 4"),
        ({"ffn": [32, 65]}, CALIBRATION, "layer 1 ffn: cannot keep 65 of 64"),
        ({"heads": [2, 2]}, [], "the calibration set is empty"),
    ],
)
def test_prune_graph_refuses_sizes_it_cannot_keep_and_changes_nothing(tmp_path, kwargs, batches, message):
    model = _fused(tmp_path, biases=False)
    before = model.SerializeToString()
    with pytest.raises(ModelError, match=re.escape(message)):
        prune_graph(model, batches, **kwargs)
    assert model.SerializeToString() == before


def test_prune_graph_needs_fused_attention_for_heads(tmp_path):
    model = onnx.load(str(build_sdpa_encoder(tmp_path / "model.onnx", layers=2)))
    with pytest.raises(ModelError, match=re.escape("no fused attention blocks to prune (is its attention fused?)")):
        prune_graph(model, CALIBRATION, heads=[2, 2])


def test_pruning_leaves_no_stale_shape_for_a_bias_add_before_the_activation(tmp_path):
    model = onnx.load(str(build_sdpa_encoder(tmp_path / "model.onnx", layers=1)))
    graph = model.graph
    relu = next(n for n in graph.node if n.op_type == "Relu")
    relu.input[0] = "l0_ffn1_biased"
    graph.node.insert(
        list(graph.node).index(relu), helper.make_node("Add", ["l0_ffn1", "l0_b1"], ["l0_ffn1_biased"], name="l0_b1")
    )
    graph.initializer.append(numpy_helper.from_array(np.full(FFN, 0.1, np.float32), "l0_b1"))
    model = onnx.shape_inference.infer_shapes(model)  # value_info for the intermediate tensors, as exports have
    assert [b.in_bias for b in find_blocks(model.graph)] == ["l0_b1"]
    prune_graph(model, CALIBRATION, ffn=[32])
    onnx.checker.check_model(model, full_check=True)  # strict shape inference: 32 inferred, 64 declared


# --- prune_model ----------------------------------------------------------------------

needs_tokenizer = pytest.mark.skipif(not TOKENIZER_JSON.is_file(), reason=f"demo tokenizer not at {TOKENIZER_JSON}")


@pytest.fixture(scope="module")
def beir(tmp_path_factory) -> Path:
    return write_tiny_beir(tmp_path_factory.mktemp("beir"))


@needs_tokenizer
@pytest.mark.parametrize("biases", [False, True])
def test_prune_model_fuses_prunes_writes_and_records_the_variant(tmp_path, beir, biases):
    model_dir = build_sdpa_model_dir(tmp_path / "model", tokenizer_json=TOKENIZER_JSON, biases=biases)
    source_bytes = (model_dir / "model.onnx").read_bytes()
    messages: list[str] = []
    result = prune_model(
        model_dir, beir, heads=2, ffn=[40, 30], calibration_pairs=12, batch_size=4, progress=messages.append
    )
    assert isinstance(result, PruneResult)
    assert result.output == model_dir / "model.pruned.onnx" and result.output.is_file()
    assert result.source == model_dir / "model.onnx"
    assert (model_dir / "model.onnx").read_bytes() == source_bytes  # the source is left alone
    assert result.kept("attention") == [2, 2] and result.kept("ffn") == [40, 30]
    assert [(b.kind, b.layer) for b in result.blocks] == [("attention", 0), ("ffn", 0), ("attention", 1), ("ffn", 1)]
    assert result.source_bytes == len(source_bytes)
    assert result.output_bytes == result.output.stat().st_size < result.source_bytes
    assert isinstance(result.max_abs_diff, float) and math.isfinite(result.max_abs_diff) and result.max_abs_diff > 0
    assert messages[:2] == ["fused the graph: 2 attention layers", "calibrating on 12 train pairs in 3 batches"]
    assert len(messages) == 6
    for message, (kind, layer, kept, units, what) in zip(
        messages[2:],
        [("attention", 0, 2, 4, "heads"), ("ffn", 0, 40, 64, "neurons"), ("attention", 1, 2, 4, "heads")]
        + [("ffn", 1, 30, 64, "neurons")],
    ):
        assert message.startswith(f"layer {layer} {kind}: kept {kept} of {units} {what}, output refitted (")
    pruned = onnx.load(str(result.output))
    onnx.checker.check_model(pruned)
    assert _num_heads(pruned) == [2, 2]
    variant = read_model_config(model_dir).variants["model.pruned.onnx"]
    assert variant == {
        "kind": "pruned",
        "from": "model.onnx",
        "heads": [2, 2],
        "ffn": [40, 30],
        "calibration": {"corpus": beir.name, "split": "train", "pairs": 12, "seed": 0},
        "ridge": 1e-3,
    }


@needs_tokenizer
def test_prune_model_needs_something_to_prune(tmp_path, beir):
    model_dir = build_sdpa_model_dir(tmp_path / "model", tokenizer_json=TOKENIZER_JSON)
    with pytest.raises(ModelError, match="nothing to prune: give heads, ffn or both"):
        prune_model(model_dir, beir)
    assert not (model_dir / "model.pruned.onnx").exists()


@needs_tokenizer
def test_prune_model_refuses_heads_it_cannot_fuse_and_writes_nothing(tmp_path, beir):
    """Without config.json the encoder's attention is not fused: no heads to prune."""
    model_dir = build_sdpa_model_dir(tmp_path / "model", tokenizer_json=TOKENIZER_JSON, config=False)
    with pytest.raises(ModelError, match="no fused attention blocks to prune"):
        prune_model(model_dir, beir, heads=2, calibration_pairs=4)
    with pytest.raises(ModelError, match="3 attention sizes given for 2 layers"):
        prune_model(build_sdpa_model_dir(tmp_path / "fusable", tokenizer_json=TOKENIZER_JSON), beir, heads=[2, 2, 2])
    assert not (model_dir / "model.pruned.onnx").exists() and not (tmp_path / "fusable/model.pruned.onnx").exists()


@needs_tokenizer
def test_prune_model_prunes_the_feed_forward_of_a_graph_without_fused_attention_per_layer_list(tmp_path, beir):
    model_dir = build_sdpa_model_dir(tmp_path / "model", tokenizer_json=TOKENIZER_JSON, config=False)
    result = prune_model(model_dir, beir, ffn=[40, 30], calibration_pairs=8)
    assert result.kept("ffn") == [40, 30] and result.kept("attention") == []


@needs_tokenizer
def test_prune_model_takes_one_ffn_count_for_a_graph_without_fused_attention(tmp_path, beir):
    model_dir = build_sdpa_model_dir(tmp_path / "model", tokenizer_json=TOKENIZER_JSON, config=False)
    messages: list[str] = []
    result = prune_model(model_dir, beir, ffn=32, calibration_pairs=8, progress=messages.append)
    assert result.kept("ffn") == [32, 32]
    assert messages[0] == "the graph's attention did not fuse"
