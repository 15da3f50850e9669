"""Request and response bodies read and written as OpenSearch reads and writes them.

OpenSearch (Jackson) refuses duplicate keys, reads compressed request bodies and
several JSON media types, and keeps numbers as written. The proxy must agree on
every body it parses, or a request it rewrites would be answered differently from
the same request sent direct: a body OpenSearch would refuse is not parsed here
(:class:`UnreadableBody`), and the caller passes it through for OpenSearch to answer.

simplejson rather than the standard library: with ``use_decimal`` a number is
written back exactly as it was read (``-1e400`` stays a number, never ``-Infinity``;
``1.10`` stays ``1.10``), which ``json`` cannot do.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import numpy as np
import simplejson

__all__ = [
    "UnreadableBody",
    "TooDeep",
    "MAX_DEPTH",
    "json_depth",
    "check_depth",
    "is_json_media_type",
    "decode_content",
    "loads_request",
    "loads_response",
    "dumps",
    "dumps_pretty",
]

# Media types OpenSearch reads as JSON (XContentType.fromMediaType). A vendor type's
# parameters (compatible-with=7) are left for OpenSearch to judge: the proxy forwards
# the client's own Content-Type with the rewritten body.
_JSON_MEDIA_TYPES = frozenset(
    {
        "application/json",
        "application/x-ndjson",
        "application/vnd.opensearch+json",
        "application/vnd.elasticsearch+json",
        "application/vnd.elasticsearch+x-ndjson",
    }
)


# A body nested deeper than this is refused, not forwarded: OpenSearch 2.19 reads
# 1,200 levels of an aggregation's `meta` but dies of a StackOverflowError (the whole
# node exits) on 5,000.
MAX_DEPTH = 2000

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


class UnreadableBody(ValueError):
    """A body the proxy does not parse: OpenSearch answers it as it would direct."""


class TooDeep(UnreadableBody):
    """A body nested past :data:`MAX_DEPTH`: refused by the proxy to keep OpenSearch alive."""


def json_depth(content: bytes) -> int:
    """How deeply a JSON text nests its objects and arrays (strings ignored), without recursion."""
    data = np.frombuffer(_STRING.sub(b'""', content), dtype=np.uint8)
    steps = np.isin(data, (0x7B, 0x5B)).astype(np.int64) - np.isin(data, (0x7D, 0x5D)).astype(np.int64)
    return int(np.cumsum(steps).max(initial=0))


def check_depth(content: bytes) -> None:
    """Refuse (:class:`TooDeep`) a body nested past :data:`MAX_DEPTH`, whatever the route:
    only a body with that many brackets can be, so most bodies cost one count."""
    if content.count(b"{") + content.count(b"[") > MAX_DEPTH:
        depth = json_depth(content)
        if depth > MAX_DEPTH:
            raise TooDeep(f"the body nests {depth} levels deep, more than the {MAX_DEPTH} allowed")


def is_json_media_type(content_type: str | None) -> bool:
    """True for the media types OpenSearch reads as JSON; a missing type is not one
    (OpenSearch answers a body without Content-Type with 406)."""
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() in _JSON_MEDIA_TYPES


def decode_content(body: bytes, encodings: Iterable[str], *, limit: int) -> bytes:
    """The body with its Content-Encoding undone (gzip, deflate), at most ``limit`` bytes
    once decompressed (so a small compressed body cannot inflate without bound)."""
    for encoding in reversed([e.strip().lower() for value in encodings for e in value.split(",") if e.strip()]):
        if encoding == "identity":
            continue
        if encoding not in ("gzip", "x-gzip", "deflate"):
            raise UnreadableBody(f"content encoding [{encoding}]")
        decoder = zlib.decompressobj(wbits=47)  # 47: a gzip or a zlib header, detected
        try:
            body = decoder.decompress(body, limit + 1)
        except zlib.error as exc:
            raise UnreadableBody(f"bad {encoding} body: {exc}") from None
        if len(body) > limit:
            raise UnreadableBody(f"body larger than {limit} bytes once decompressed")
    return body


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise UnreadableBody(f"Duplicate field '{key}'")
        out[key] = value
    return out


def loads_request(content: bytes | str) -> Any:
    """A client's JSON body, read as strictly as OpenSearch reads it: duplicate keys,
    ``NaN``/``Infinity`` and nesting past the parser's depth are refused."""
    try:
        return simplejson.loads(content, use_decimal=True, object_pairs_hook=_unique_keys, allow_nan=False)
    except RecursionError:
        # Deeper than Python's parser goes; OpenSearch reads some of these, not all.
        depth = json_depth(content if isinstance(content, bytes) else content.encode())
        if depth > MAX_DEPTH:
            raise TooDeep(f"the body nests {depth} levels deep, more than the {MAX_DEPTH} allowed") from None
        raise UnreadableBody("nested too deeply to read here") from None
    except UnreadableBody:
        raise
    except (ValueError, TypeError) as exc:  # JSONDecodeError, bad UTF-8
        raise UnreadableBody(str(exc)) from None


def loads_response(content: bytes) -> Any:
    """OpenSearch's JSON answer, numbers kept as written (``_source`` is the client's own bytes)."""
    return simplejson.loads(content, use_decimal=True)


def dumps(value: Any) -> bytes:
    """Compact JSON, as OpenSearch writes it; numbers as they were read."""
    return simplejson.dumps(value, use_decimal=True, separators=(",", ":"), ensure_ascii=False).encode()


def _java_double(value: float) -> str:
    """A double as Java's ``Double.toString`` writes it (what OpenSearch's pretty output shows)."""
    if value == 0:
        return "-0.0" if str(value).startswith("-") else "0.0"
    if 1e-3 <= abs(value) < 1e7:
        text = repr(value)
        return text if "." in text else text + ".0"
    # Scientific: the shortest round-trip digits as d.dddEn.
    _, digits, exponent = Decimal(repr(abs(value))).normalize().as_tuple()
    text = "".join(map(str, digits))
    return f"{'-' if value < 0 else ''}{text[0]}.{text[1:] or '0'}E{len(text) + int(exponent) - 1}"


def _pretty_scalar(value: Any) -> str:
    if isinstance(value, Decimal):
        if value == value.to_integral_value() and "E" not in str(value) and "." not in str(value):
            return str(value)
        return _java_double(float(value))
    if isinstance(value, float):
        return _java_double(value)
    return simplejson.dumps(value, ensure_ascii=False)


def _pretty(value: Any, indent: str, out: list[str]) -> None:
    if isinstance(value, dict):
        if not value:
            out.append("{ }")
            return
        inner = indent + "  "
        out.append("{\n")
        for i, (key, item) in enumerate(value.items()):
            out.append(f"{inner}{simplejson.dumps(key, ensure_ascii=False)} : ")
            _pretty(item, inner, out)
            out.append(",\n" if i < len(value) - 1 else "\n")
        out.append(indent + "}")
    elif isinstance(value, (list, tuple)):
        if not value:
            out.append("[ ]")
            return
        inner = indent + "  "
        out.append("[\n")
        for i, item in enumerate(value):
            out.append(inner)
            _pretty(item, inner, out)
            out.append(",\n" if i < len(value) - 1 else "\n")
        out.append(indent + "]")
    else:
        out.append(_pretty_scalar(value))


def dumps_pretty(value: Any) -> bytes:
    """JSON laid out as OpenSearch's ``?pretty`` lays it out: two-space indent,
    ``"key" : value``, ``[ ]`` and ``{ }`` when empty, a final newline, doubles as Java writes them."""
    out: list[str] = []
    _pretty(value, "", out)
    out.append("\n")
    return "".join(out).encode()
