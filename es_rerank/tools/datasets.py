"""BEIR data sets, read one way for every tool: corpus, queries, qrels, saved first-stage runs.

A BEIR data set is a folder::

    corpus.jsonl[.gz]      {"_id", "title", "text"[, "metadata"]} a line
    queries[-<split>].jsonl {"_id", "text"} a line
    qrels/<split>.tsv      query-id<TAB>corpus-id<TAB>score, with a header line
                           (or qrels-<split>.tsv beside the queries, as demo/scifact/ has it)

The rules, the same for ``index``, ``eval``, ``plan`` and ``bench``: a file is gzip when
its first bytes say so, whatever its name; blank lines are skipped; ids are strings (an
integer ``_id`` becomes one); a document's missing or null ``title`` is ``""``; a bad
line raises :class:`~es_rerank.errors.DatasetError` naming the file and the line.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..errors import DatasetError

__all__ = [
    "BeirFiles",
    "EvalData",
    "beir_files",
    "check_file",
    "is_gzip",
    "iter_corpus",
    "load_beir",
    "load_passages",
    "load_qrels",
    "load_queries",
    "load_run",
    "open_text",
    "save_run",
]

_GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path: Path) -> bool:
    """Whether ``path`` starts with gzip's magic bytes (its name does not matter)."""
    with path.open("rb") as f:
        return f.read(2) == _GZIP_MAGIC


def open_text(path: Path) -> IO[str]:
    """``path`` opened as UTF-8 text, gunzipped when it is gzip."""
    if is_gzip(path):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return path.open("r", encoding="utf-8")


def check_file(path: Path, what: str) -> None:
    """A DatasetError unless ``path`` is an existing file; ``what`` names it in the message."""
    if not path.exists():
        raise DatasetError(f"{what} {path}: no such file")
    if not path.is_file():
        raise DatasetError(f"{what} {path}: not a file")


def _read_lines(path: Path, what: str) -> list[str]:
    try:
        with open_text(Path(path)) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        raise DatasetError(f"{what} file {path} does not exist") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{what} file {path} is not UTF-8 text") from None
    except (gzip.BadGzipFile, EOFError) as exc:
        raise DatasetError(f"{what} file {path} cannot be read: {exc}") from None
    except OSError as exc:
        raise DatasetError(f"cannot read {what} file {path}: {exc.strerror}") from None


# -- corpus ----------------------------------------------------------------------------


def _doc_from_line(line: str, path: Path, lineno: int) -> dict[str, str]:
    where = f"{path}:{lineno}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    doc_id = obj.get("_id")
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)) or doc_id == "":
        raise DatasetError(f"{where}: '_id' must be a non-empty string, got {doc_id!r}")
    title = obj.get("title")
    text = obj.get("text")
    if title is None:
        title = ""  # BEIR allows a missing title; an abstract without one is common
    if not isinstance(title, str):
        raise DatasetError(f"{where}: 'title' must be a string, got {type(title).__name__}")
    if not isinstance(text, str):
        got = "nothing" if text is None else type(text).__name__
        raise DatasetError(f"{where}: 'text' must be a string, got {got}")
    return {"_id": str(doc_id), "title": title, "text": text}


def iter_corpus(path: str | Path) -> Iterator[dict[str, str]]:
    """Yield ``{"_id", "title", "text"}`` for each document of a BEIR corpus file.

    ``path`` is ``corpus.jsonl`` or ``corpus.jsonl.gz``. Other keys (BEIR's ``metadata``)
    are dropped. A bad line raises when the iteration reaches it.
    """
    path = Path(path)
    check_file(path, "corpus")
    lineno = 0
    try:
        with open_text(path) as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    yield _doc_from_line(line, path, lineno)
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text after line {lineno} ({e.reason})") from None
    except (gzip.BadGzipFile, EOFError, OSError) as e:
        raise DatasetError(f"corpus {path}: cannot be read after line {lineno}: {e}") from e


def load_passages(
    path: str | Path, fields: Sequence[str] = ("title", "text"), ids: Iterable[str] | None = None
) -> dict[str, str]:
    """Doc id -> its non-empty ``fields`` joined by a space (as the proxy joins them), for ``ids`` or every doc."""
    wanted = set(ids) if ids is not None else None
    out: dict[str, str] = {}
    for doc in iter_corpus(path):
        did = doc["_id"]
        if wanted is not None and did not in wanted:
            continue
        out[did] = " ".join(str(doc[f]) for f in fields if doc.get(f))
    return out


# -- queries and qrels -----------------------------------------------------------------


