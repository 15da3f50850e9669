"""Pairs built from cached passage tokens equal what the tokenizer's own pair encoding gives."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from es_rerank.reranker._tokenize import PairTokenizer, make_feeds

ROOT = Path(__file__).resolve().parents[3]
BERT = ROOT / "demo" / "model" / "tokenizer.json"

QUERIES = [
    "0-dimensional biomaterials show inductive properties.",
    "a",
    "why " * 400,  # longer than any budget: clipped
]
PASSAGES = [
    "Alterations of the architecture of cerebral white matter in the developing human brain "
    "can affect cortical development and result in functional disabilities. " * 6,
    "",
    "   ",
    "short",
    "naïve café Ünïcødé — 東京大学 🙂 mixed scripts, punctuation!!! (and brackets) [x] {y}",
    "word " * 1000,
    "the same passage twice",
    "the same passage twice",
]


def _reference(path: Path, query: str, passages: list[str], max_length: int) -> list[tuple[list[int], list[int]]]:
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length, strategy="only_second")
    plain = PairTokenizer(path, cache_size=0)
    query = plain.clip_query(query, max_length)
    return [(e.ids, e.type_ids) for e in tokenizer.encode_batch([(query, p) for p in passages])]


def _got(encodings) -> list[tuple[list[int], list[int]]]:
    return [(list(map(int, e.ids)), list(map(int, e.type_ids))) for e in encodings]


@pytest.mark.parametrize("max_length", [8, 32, 128, 256])
@pytest.mark.parametrize("query", QUERIES)
def test_pairs_from_cached_passages_equal_the_tokenizers_pairs(query, max_length):
    tokenizer = PairTokenizer(BERT)
    want = _reference(BERT, query, PASSAGES, max_length)
    cold = tokenizer.encode_pairs(query, PASSAGES, max_length)
    assert tokenizer._templated  # the fast path ran
    assert _got(cold) == want
    warm = tokenizer.encode_pairs(query, PASSAGES, max_length)
    assert _got(warm) == want
    assert tokenizer.cache_hits == len(PASSAGES)


def test_a_cached_passage_is_not_tokenized_again_and_the_cache_is_bounded():
    tokenizer = PairTokenizer(BERT, cache_size=3)
    tokenizer.encode_pairs("q", ["one", "two", "two"], 64)
    assert (tokenizer.cache_hits, tokenizer.cache_misses) == (0, 2)  # the repeat is tokenized once
    tokenizer.encode_pairs("another query", ["one", "two"], 64)
    assert (tokenizer.cache_hits, tokenizer.cache_misses) == (2, 2)
    tokenizer.encode_pairs("q", ["three", "four"], 64)  # evicts the oldest ("one")
    assert tokenizer.cache_info()["entries"] == 3
    tokenizer.encode_pairs("q", ["one"], 64)
    assert tokenizer.cache_misses == 5
    # another max_length is another entry: a passage cut for 64 tokens is not reused at 256
    tokenizer.encode_pairs("q", ["four"], 256)
    assert tokenizer.cache_misses == 6


def test_cache_off_still_gives_the_same_pairs():
    tokenizer = PairTokenizer(BERT, cache_size=0)
    assert _got(tokenizer.encode_pairs(QUERIES[0], PASSAGES, 64)) == _reference(BERT, QUERIES[0], PASSAGES, 64)
    assert tokenizer.cache_info()["entries"] == 0


def _word_level(tmp_path: Path, processor) -> Path:
    words = ["[UNK]", "[CLS]", "[SEP]", "<s>", "</s>", "a", "b", "c", "d", "e", "f", "g", "h", "query", "passage"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processor
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    return path


@pytest.mark.parametrize(
    "processor",
    [
        processors.RobertaProcessing(("</s>", 4), ("<s>", 3)),  # <s> A </s></s> B </s>, no token types
        processors.TemplateProcessing(  # the passage first
            single="[CLS] $A [SEP]", pair="[CLS] $B:1 [SEP]:1 $A:0 [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
        ),
        processors.TemplateProcessing(  # the passage in two places: not one piece, so encode_batch
            single="$A", pair="$B:1 [SEP] $A [SEP] $B:1", special_tokens=[("[SEP]", 2)]
        ),
    ],
)
@pytest.mark.parametrize("threads", [1, 3])
def test_other_templates_give_the_tokenizers_pairs(tmp_path, processor, threads):
    path = _word_level(tmp_path, processor)
    passages = ["a b c d e f g h " * 5, "b", "", "zzz unknown words"] * 3  # with 3 threads: 3 shares
    tokenizer = PairTokenizer(path, threads=threads)
    for max_length in (6, 12, 40):
        for _ in range(2):
            assert _got(tokenizer.encode_pairs("query a b", passages, max_length)) == _reference(
                path, "query a b", passages, max_length
            )


def test_make_feeds_takes_pairs_and_encodings_alike():
    tokenizer = PairTokenizer(BERT)
    pairs = tokenizer.encode_pairs(QUERIES[0], PASSAGES[:4], 64)
    encodings = Tokenizer.from_file(str(BERT))
    encodings.enable_truncation(64, strategy="only_second")
    encodings.no_padding()
    reference = encodings.encode_batch([(QUERIES[0], p) for p in PASSAGES[:4]])
    a = make_feeds(pairs, 64, 0)
    b = make_feeds(reference, 64, 0)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert a["attention_mask"].sum() == sum(len(e.ids) for e in reference)


@pytest.mark.parametrize("chars_per_token", [1, 3, 12])
def test_long_passages_cut_before_tokenizing_give_the_same_pairs(monkeypatch, chars_per_token):
    from es_rerank.reranker import _tokenize

    monkeypatch.setattr(
        _tokenize, "CLIP_CHARS_PER_TOKEN", chars_per_token
    )  # 1 and 3: cut too short, tokenized whole again
    passages = PASSAGES + [
        "Cerebral white matter develops; " * 2000,  # a long document: cut long before its end
        "a " * 5000,  # one character a token
        "x" * 20000,  # no space to cut at
        "tab\tseparated\nlines " * 600,
    ]
    for max_length in (32, 256):
        tokenizer = PairTokenizer(BERT)
        assert _got(tokenizer.encode_pairs(QUERIES[0], passages, max_length)) == _reference(
            BERT, QUERIES[0], passages, max_length
        )


class _Recording:
    """A tokenizer stand-in that notes which thread each batch call ran on."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self.calls: list[tuple[str, int]] = []

    def encode_batch_fast(self, inputs, **options):
        self.calls.append((threading.current_thread().name, len(inputs)))
        return self._tokenizer.encode_batch_fast(inputs, **options)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def test_many_passages_are_tokenized_on_the_tokenizers_threads_with_the_same_pairs():
    passages = [f"passage {i}: " + PASSAGES[i % len(PASSAGES)] for i in range(40)]
    want = _reference(BERT, QUERIES[0], passages, 128)
    tokenizer = PairTokenizer(BERT, cache_size=0, threads=3)
    recording = tokenizer._plain = _Recording(tokenizer._plain)
    assert _got(tokenizer.encode_pairs(QUERIES[0], passages, 128)) == want
    assert sorted(n for _, n in recording.calls) == [12, 14, 14]  # 40 passages in three shares
    assert all(name.startswith("tokenize") for name, _ in recording.calls)
    recording.calls.clear()
    tokenizer.encode_pairs(QUERIES[0], passages[:4], 128)  # too few to share out
    assert [n for _, n in recording.calls] == [4] and not recording.calls[0][0].startswith("tokenize")
    tokenizer.close()  # later calls tokenize on the caller's thread
    assert _got(tokenizer.encode_pairs(QUERIES[0], passages, 128)) == want
    with pytest.raises(ValueError, match="threads"):
        PairTokenizer(BERT, threads=0)
