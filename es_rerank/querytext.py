"""Find the text a search is about, the ``query`` side of every (query, passage) pair.

Where the text comes from, first found wins:

1. ``ext.rerank.query_context``, the shape OpenSearch's own ``rerank`` processor
   takes: ``query_text`` (the text itself) or ``query_text_path`` (a dotted path
   into the request body, e.g. ``"query.match.title.query"``, that must resolve to
   a string). A malformed ``query_context`` is the client's mistake and raises
   :class:`~es_rerank.errors.BadRequestError`, as OpenSearch's processor does.
2. The configured ``query_text_path`` (same dotted form). A request it does not
   resolve in is not an error: the lookup goes on.
3. The URI search parameter ``q``. OpenSearch replaces the body's query by ``q``
   when both are given, so ``q`` is what the hits were found with.
4. The query DSL in ``body["query"]``: the text of the full-text queries, walked
   through the compound queries that carry scoring intent (see :func:`dsl_text`).

Nothing textual (``match_all``, ``term``, ``range``, ``ids``, ``exists``...) gives
``None``, and the caller passes the search through unranked.

Every function here is pure: the caller's data is never modified.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from es_rerank.errors import BadRequestError

__all__ = [
    "query_text",
    "dsl_text",
    "resolve_path",
    "clean_query_syntax",
    "rerank_ext",
    "strip_rerank_ext",
]

# Queries whose body is ``{field: "text" | {"query": "text", ...}}``.
_FIELD_TEXT_QUERIES = (
    "match",
    "match_phrase",
    "match_phrase_prefix",
    "match_bool_prefix",
    "common",
)
# Queries whose body is ``{"query": "text", "fields": [...], ...}``.
_PLAIN_TEXT_QUERIES = ("multi_match", "combined_fields")
# Queries whose ``query`` is written in a query syntax, cleaned before use.
_SYNTAX_TEXT_QUERIES = ("query_string", "simple_query_string")
# Compound queries: where the scored sub-queries sit. Filters (``bool.filter``,
# ``constant_score``), exclusions (``bool.must_not``, ``boosting.negative``) and
# queries about other documents (``has_child``, ``has_parent``) are left out:
# they do not say what the user wants ranked first.
_SUB_QUERIES: dict[str, tuple[str, ...]] = {
    "bool": ("must", "should"),
    "dis_max": ("queries",),
    "function_score": ("query",),
    "script_score": ("query",),
    "boosting": ("positive",),
    "nested": ("query",),
    "hybrid": ("queries",),
}
# Past this depth a query is not walked further (a guard, not a real limit).
_MAX_DEPTH = 64


def query_text(
    body: Mapping[str, Any] | None,
    params: Mapping[str, str] | None = None,
    *,
    query_text_path: str | None = None,
) -> str | None:
    """The text to rerank a search against, or ``None`` when it has none.

    ``body`` is the parsed search body, ``params`` the URI query parameters and
    ``query_text_path`` the configured dotted path; see the module docstring for
    the order they are looked at in.

    Raises:
        BadRequestError: ``ext``, ``ext.rerank`` or ``ext.rerank.query_context``
            is malformed, or its ``query_text_path`` does not point to a string.
    """
    if not isinstance(body, Mapping):
        body = {}
    found = _ext_query_text(body)
    if found is not None:
        return found
    if query_text_path:
        found = _as_text(resolve_path(body, query_text_path))
        if found is not None:
            return found
    q = (params or {}).get("q")
    if isinstance(q, str):
        found = clean_query_syntax(q)
        if found is not None:
            return found
    return dsl_text(body.get("query"))


def dsl_text(query: Any) -> str | None:
    """The text of the full-text queries in ``query`` (one query container).

    Read: ``match``, ``match_phrase``, ``match_phrase_prefix``,
    ``match_bool_prefix`` (both ``{field: text}`` and ``{field: {"query": text}}``),
    ``multi_match``, ``combined_fields``, ``query_string`` and
    ``simple_query_string`` (cleaned by :func:`clean_query_syntax`), ``intervals``
    (the ``query`` of its ``match`` rules), ``neural`` (its ``query_text``).
    Walked into: ``bool.must`` then ``bool.should``, ``dis_max.queries``,
    ``function_score.query``, ``script_score.query``, ``boosting.positive``,
    ``nested.query``, ``hybrid.queries``. Values that are not strings (a ``match``
    on a numeric field) are skipped. Several texts are joined with a space, each
    distinct text once, in order of appearance.
    """
    texts: list[str] = []
    for text in _walk(query, 0):
        text = " ".join(text.split())
        if text and text not in texts:
            texts.append(text)
    return " ".join(texts) if texts else None


def _walk(query: Any, depth: int) -> Iterator[str]:
    if not isinstance(query, Mapping) or depth > _MAX_DEPTH:
        return
    for kind, spec in query.items():
        if not isinstance(spec, Mapping):
            continue
        if kind in _FIELD_TEXT_QUERIES:
            for value in spec.values():
                if isinstance(value, Mapping):
                    value = value.get("query")
                if isinstance(value, str):
                    yield value
        elif kind in _PLAIN_TEXT_QUERIES:
            value = spec.get("query")
            if isinstance(value, str):
                yield value
        elif kind in _SYNTAX_TEXT_QUERIES:
            value = spec.get("query")
            if isinstance(value, str):
                cleaned = clean_query_syntax(value)
                if cleaned is not None:
                    yield cleaned
        elif kind == "intervals":
            for rule in spec.values():
                yield from _interval_texts(rule, depth + 1)
        elif kind == "neural":
            for value in spec.values():
                if isinstance(value, Mapping) and isinstance(value.get("query_text"), str):
                    yield value["query_text"]
        elif kind in _SUB_QUERIES:
            for key in _SUB_QUERIES[kind]:
                for sub in _as_list(spec.get(key)):
                    yield from _walk(sub, depth + 1)


def _interval_texts(rule: Any, depth: int) -> Iterator[str]:
    """The ``query`` of the ``match`` rules in an intervals rule, through all_of/any_of."""
    if not isinstance(rule, Mapping) or depth > _MAX_DEPTH:
        return
    match = rule.get("match")
    if isinstance(match, Mapping) and isinstance(match.get("query"), str):
        yield match["query"]
    for combinator in ("all_of", "any_of"):
        inner = rule.get(combinator)
        if isinstance(inner, Mapping):
            for sub in _as_list(inner.get("intervals")):
                yield from _interval_texts(sub, depth + 1)


def _as_list(value: Any) -> Sequence[Any]:
    """A clause written as one query or as a list of queries, as a list."""
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return value
    return (value,)


def _as_text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


# --- ext.rerank ------------------------------------------------------------


def rerank_ext(body: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``ext.rerank`` object of a search body, ``{}`` when there is none.

    The object returned is the body's own (not a copy): read it, do not change it.

    Raises:
        BadRequestError: ``ext`` or ``ext.rerank`` is present but not an object.
    """
    if not body or "ext" not in body:
        return {}
    ext = body["ext"]
    if not isinstance(ext, Mapping):
        raise BadRequestError(f"[ext] must be an object, got {_json_type(ext)}")
    if "rerank" not in ext:
        return {}
    rerank = ext["rerank"]
    if not isinstance(rerank, Mapping):
        raise BadRequestError(f"[ext.rerank] must be an object, got {_json_type(rerank)}")
    return rerank if isinstance(rerank, dict) else dict(rerank)