def load_queries(path: str | Path) -> dict[str, str]:
    """BEIR ``queries.jsonl``: one ``{"_id": ..., "text": ...}`` object a line."""
    path = Path(path)
    queries: dict[str, str] = {}
    for n, line in enumerate(_read_lines(path, "queries"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise DatasetError(f"{path}:{n}: not a JSON object") from None
        if not isinstance(obj, dict) or "_id" not in obj or not isinstance(obj.get("text"), str):
            raise DatasetError(f'{path}:{n}: a query needs "_id" and a string "text"')
        qid = str(obj["_id"])
        if qid in queries:
            raise DatasetError(f"{path}:{n}: query id {qid!r} appears twice")
        if not obj["text"].strip():
            raise DatasetError(f"{path}:{n}: query {qid!r} has an empty text")
        queries[qid] = obj["text"]
    if not queries:
        raise DatasetError(f"queries file {path} holds no queries")
    return queries


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """BEIR ``qrels/*.tsv``: ``query-id<TAB>corpus-id<TAB>score`` with a header line.

    TREC qrels (``qid iter docid rel``, whitespace-separated) are read too.
    """
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    first = True
    for n, line in enumerate(_read_lines(path, "qrels"), 1):
        if not line.strip():
            continue
        is_first, first = first, False
        cols = line.split("\t") if "\t" in line else line.split()
        if len(cols) == 4:  # TREC: qid iteration docid relevance
            cols = [cols[0], cols[2], cols[3]]
        if len(cols) != 3:
            raise DatasetError(f"{path}:{n}: expected query-id, corpus-id and score, got {len(cols)} column(s)")
        qid, did, rel = (c.strip() for c in cols)
        try:
            grade = int(rel)
        except ValueError:
            if is_first:
                continue  # the header line (query-id, corpus-id, score)
            raise DatasetError(f"{path}:{n}: score {rel!r} is not an integer") from None
        qrels.setdefault(qid, {})[did] = grade
    if not qrels:
        raise DatasetError(f"qrels file {path} holds no judgements")
    return qrels


@dataclass(frozen=True)
class EvalData:
    """Queries and relevance judgements, checked against each other.

    ``queries`` holds only the queries that have judgements (the ones evaluated);
    ``unjudged`` counts the queries of the file that have none (skipped, as BEIR does).
    """

    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    unjudged: int = 0


def load_beir(queries_path: str | Path, qrels_path: str | Path) -> EvalData:
    """Load both files and check them against each other.

    Every query id in the qrels must be a query of the queries file (a mismatch is
    almost always the wrong split); queries without judgements are skipped.
    """
    queries = load_queries(queries_path)
    qrels = load_qrels(qrels_path)
    unknown = [qid for qid in qrels if qid not in queries]
    if unknown:
        shown = ", ".join(repr(q) for q in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise DatasetError(
            f"{qrels_path} judges {len(unknown)} query id(s) that {queries_path} does not have "
            f"({shown}): are they the same split?"
        )
    judged = {qid: text for qid, text in queries.items() if qid in qrels}
    return EvalData(queries=judged, qrels=qrels, unjudged=len(queries) - len(judged))


# -- a data set folder -----------------------------------------------------------------


@dataclass(frozen=True)
class BeirFiles:
    """The files of one split of a BEIR folder; ``qrels`` is None when the split has none."""

    corpus: Path
    queries: Path
    qrels: Path | None


def _find(directory: Path, names: Sequence[str], what: str) -> Path:
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise DatasetError(f"{directory} has no {what} ({' or '.join(names)})")


def beir_files(directory: str | Path, split: str = "dev") -> BeirFiles:
    """Where a BEIR folder keeps ``split``: queries-<split>.jsonl (or queries.jsonl), qrels/<split>.tsv
    (or qrels-<split>.tsv), corpus.jsonl (or corpus.jsonl.gz)."""
    directory = Path(directory)
    queries = _find(directory, [f"queries-{split}.jsonl", "queries.jsonl"], "queries file")
    nested, flat = directory / "qrels" / f"{split}.tsv", directory / f"qrels-{split}.tsv"
    qrels = nested if nested.is_file() else flat if flat.is_file() else None
    corpus = _find(directory, ["corpus.jsonl", "corpus.jsonl.gz"], "corpus file")
    return BeirFiles(corpus=corpus, queries=queries, qrels=qrels)


# -- saved first-stage runs ------------------------------------------------------------


def load_run(path: str | Path) -> dict[str, list[str]]:
    """A saved first stage, doc ids best first: JSON ``{"qid": {"docid": score, ...}}`` or
    ``{"qid": ["docid", ...]}`` (best first), or a TREC run (``qid Q0 docid rank score tag``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"cannot read run file {path}: {exc.strerror}") from None
    run: dict[str, dict[str, float]] = {}
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise DatasetError(f"run file {path} is not valid JSON: {exc}") from None
        for qid, docs in data.items():
            if isinstance(docs, list):
                run[str(qid)] = {str(d): -float(i) for i, d in enumerate(docs)}
            else:
                run[str(qid)] = {str(d): float(s) for d, s in docs.items()}
    else:
        for n, line in enumerate(text.splitlines(), 1):
            cols = line.split()
            if not cols:
                continue
            if len(cols) != 6:
                raise DatasetError(f"{path}:{n}: a TREC run line has 6 columns (qid Q0 docid rank score tag)")
            run.setdefault(cols[0], {})[cols[2]] = float(cols[4])
    return {qid: [d for d, _ in sorted(docs.items(), key=lambda kv: -kv[1])] for qid, docs in run.items()}


def save_run(candidates: Mapping[str, Sequence[str]], path: str | Path) -> Path:
    """Write candidates as a compact JSON run, ``{"qid": ["best doc id", ...]}``, that :func:`load_run` reads."""
    path = Path(path)
    text = json.dumps({qid: list(ids) for qid, ids in candidates.items()}, separators=(",", ":"))
    path.write_text(text, encoding="utf-8")
    return path
