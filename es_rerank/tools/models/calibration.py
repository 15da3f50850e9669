"""Calibration sets for static int8: (query, passage) pairs from a BEIR data set, as the model sees them serving."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...errors import DatasetError, ModelError
from ...reranker._tokenize import INPUT_NAMES, PairTokenizer, iter_batches
from ..datasets import beir_files, iter_corpus, load_beir, load_passages
from ._common import _import_onnx_tools, _open_model_dir

__all__ = ["calibration_pairs", "calibration_batches", "model_inputs"]

# Random draws per wanted negative before a query is given fewer (a corpus nearly all judged for it).
_DRAWS_PER_NEGATIVE = 20


def _negatives(rng: random.Random, doc_ids: Sequence[str], judged: set[str], n: int) -> list[str]:
    picked: list[str] = []
    for _ in range(n * _DRAWS_PER_NEGATIVE):
        if len(picked) == n:
            break
        doc = doc_ids[rng.randrange(len(doc_ids))]
        if doc not in judged and doc not in picked:
            picked.append(doc)
    return picked


def calibration_pairs(
    corpus_dir: str | Path,
    *,
    split: str = "train",
    pairs: int = 256,
    negatives: int = 3,
    seed: int = 0,
    fields: Sequence[str] = ("title", "text"),
) -> list[tuple[str, str]]:
    """Up to ``pairs`` (query, passage) pairs from a BEIR folder's ``split``, the same for a ``seed``.

    Queries are taken in a seeded order; each brings its relevant documents (grade above
    0) and ``negatives`` other documents drawn from the corpus, so the calibration sees
    the activations of both. A passage is its ``fields`` joined by a space, as the proxy
    builds one. Use a split the model will not be evaluated on (SciFact: train).
    """
    if pairs < 1 or negatives < 0:
        raise DatasetError(f"pairs must be at least 1 and negatives 0 or more, got {pairs} and {negatives}")
    files = beir_files(corpus_dir, split)
    if files.qrels is None:
        raise DatasetError(f"{corpus_dir} has no qrels for split {split!r} (qrels/{split}.tsv or qrels-{split}.tsv)")
    data = load_beir(files.queries, files.qrels)
    doc_ids = sorted({doc["_id"] for doc in iter_corpus(files.corpus)})
    if not doc_ids:
        raise DatasetError(f"corpus {files.corpus} holds no documents")
    known = set(doc_ids)
    rng = random.Random(seed)
    order = sorted(data.queries)
    rng.shuffle(order)
    chosen: list[tuple[str, str]] = []
    for qid in order:
        judged = data.qrels[qid]
        relevant = sorted(doc for doc, grade in judged.items() if grade > 0 and doc in known)
        chosen.extend((qid, doc) for doc in relevant + _negatives(rng, doc_ids, set(judged), negatives))
        if len(chosen) >= pairs:
            break
    chosen = chosen[:pairs]
    texts = load_passages(files.corpus, fields, ids={doc for _, doc in chosen})
    return [(data.queries[qid], texts[doc]) for qid, doc in chosen]


def model_inputs(onnx_path: Path) -> dict[str, np.dtype]:
    """The inputs an ONNX file declares (initializers aside), with their numpy types, in graph order."""
    onnx = _import_onnx_tools()
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"cannot read {onnx_path}: {exc}") from None
    initializers = {i.name for i in model.graph.initializer}
    return {
        i.name: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type))
        for i in model.graph.input
        if i.name not in initializers
    }


def calibration_batches(
    model_dir: Path,
    corpus_dir: str | Path,
    *,
    split: str = "train",
    pairs: int = 256,
    batch_size: int = 16,
    max_length: int | None = None,
    seed: int = 0,
    onnx_file: str | None = None,
) -> list[dict[str, np.ndarray]]:
    """:func:`calibration_pairs` tokenized and batched as the engine does, the model's inputs a batch.

    The serving tokenizer (``only_second`` truncation at ``max_length``, default the
    directory's) and the serving batcher: pairs sorted by length, each batch padded to
    its own longest, the inputs the ONNX file declares in the types it declares.
    """
    if batch_size < 1:
        raise ModelError(f"batch_size must be at least 1, got {batch_size}")
    md = _open_model_dir(model_dir, onnx_file)
    inputs = model_inputs(md.onnx)
    unknown = sorted(set(inputs) - set(INPUT_NAMES))
    if unknown:
        raise ModelError(f"{md.onnx} takes inputs the tokenizer does not make: {', '.join(unknown)}")
    length = max_length or md.max_length
    tokenizer = PairTokenizer(md.tokenizer, cache_size=0)
    try:
        by_query: dict[str, list[str]] = {}
        for query, passage in calibration_pairs(corpus_dir, split=split, pairs=pairs, seed=seed):
            by_query.setdefault(query, []).append(passage)
        encoded = [e for query, passages in by_query.items() for e in tokenizer.encode_pairs(query, passages, length)]
        return [feeds for _, feeds in iter_batches(encoded, batch_size, tokenizer.pad_id, list(inputs), dict(inputs))]
    finally:
        tokenizer.close()
