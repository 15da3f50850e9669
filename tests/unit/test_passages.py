"""Passages: a hit's text from its fields, source or template; long documents as chunks scored and aggregated per hit, against truncation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from es_rerank.config import ChunkSettings
from es_rerank.passages import aggregate_scores, field_values, hit_text, split_passages
from es_rerank.reranker import OnnxReranker

ROOT = Path(__file__).resolve().parents[2]


def test_aggregate_rules_by_hand():
    scores = np.array([1.0, 5.0, 3.0, 2.0, -1.0])
    owners = [0, 0, 0, 1, 1]
    assert aggregate_scores(scores, owners, 2, "max").tolist() == [5.0, 2.0]
    assert aggregate_scores(scores, owners, 2, "first").tolist() == [1.0, 2.0]
    assert aggregate_scores(scores, owners, 2, "mean_top", top_n=2).tolist() == [4.0, 0.5]
    assert aggregate_scores(scores, owners, 2, "mean_top", top_n=5).tolist() == [3.0, 0.5]
    with pytest.raises(ValueError):
        aggregate_scores(scores, owners, 3, "max")  # passage 2 has no chunk
    with pytest.raises(ValueError):
        aggregate_scores(scores, owners, 2, "median")


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    reranker = OnnxReranker("tiny", tiny_model_dir / "model.onnx", tiny_model_dir / "tokenizer.json", max_length=64)
    yield reranker
    reranker.close()


FILLER = "the committee reviewed quarterly budget figures and travel schedules for the regional office staff"
QUERY = "mitochondrial dysfunction in neurodegeneration"
RELEVANT = "mitochondrial dysfunction drives neurodegeneration in neurons"


def _docs() -> list[str]:
    long_filler = " ".join([FILLER] * 8)  # far past 64 tokens
    return [
        long_filler + " " + RELEVANT,  # the only relevant text sits past the truncation point
        long_filler,
        long_filler + " budget travel office",
        " ".join([FILLER] * 2),
    ]


def test_truncate_is_one_pass_per_hit(model):
    docs = _docs()
    chunks, owners = split_passages(docs, QUERY, ChunkSettings(), model, 64)
    assert chunks == docs and owners == [0, 1, 2, 3]


def test_chunks_respect_budget_and_cap(model):
    docs = _docs()
    settings = ChunkSettings(mode="chunk", chunk_tokens=32, stride=8, max_chunks=3)
    chunks, owners = split_passages(docs, QUERY, settings, model, 64)
    assert max(owners.count(i) for i in range(len(docs))) <= 3
    assert owners == sorted(owners) and set(owners) == set(range(len(docs)))
    settings = ChunkSettings(mode="chunk", chunk_tokens=32, stride=8, max_chunks=50)
    chunks, owners = split_passages(docs, QUERY, settings, model, 64)
    assert any(RELEVANT in c for c in chunks if owners[chunks.index(c)] == 0)


@pytest.mark.parametrize("rule", ["max", "mean_top", "first"])
def test_chunk_scores_find_relevant_text_past_truncation(model, rule):
    docs = _docs()
    truncated = model.score(QUERY, docs)
    assert truncated[0] <= truncated[1:].max(), "truncation cannot see the relevant text"
    settings = ChunkSettings(mode="chunk", chunk_tokens=24, stride=4, max_chunks=50, aggregate=rule, top_n=1)
    chunks, owners = split_passages(docs, QUERY, settings, model, 64)
    scores = aggregate_scores(model.score(QUERY, chunks), owners, len(docs), rule, settings.top_n)
    if rule == "first":
        # The first chunk is what truncation sees too: no gain, by design.
        assert scores[0] <= scores[1:].max()
    else:
        assert scores[0] > scores[1:].max(), "chunk scores rank it first"


FIXTURES = Path(__file__).parent / "fixtures"


def recorded(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


# --- passages: hit -> text ----------------------------------------------------


def test_hit_text_from_fields():
    hit = recorded("fields_no_source")["hits"]["hits"][0]
    assert "_source" not in hit
    assert hit_text(hit, ["title", "text"]) == "Heart attack care 1 Fast care after a heart attack saves heart muscle."


def test_hit_text_from_source():
    hit = recorded("match_agg_highlight")["hits"]["hits"][0]
    assert "fields" not in hit
    assert hit_text(hit, ["title", "text"]) == "Heart attack care 1 Fast care after a heart attack saves heart muscle."


def test_fields_win_over_source_and_source_fills_the_rest():
    hit = {"_source": {"title": "S title", "text": "S text"}, "fields": {"title": ["F title"]}}
    assert hit_text(hit, ["title", "text"]) == "F title S text"


def test_dotted_paths_arrays_and_numbers():
    hit = recorded("fields_mixed")["hits"]["hits"][0]  # _source: {"meta": {...}}
    assert hit_text(hit, ["meta.author"]) == "Grace Hopper"
    assert field_values(hit, "meta.year") == ["2026"]
    source_hit = recorded("match_agg_highlight")["hits"]["hits"][0]
    assert field_values(source_hit, "tags") == ["cardio", "t2"]
    assert hit_text(source_hit, ["tags", "category"]) == "cardio t2 cardio"
    nested = {
        "_source": {
            "authors": [{"name": "A", "aff": {"n": "X"}}, {"name": "B"}, {"name": None}],
            "chapters": [{"paras": ["p1", "p2"]}, {"paras": "p3"}],
        }
    }
    assert field_values(nested, "authors.name") == ["A", "B"]
    assert field_values(nested, "authors.aff.n") == ["X"]
    assert field_values(nested, "chapters.paras") == ["p1", "p2", "p3"]
    assert field_values(nested, "authors") == []  # objects are not text
    assert field_values(nested, "authors.missing") == []


def test_flat_field_values():
    assert field_values({"fields": {"title": "scalar"}}, "title") == ["scalar"]
    assert field_values({"fields": {"title": []}, "_source": {"title": "S"}}, "title") == []
    assert field_values({}, "title") == []
    assert field_values({"_source": None}, "title") == []


def test_flat_dotted_key_in_source():
    # {"meta.author": "Ada"} is a valid document that OpenSearch maps exactly like
    # {"meta": {"author": "Ada"}}; the _source fallback only walks nested objects.
    assert field_values({"_source": {"meta.author": "Ada"}}, "meta.author") == ["Ada"]


def test_missing_fields_are_skipped_without_extra_spaces():
    hit = {"_source": {"title": "T", "text": ""}}
    assert hit_text(hit, ["missing", "title", "text", "other"]) == "T"
    assert hit_text({}, ["title"]) == ""


def test_template():
    hit = recorded("fields_mixed")["hits"]["hits"][0]
    assert hit_text(hit, ["title", "text"], "{title}. {text}") == (
        "Heart attack care 5. Fast care after a heart attack saves heart muscle. Diet and exercise help the heart."
    )
    assert hit_text(hit, [], "{ title } by {meta.author} [{category}]") == (
        "Heart attack care 5 by Grace Hopper [cardio]"
    )


def test_template_with_missing_fields():
    hit = {"_source": {"title": "T", "tags": ["a", "b"]}}
    assert hit_text(hit, ["title"], "{title} | {missing}") == "T | "
    assert hit_text(hit, ["title"], "{missing}") == ""
    assert hit_text(hit, ["title"], "{tags}: {title}") == "a b: T"
    assert hit_text(hit, ["title"], "no placeholders") == "no placeholders"
