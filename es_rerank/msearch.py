"""``_msearch``: NDJSON parsing and serialising, one search plan per item."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["parse_msearch", "serialize_msearch", "item_target"]


def parse_msearch(content: bytes) -> list[tuple[dict[str, Any], Any]] | None:
    """(header, body) pairs of an ``_msearch`` body, or None when it is not one we
    can read (OpenSearch then answers it, with its own error if it is malformed)."""
    lines = [line for line in content.split(b"\n") if line.strip()]
    if not lines or len(lines) % 2:
        return None
    pairs = []
    try:
        for header_line, body_line in zip(lines[::2], lines[1::2]):
            header, body = json.loads(header_line), json.loads(body_line)
            if not isinstance(header, dict) or not isinstance(body, dict):
                return None
            pairs.append((header, body))
    except ValueError:
        return None
    return pairs


def serialize_msearch(pairs: list[tuple[dict[str, Any], Any]]) -> bytes:
    out = []
    for header, body in pairs:
        out.append(json.dumps(header, separators=(",", ":")))
        out.append(json.dumps(body, separators=(",", ":")))
    return ("\n".join(out) + "\n").encode()


def item_target(header: dict[str, Any], default: str | None) -> str | None:
    """The index expression an item searches: its header's ``index`` or the path's."""
    index = header.get("index", default)
    if isinstance(index, list):
        index = ",".join(str(i) for i in index)
    return index if isinstance(index, str) and index else None
