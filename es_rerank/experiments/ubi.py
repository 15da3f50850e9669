"""UBI's two indices: their mappings and the documents es-rerank writes to them.

Field names are those of OpenSearch's User Behavior Insights plugin (spec 1.x), so
UBI's own dashboards and tools read what es-rerank records. Unlike the plugin,
which records the engine's order, ``query_response_object_ids`` holds the ids in
the order the client was served, after the rerank or the interleaving.
``mappings/ubi_queries.json`` and ``mappings/ubi_events.json`` are these mappings
(a test keeps them equal).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from .assign import Assignment

__all__ = ["QUERIES_MAPPING", "EVENTS_MAPPING", "index_body", "query_document", "hit_object_id", "now_iso"]

_KEYWORD_100 = {"type": "keyword", "ignore_above": 100}
_KEYWORD_256 = {"type": "keyword", "ignore_above": 256}

# UBI's queries-mapping.json, plus query_response_object_ids as a keyword (the field
# the plugin writes; its newer mapping also names query_response_hit_ids, written too).
QUERIES_MAPPING: dict[str, Any] = {
    "dynamic": False,
    "properties": {
        "timestamp": {"type": "date", "format": "strict_date_optional_time||epoch_millis"},
        "query_id": _KEYWORD_100,
        "query": {"type": "text"},
        "query_response_id": _KEYWORD_100,
        "query_response_object_ids": {"type": "keyword"},
        "query_response_hit_ids": {"type": "keyword"},
        "user_query": {"type": "text", "fields": {"keyword": _KEYWORD_256}},
        "query_attributes": {"type": "flat_object"},
        "client_id": _KEYWORD_100,
        "application": _KEYWORD_256,
        "indexes": {"type": "keyword"},
    },
}

# UBI's events-mapping.json, with query_id and session_id (the plugin's sample data has them).
EVENTS_MAPPING: dict[str, Any] = {
    "dynamic": False,
    "properties": {
        "application": _KEYWORD_256,
        "action_name": _KEYWORD_100,
        "query_id": _KEYWORD_100,
        "session_id": _KEYWORD_100,
        "client_id": _KEYWORD_100,
        "user_id": _KEYWORD_100,
        "message": {"type": "keyword", "ignore_above": 1024},
        "message_type": _KEYWORD_100,
        # UBI's mapping says rfc3339_lenient, which OpenSearch 2.19 does not parse for ISO
        # strings (every one ends up in _ignored): the queries index's format instead.
        "timestamp": {"type": "date", "format": "strict_date_optional_time||epoch_millis", "ignore_malformed": True},
        "event_attributes": {
            "dynamic": True,
            "properties": {
                "position": {
                    "properties": {
                        "ordinal": {"type": "integer"},
                        "x": {"type": "integer"},
                        "y": {"type": "integer"},
                        "page_depth": {"type": "integer"},
                        "scroll_depth": {"type": "integer"},
                        "trail": {"type": "text", "fields": {"keyword": _KEYWORD_256}},
                    }
                },
                "object": {
                    "properties": {
                        "internal_id": {"type": "keyword"},
                        "object_id": _KEYWORD_256,
                        "object_id_field": _KEYWORD_100,
                        "name": _KEYWORD_256,
                        "description": {"type": "text", "fields": {"keyword": _KEYWORD_256}},
                        "object_detail": {"type": "object"},
                    }
                },
            },
        },
    },
}


def index_body(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """The create-index body: one shard, replicas as the cluster allows (0-1 auto-expand)."""
    return {
        "settings": {"index": {"number_of_shards": 1, "auto_expand_replicas": "0-1"}},
        "mappings": dict(mapping),
    }


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def hit_object_id(hit: Mapping[str, Any], object_id_field: str | None = None) -> str:
    """A hit's object id: ``object_id_field`` of its ``_source`` when the client named
    one (as UBI does) and it is there, else ``_id``."""
    if object_id_field:
        source = hit.get("_source")
        if isinstance(source, Mapping) and source.get(object_id_field) is not None:
            return str(source[object_id_field])
    return str(hit.get("_id", ""))


def query_document(
    assignment: Assignment,
    *,
    index: str,
    object_ids: Sequence[str],
    teams: Sequence[str] | None,
    from_: int,
    size: int,
    model: str | None,
    window: int,
    outcome: str,
    user_query: str | None,
    query: Any,
    query_response_id: str,
    application: str | None = None,
) -> dict[str, Any]:
    """One ``ubi_queries`` document for one served page (``query`` is serialized when written)."""
    ubi = assignment.ubi
    attributes: dict[str, Any] = dict(ubi.get("query_attributes") or {})
    attributes.update(
        {
            "experiment": assignment.experiment.name,
            "arm": assignment.label,
            "mode": assignment.mode,
            "model": model or "",
            "window": window,
            "from": from_,
            "size": size,
            "outcome": outcome,
            "forced": assignment.forced,
            "key_source": assignment.key_source or "",
        }
    )
    if teams is not None:
        attributes["teams"] = list(teams)
    ids = list(object_ids)
    doc = {
        "timestamp": now_iso(),
        "query_id": assignment.query_id,
        "query_response_id": query_response_id,
        "query_response_object_ids": ids,
        "query_response_hit_ids": ids,
        "user_query": ubi.get("user_query") or user_query or "",
        "client_id": assignment.client_id,
        "query": query,
        "query_attributes": attributes,
        "indexes": [p for p in index.split(",") if p],
    }
    if application or ubi.get("application"):
        doc["application"] = ubi.get("application") or application
    return doc
