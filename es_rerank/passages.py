"""Hit -> the text the model reads."""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

__all__ = ["field_values", "hit_text"]

_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


def _from_source(source: Any, path: str) -> list[Any]:
    """Values at a dotted path of ``_source`` (objects and arrays of objects)."""
    nodes = [source]
    for part in path.split("."):
        nxt: list[Any] = []
        for node in nodes:
            if isinstance(node, list):
                node_items = node
            else:
                node_items = [node]
            for item in node_items:
                if isinstance(item, Mapping) and part in item:
                    nxt.append(item[part])
        nodes = nxt
    flat: list[Any] = []
    for node in nodes:
        flat.extend(node if isinstance(node, list) else [node])
    return flat


def field_values(hit: Mapping[str, Any], field: str) -> list[str]:
    """A field's text values: from ``fields`` (what the proxy asks for), else ``_source``."""
    values = (hit.get("fields") or {}).get(field)
    if values is None:
        values = _from_source(hit.get("_source") or {}, field)
    elif not isinstance(values, list):
        values = [values]
    return [str(v) for v in values if v is not None and not isinstance(v, (dict, list))]


def hit_text(hit: Mapping[str, Any], fields: Sequence[str], template: str | None = None) -> str:
    """The passage for one hit: the template filled in, or the fields joined by a space."""
    if template is None:
        return " ".join(v for f in fields for v in field_values(hit, f) if v)
    return _PLACEHOLDER.sub(lambda m: " ".join(field_values(hit, m.group(1).strip())), template)
