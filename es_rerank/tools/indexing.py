"""Load a BEIR corpus into OpenSearch, for the demo, the tests and ``es-rerank index``.

A BEIR corpus is ``corpus.jsonl`` (or ``corpus.jsonl.gz``): one JSON object a line
with ``_id``, ``title`` and ``text``. :func:`~es_rerank.tools.datasets.iter_corpus` reads it, :func:`load_mapping`
reads an index body such as ``mappings/scifact.json``, and :func:`index_corpus`
creates the index and bulk-loads the documents with ``opensearchpy.helpers.streaming_bulk``.

Every problem with the files or the load is raised as a
:class:`~es_rerank.errors.ToolError` (a DatasetError for the corpus) whose message names the file (and line) or
the index, so the CLI can print it as it is.
"""

from __future__ import annotations

import copy
import gzip
import json
import logging
from pathlib import Path
from typing import Any

import opensearchpy
from opensearchpy.exceptions import ConnectionError as OpenSearchConnectionError
from opensearchpy.exceptions import RequestError, TransportError
from opensearchpy.helpers import streaming_bulk
from tqdm import tqdm

from ..config import UpstreamSettings
from ..errors import ToolError, UpstreamUnavailableError
from .datasets import check_file, is_gzip, iter_corpus

__all__ = ["DEFAULT_MAPPING", "load_mapping", "index_corpus", "index_into_upstream"]

logger = logging.getLogger(__name__)

#: The index body used when :func:`index_corpus` gets no ``mapping``; the same as
#: ``mappings/scifact.json``: one shard, no replica, ``title`` and ``text`` as
#: ``text`` with the standard analyzer (the core distribution has no
#: ``analysis-common``, so no ``english`` analyzer), nothing else indexed.
DEFAULT_MAPPING: dict[str, Any] = {
    "settings": {"index": {"number_of_shards": 1, "number_of_replicas": 0}},
    "mappings": {
        "dynamic": False,
        "_source": {"enabled": True},
        "properties": {
            "title": {"type": "text", "analyzer": "standard"},
            "text": {"type": "text", "analyzer": "standard"},
        },
    },
}

# A .gz corpus is decompressed once more just to count its lines for the progress
# bar; above this compressed size the bar runs without a total.
_COUNT_GZIP_UP_TO_BYTES = 64 * 1024 * 1024
_MAX_REPORTED_ERRORS = 5