def strip_rerank_ext(body: dict[str, Any]) -> dict[str, Any]:
    """A new body without ``ext.rerank``, and without ``ext`` when that leaves it empty.

    The input is never modified; the parts of it that are kept are shared, not copied.
    A body without ``ext.rerank`` (or whose ``ext`` is not an object) comes back as a
    shallow copy, unchanged.
    """
    out = dict(body)
    ext = out.get("ext")
    if isinstance(ext, Mapping) and "rerank" in ext:
        rest = {k: v for k, v in ext.items() if k != "rerank"}
        if rest:
            out["ext"] = rest
        else:
            del out["ext"]
    return out


def _ext_query_text(body: Mapping[str, Any]) -> str | None:
    """``ext.rerank.query_context``'s text, validated as OpenSearch's processor does."""
    rerank = rerank_ext(body)
    if "query_context" not in rerank:
        return None
    context = rerank["query_context"]
    if not isinstance(context, Mapping):
        raise BadRequestError(f"[ext.rerank.query_context] must be an object, got {_json_type(context)}")
    has_text, has_path = "query_text" in context, "query_text_path" in context
    if has_text and has_path:
        raise BadRequestError("[ext.rerank.query_context] cannot specify both [query_text] and [query_text_path]")
    if has_text:
        text = _as_text(context["query_text"])
        if text is None:
            raise BadRequestError("[ext.rerank.query_context.query_text] must be a non-empty string")
        return text
    if has_path:
        path = context["query_text_path"]
        if not isinstance(path, str) or not path.strip():
            raise BadRequestError("[ext.rerank.query_context.query_text_path] must be a non-empty string")
        text = _as_text(resolve_path(body, path))
        if text is None:
            raise BadRequestError(
                f"[ext.rerank.query_context.query_text_path] [{path}] "
                "must point to a non-empty string in the request body"
            )
        return text
    raise BadRequestError("[ext.rerank.query_context] must specify either [query_text] or [query_text_path]")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


# --- dotted paths ----------------------------------------------------------


def resolve_path(body: Any, path: str) -> Any:
    """The value at a dotted ``path`` in ``body``, ``None`` when there is none.

    ``"query.bool.must.0.match.title.query"``: keys name object members, integers
    index arrays. Beyond OpenSearch's own ``ObjectPath`` (which sees the request as
    OpenSearch re-renders it), three forms a client writes resolve too:

    - a key that holds dots (``"title.english"``, a multi-field) is matched whole;
    - index ``0`` on a single clause written as an object (``"must": {...}``), which
      OpenSearch renders as a one-element array;
    - a trailing ``.query`` on a shorthand ``{"match": {"title": "text"}}``, which
      OpenSearch renders as ``{"title": {"query": "text"}}``.
    """
    parts = path.strip().split(".")
    if not all(parts):
        return None
    return _resolve(body, parts)


