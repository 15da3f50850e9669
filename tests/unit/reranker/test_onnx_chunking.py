"""Long documents: chunk_text (windows of model tokens, cut from the original string)
and query_token_budget (passage tokens that fit beside a query)."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from es_rerank.reranker import OnnxReranker

LONG = (
    "Multiple sclerosis (MS) is a demyelinating disease in which the insulating covers of nerve cells "
    "in the brain and spinal cord are damaged. Vitamin D deficiency, smoking and Epstein–Barr virus "
    "infection are among the risk factors; naïve T cells, café-au-lait spots and CD4+ counts are not. "
) * 6


@pytest.fixture(scope="module")
def reranker(tiny_model_dir):
    with OnnxReranker("tiny", tiny_model_dir / "model.onnx", tiny_model_dir / "tokenizer.json") as r:
        yield r


@pytest.fixture(scope="module")
def plain(tiny_model_dir) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _spans(plain: Tokenizer, text: str) -> list[tuple[int, int]]:
    return plain.encode(text, add_special_tokens=False).offsets


@pytest.mark.parametrize("chunk_tokens, stride", [(32, 8), (50, 0), (64, 63), (17, 5)])
def test_windows_cover_the_text_with_the_stride(reranker, plain, chunk_tokens, stride):
    offsets = _spans(plain, LONG)
    n = len(offsets)
    chunks = reranker.chunk_text(LONG, chunk_tokens, stride, max_chunks=1000)
    step = chunk_tokens - stride
    assert len(chunks) == 1 + max(0, -(-(n - chunk_tokens) // step))
    for i, chunk in enumerate(chunks):
        start = i * step
        end = min(start + chunk_tokens, n)
        # each chunk is the original string between its first and last token
        assert chunk == LONG[offsets[start][0] : offsets[end - 1][1]]
    assert chunks[0].startswith("Multiple sclerosis")
    assert LONG.rstrip().endswith(chunks[-1][-20:])


def test_chunks_are_slices_of_the_original_string(reranker):
    chunks = reranker.chunk_text(LONG, 20, 5, 100)
    position = 0
    for chunk in chunks:
        found = LONG.find(chunk, max(0, position - len(chunk)))
        assert found >= 0  # accents, capitals and punctuation kept as written
        position = found + 1
    assert any("naïve" in c or "café" in c for c in chunks)


def test_max_chunks_and_short_texts(reranker):
    assert len(reranker.chunk_text(LONG, 16, 4, 3)) == 3
    assert reranker.chunk_text("a short text", 16, 4, 3) == ["a short text"]
    assert reranker.chunk_text("", 16, 4, 3) == []
    assert reranker.chunk_text("   ", 16, 4, 3) == []


@pytest.mark.parametrize("args", [(0, 0, 1), (8, 8, 1), (8, -1, 1), (8, 2, 0)])
def test_bad_chunk_arguments(reranker, args):
    with pytest.raises(ValueError):
        reranker.chunk_text(LONG, *args)


def test_query_token_budget(reranker, plain):
    query = "vitamin d deficiency and multiple sclerosis"
    query_tokens = len(plain.encode(query, add_special_tokens=False).ids)
    assert reranker.query_token_budget(query, 256) == 256 - 3 - query_tokens
    assert reranker.query_token_budget("", 64) == 64 - 3
    # a huge query is clipped to half of what the special tokens leave
    huge = "word " * 1000
    assert reranker.query_token_budget(huge, 256) == 256 - 3 - (256 - 3) // 2
    with pytest.raises(ValueError):
        reranker.query_token_budget(query, 2)


def test_a_chunk_of_the_budget_fits_beside_the_query(reranker):
    query = "vitamin d deficiency and multiple sclerosis"
    budget = reranker.query_token_budget(query, 64)
    chunks = reranker.chunk_text(LONG, budget, 8, 50)
    lengths = reranker.token_lengths(query, chunks, max_length=1024)
    assert max(lengths) <= 64 + 2  # re-tokenizing a slice may split its edge word differently