def load_mapping(path: Path) -> dict[str, Any]:
    """Read an index body (``settings`` and/or ``mappings``) from a JSON file."""
    path = Path(path)
    check_file(path, "mapping")
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ToolError(f"mapping {path}:{e.lineno}: not valid JSON ({e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ToolError(f"mapping {path}: cannot be read: {e}") from e
    if not isinstance(body, dict):
        raise ToolError(f"mapping {path}: expected a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - {"settings", "mappings", "aliases"})
    if unknown:
        raise ToolError(
            f"mapping {path}: unexpected top-level keys {unknown};"
            " an index body has 'settings', 'mappings' and 'aliases'"
        )
    return body


def _count_lines(path: Path) -> int | None:
    """Line count for the progress bar, or None where counting is not cheap."""
    try:
        if is_gzip(path):
            if path.stat().st_size > _COUNT_GZIP_UP_TO_BYTES:
                return None
            opener: Any = gzip.open
        else:
            opener = open
        n = 0
        with opener(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                n += block.count(b"\n")
        return n
    except (OSError, EOFError):
        return None  # iter_corpus will report it properly


def _reason(item: dict[str, Any]) -> str:
    """One failed bulk item -> ``id: type: reason``."""
    result: dict[str, Any] = next(iter(item.values()), {}) if item else {}
    error = result.get("error", result)
    if isinstance(error, dict):
        what = f"{error.get('type', 'error')}: {error.get('reason', error)}"
    else:
        what = str(error)
    return f"{result.get('_id', '?')}: {what}"


def _create_index(client: opensearchpy.OpenSearch, index: str, body: dict[str, Any], recreate: bool) -> None:
    try:
        if recreate:
            client.indices.delete(index=index, ignore_unavailable=True)
            logger.info("deleted index %s", index)
        elif client.indices.exists(index=index):
            logger.info("index %s exists: indexing into it with its own mapping", index)
            return
        client.indices.create(index=index, body=copy.deepcopy(body))
        logger.info("created index %s", index)
    except RequestError as e:
        if e.error == "resource_already_exists_exception" and not recreate:
            return  # created by someone else in between: index into it
        raise ToolError(f"cannot create index {index!r}: {e.error}: {_info_reason(e)}") from e
    except OpenSearchConnectionError as e:
        raise UpstreamUnavailableError(f"OpenSearch cannot be reached: {e}") from e
    except TransportError as e:
        raise ToolError(f"cannot create index {index!r}: {e.error}: {_info_reason(e)}") from e


def _info_reason(e: Any) -> str:
    info = getattr(e, "info", None)
    if isinstance(info, dict):
        error = info.get("error")
        if isinstance(error, dict):
            return str(error.get("reason", error))
    return str(info)


def index_corpus(
    client: opensearchpy.OpenSearch,
    index: str,
    corpus: Path,
    *,
    mapping: dict[str, Any] | None = None,
    recreate: bool = False,
    chunk_size: int = 500,
    progress: bool = True,
) -> int:
    """Bulk-load a BEIR corpus into ``index`` and return how many documents were indexed.

    The index is created with ``mapping`` (default :data:`DEFAULT_MAPPING`) when it
    does not exist; an existing index keeps its own mapping, unless ``recreate``
    deletes it first. Documents are indexed by ``_id`` (a document already there is
    replaced) with ``title`` and ``text`` as ``_source``, ``chunk_size`` a request, with
    a tqdm bar on stderr when ``progress``. Then the index is refreshed, so the
    documents are searchable on return.

    Raises :class:`ToolError` if any document is rejected (after the whole corpus
    was sent and the index refreshed; the message gives the count and the first few
    reasons) and on a bad corpus line (documents before it may have been indexed),
    :class:`~es_rerank.errors.UpstreamUnavailableError` if OpenSearch cannot be reached.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    corpus = Path(corpus)
    check_file(corpus, "corpus")
    _create_index(client, index, DEFAULT_MAPPING if mapping is None else mapping, recreate)

    actions = (
        {"_index": index, "_id": d["_id"], "_source": {"title": d["title"], "text": d["text"]}}
        for d in iter_corpus(corpus)
    )
    indexed = failed = 0
    errors: list[str] = []
    total = _count_lines(corpus) if progress else None
    try:
        with tqdm(total=total, unit="doc", desc=f"indexing {index}", disable=not progress) as bar:
            for ok, item in streaming_bulk(
                client,
                actions,
                chunk_size=chunk_size,
                raise_on_error=False,
                raise_on_exception=True,
                max_retries=2,  # on 429 (queue full) only
            ):
                if ok:
                    indexed += 1
                else:
                    failed += 1
                    if len(errors) < _MAX_REPORTED_ERRORS:
                        errors.append(_reason(item))
                bar.update(1)
        client.indices.refresh(index=index)
    except OpenSearchConnectionError as e:
        raise UpstreamUnavailableError(f"OpenSearch cannot be reached: {e}") from e
    except TransportError as e:
        raise ToolError(
            f"indexing {corpus} into {index!r} failed after {indexed} documents: {e.error}: {_info_reason(e)}"
        ) from e

    if failed:
        raise ToolError(
            f"{failed} of {indexed + failed} documents of {corpus} were rejected by index"
            f" {index!r}; first errors:\n" + "\n".join(f"  - {r}" for r in errors)
        )
    logger.info("indexed %d documents from %s into %s", indexed, corpus, index)
    return indexed


def index_into_upstream(
    upstream: UpstreamSettings, index: str, corpus: Path, *, mapping: Path | None = None, recreate: bool = False
) -> int:
    """``es-rerank index``: bulk-load ``corpus`` into ``index`` on a config's upstream (its URL and credentials)."""
    auth = (upstream.username, upstream.password) if upstream.username else None
    client = opensearchpy.OpenSearch(
        upstream.url, http_auth=auth, timeout=upstream.timeout, verify_certs=upstream.verify_certs
    )
    return index_corpus(client, index, corpus, mapping=load_mapping(mapping) if mapping else None, recreate=recreate)