def _resolve(node: Any, parts: list[str]) -> Any:
    if not parts:
        return node
    if isinstance(node, Mapping):
        # Longest key first, so "title.english" wins over "title" then "english".
        for end in range(len(parts), 0, -1):
            key = ".".join(parts[:end])
            if key in node:
                found = _resolve(node[key], parts[end:])
                if found is not None:
                    return found
        if parts[0] == "0":
            return _resolve(node, parts[1:])
        return None
    if isinstance(node, list | tuple):
        if parts[0].isdigit() and int(parts[0]) < len(node):
            return _resolve(node[int(parts[0])], parts[1:])
        return None
    if isinstance(node, str) and parts == ["query"]:
        return node
    return None


# --- query syntax clean-up -------------------------------------------------

_FIELD = r"[A-Za-z_@][\w.\-*@]*"
# A term (or phrase, or group) negated by -, ! or NOT: dropped whole, since what
# the user does not want is no part of what to rank for.
_NEGATED = re.compile(
    rf"""(?<![^\s(])                     # at a term's start
        (?:[-!](?=\S)|NOT\s+)            # -term, !term, NOT term
        (?:{_FIELD}:)?                   # optional field prefix
        (?:"[^"]*"?|\([^()]*\)?|[^\s()]+)  # phrase, group or term
    """,
    re.VERBOSE,
)
# Ranges and comparisons ([a TO b], {a TO b}, field:>=10) and _exists_:field: not text.
_RANGE = re.compile(rf"(?<![^\s(+])(?:{_FIELD}:)?[\[{{][^\]}}]*[\]}}]")
_COMPARE = re.compile(rf"(?<![^\s(+]){_FIELD}:[<>]=?[^\s()]*")
_EXISTS = re.compile(r"(?<![^\s(+])_exists_:[^\s()]*")
# A regular expression term /.../: not text.
_REGEX = re.compile(rf"(?<![^\s(+])(?:{_FIELD}:)?/[^/\s]+/(?!\S)")
# field: prefixes (not URL schemes such as http://).
_FIELD_PREFIX = re.compile(rf"(?<![^\s(+]){_FIELD}:(?!//)")
_BOOLEAN_WORDS = re.compile(r"(?<!\S)(?:AND|OR|NOT)(?!\S)|&&|\|\|")
_BOOST_FUZZY = re.compile(r"[~^]\d*(?:\.\d+)?")
_WILDCARD = re.compile(r"[*?]")
_GROUPING = re.compile(r"[\"()]")
# Operator characters in operator position: + at a term's start, lone + - | !.
_LEADING_PLUS = re.compile(r"(?<![^\s(])\+")
_LONE_OPERATOR = re.compile(r"(?<!\S)[+\-|!&]+(?!\S)")
_ESCAPED = re.compile(r"\\(.)", re.DOTALL)
# Escaped characters are swapped for code points of a private-use plane while the
# operators are stripped, then swapped back: an escaped operator is text.
_PLACEHOLDER_BASE = 0xF0000


def clean_query_syntax(text: str) -> str | None:
    """The words of a ``query_string``/``simple_query_string``/``q`` query, for a model.

    A reasonable clean-up, not a parser. Dropped:

    - negated terms, phrases and groups (``-x``, ``!x``, ``NOT x``), since what the
      user does not want is no part of what to rank for;
    - ranges and comparisons (``[a TO b]``, ``{a TO b}``, ``year:>=2020``),
      ``_exists_:field`` and regular expressions (``/ab.*c/``);
    - field prefixes (``title:``, ``title.english:``; not ``http://``);
    - boolean operators (``AND``, ``OR``, ``NOT`` in capitals, ``&&``, ``||``, and
      ``+``, ``|``, ``-`` in operator position: ``C++`` and ``covid-19`` stay);
    - quotes, parentheses, wildcards ``*`` and ``?``, fuzziness and proximity
      ``~N``, boosts ``^N``.

    A backslash-escaped character is kept as text, without its backslash. Whitespace
    is collapsed. ``None`` when no text is left.
    """
    escaped: list[str] = []

    def protect(match: re.Match[str]) -> str:
        escaped.append(match.group(1))
        return chr(_PLACEHOLDER_BASE + len(escaped) - 1)

    s = _ESCAPED.sub(protect, text)
    s = _NEGATED.sub(" ", s)
    for pattern in (_RANGE, _COMPARE, _EXISTS, _REGEX):
        s = pattern.sub(" ", s)
    s = _FIELD_PREFIX.sub("", s)
    s = _BOOLEAN_WORDS.sub(" ", s)
    s = _BOOST_FUZZY.sub("", s)
    s = _WILDCARD.sub("", s)
    s = _GROUPING.sub(" ", s)
    s = _LEADING_PLUS.sub("", s)
    s = _LONE_OPERATOR.sub(" ", s)
    if escaped:
        s = "".join(
            escaped[ord(c) - _PLACEHOLDER_BASE] if 0 <= ord(c) - _PLACEHOLDER_BASE < len(escaped) else c for c in s
        )
    s = " ".join(s.split())
    return s or None
