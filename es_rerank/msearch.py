"""``_msearch``: the NDJSON body read as OpenSearch reads it, one item per header/body pair.

Each line is kept as the client wrote it; only the body of an item the proxy
reranks is rewritten. A header line OpenSearch accepts but that is not an object
(``null``, ``[]``, ``"x"``) stays as it is and searches the path's index; a body
line the proxy cannot read (duplicate keys, too deep) goes to OpenSearch as it is,
so OpenSearch answers that item with its own error and the others are served.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .bodies import UnreadableBody, dumps, loads_request

__all__ = ["MsearchItem", "parse_msearch", "serialize_msearch", "item_target"]


@dataclass(frozen=True, slots=True)
class MsearchItem:
    header_line: bytes
    body_line: bytes
    header: dict[str, Any]
    body: dict[str, Any] | None  # None: not read; forwarded as written


def _read(line: bytes) -> Any:
    try:
        return loads_request(line)
    except UnreadableBody:
        return UnreadableBody


def parse_msearch(content: bytes) -> list[MsearchItem] | None:
    """The items of an ``_msearch`` body, or None when OpenSearch should judge the
    whole body itself (no final newline, an odd number of lines, a header line
    that is not JSON)."""
    if not content.endswith(b"\n"):
        return None  # OpenSearch: "The msearch request must be terminated by a newline"
    lines = [line for line in content.split(b"\n") if line.strip()]
    if not lines or len(lines) % 2:
        return None
    items = []
    for header_line, body_line in zip(lines[::2], lines[1::2]):
        header = _read(header_line)
        if header is UnreadableBody:
            return None
        body = _read(body_line)
        items.append(
            MsearchItem(
                header_line=header_line,
                body_line=body_line,
                header=header if isinstance(header, dict) else {},
                body=body if isinstance(body, dict) else None,
            )
        )
    return items


def serialize_msearch(lines: list[tuple[bytes, Any]]) -> bytes:
    """NDJSON from (header line as written, body): a body given as bytes goes as it is."""
    out = []
    for header_line, body in lines:
        out.append(header_line)
        out.append(body if isinstance(body, bytes) else dumps(body))
    return b"\n".join(out) + b"\n"


def item_target(header: dict[str, Any], default: str | None) -> str | None:
    """The index expression an item searches: its header's ``index`` or the path's."""
    index = header.get("index", default)
    if isinstance(index, list):
        index = ",".join(str(i) for i in index)
    return index if isinstance(index, str) and index else None
