"""A small Python runner for the upstream OpenSearch API test stories.

It follows the upstream framework (opensearch-api-specification ``tools/src/tester``)
where that matters for a verdict:

- a story's ``prologues`` run first (success statuses default to ``[200, 201]``);
  a failed prologue skips the chapters; ``epilogues`` always run;
- a chapter whose ``method`` is a list runs once per method;
- ``pending`` chapters, and chapters or stories whose ``version`` range or
  ``distributions`` exclude the node, are skipped;
- path parameters (``/{index}``) come from ``parameters``, the other parameters
  go in the query string (lists joined by commas);
- ``output`` saves values from a response (``payload.a.b[0].c``, ``path ? default``),
  referred to later as ``${chapter_id.name}`` in parameters and payloads;
- the request payload is JSON, or NDJSON when the content type is
  ``application/x-ndjson`` (one line per list item);
- a chapter passes when its status is the expected one (default 200) and the
  expected ``response.payload`` is a *subset* of the answer: objects are partial
  (keys the answer adds are ignored), arrays are compared element by element by
  index (extra elements in the answer are ignored, missing ones fail), and
  scalars must be equal and of the same JSON type (``json-diff-ts``: only
  UPDATE and REMOVE changes fail, ADD is ignored);
- a chapter whose status is wrong skips the chapters after it (as upstream does).

The runner does no schema validation: that is the spec's business, not the proxy's.
"""

from __future__ import annotations

import fnmatch
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

__all__ = [
    "ChapterResult",
    "StoryRun",
    "SUMMARY",
    "load_story",
    "is_protected",
    "payload_mismatches",
    "run_story",
    "satisfies",
    "story_indices",
    "story_skip_reason",
]

DISTRIBUTION = "opensearch.org"
# One entry per story a test ran (or skipped at run time), for the end-of-run summary.
SUMMARY: list[dict[str, Any]] = []
NDJSON = "application/x-ndjson"
JSON = "application/json"


# -- YAML as the upstream tool reads it (YAML 1.2 core schema) ----------------------


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML is YAML 1.1: ``yes``/``no``/``on`` are booleans, ``2011-01-01`` a date,
    ``1:20`` a base-60 int. The upstream tool (``yaml`` for Node) reads YAML 1.2's core
    schema, where those are strings. Resolve scalars the 1.2 way."""


_Yaml12Loader.yaml_implicit_resolvers = {}
for _tag, _pattern, _first in [
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        list("-+0123456789."),
    ),
]:
    _Yaml12Loader.add_implicit_resolver(_tag, re.compile(_pattern), list(_first))


def _construct_int(loader, node):
    text = loader.construct_scalar(node)
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text)


def _construct_bool(loader, node):
    return loader.construct_scalar(node).lower() == "true"


_Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Yaml12Loader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)


def load_story(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=_Yaml12Loader)  # noqa: S506 (a safe loader subclass)


# -- version ranges (node-semver, the subset the stories use) -----------------------

_COMPARATOR = re.compile(r"^(<=|>=|<|>|=)?v?(\d+|[xX*])(?:\.(\d+|[xX*]))?(?:\.(\d+|[xX*]))?$")


def _parse_version(version: str) -> tuple[int, int, int]:
    parts = [int(p) for p in re.findall(r"\d+", version.split("-")[0])[:3]]
    return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


def _comparators(token: str) -> list[tuple[str, tuple[int, int, int]]]:
    """One node-semver comparator (maybe partial: ``>2.13``, ``2``, ``2.x``) as exact ones."""
    m = _COMPARATOR.match(token)
    if not m:
        raise ValueError(f"unsupported version comparator {token!r}")
    op = m.group(1) or "="
    nums: list[int] = []
    for part in m.group(2, 3, 4):
        if part is None or part in "xX*":
            break
        nums.append(int(part))
    if not nums:  # '*', 'x': anything
        return [(">=", (0, 0, 0))]
    if len(nums) == 3:
        return [(op, tuple(nums))]  # type: ignore[list-item]

    def bump(n: list[int]) -> tuple[int, int, int]:
        n = n[:-1] + [n[-1] + 1]
        return tuple(n + [0] * (3 - len(n)))  # type: ignore[return-value]

    low = tuple(nums + [0] * (3 - len(nums)))
    high = bump(nums)  # first version past the partial one
    if op == "=":
        return [(">=", low), ("<", high)]  # type: ignore[list-item]
    if op == ">":
        return [(">=", high)]
    if op == ">=":
        return [(">=", low)]  # type: ignore[list-item]
    if op == "<":
        return [("<", low)]  # type: ignore[list-item]
    return [("<", high)]  # "<="


def satisfies(version: str, spec: str | int | float) -> bool:
    """``semver.satisfies(version, spec)`` for the ranges test stories use."""
    v = _parse_version(version)
    for alternative in str(spec).split("||"):
        text = re.sub(r"(<=|>=|<|>|=)\s+", r"\1", alternative.strip())
        ok = True
        for token in text.split():
            for op, bound in _comparators(token):
                ok &= {
                    "=": v == bound,
                    ">": v > bound,
                    ">=": v >= bound,
                    "<": v < bound,
                    "<=": v <= bound,
                }[op]
        if ok:
            return True
    return False


def _excluded(item: dict[str, Any], version: str, distribution: str) -> str | None:
    dists = item.get("distributions") or {}
    included = dists.get("included") or []
    if included and distribution not in included:
        return f"distribution {distribution} is not one of {included}"
    if distribution in (dists.get("excluded") or []):
        return f"distribution {distribution} is excluded"
    if item.get("version") is not None and not satisfies(version, item["version"]):
        return f"version {version} does not satisfy {item['version']!r}"
    return None


def story_skip_reason(story: dict[str, Any], version: str, distribution: str = DISTRIBUTION) -> str | None:
    return _excluded(story, version, distribution)


# -- outputs and references ------------------------------------------------------------

_REF = re.compile(r"\$\{([^}]+)\}")
_FULL_REF = re.compile(r"^\$\{([^}]+)\}$")


class Outputs:
    """Values saved by chapters with an ``id`` and an ``output``."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = {}

    def _lookup(self, ref: str) -> Any:
        chapter_id, _, name = ref.partition(".")
        return self.values.get(chapter_id, {}).get(name)

    def resolve_string(self, text: str) -> Any:
        full = _FULL_REF.match(text)
        if full:  # the whole string is a reference: keep the value's type
            return self._lookup(full.group(1))
        return _REF.sub(lambda m: _js_str(self._lookup(m.group(1))), text)

    def resolve(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.resolve_string(value)
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if isinstance(value, dict):
            return {self.resolve(k): self.resolve(v) for k, v in value.items()}
        return value


def _get_path(obj: Any, path: str) -> Any:
    """lodash ``_.get`` for ``a.b[0].c``; None when a step is missing."""
    for part in re.findall(r"[^.\[\]]+", path):
        if isinstance(obj, dict):
            obj = obj.get(part)
        elif isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        else:
            return None
        if obj is None:
            return None
    return obj


def _extract_outputs(payload: Any, spec: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    out: dict[str, Any] = {}
    for name, source in spec.items():
        default = None
        if isinstance(source, dict):
            source, default = source["path"], source.get("default")
        source = source.replace(" ", "")
        if "?" in source:
            source, raw_default = source.split("?", 1)
            try:
                default = float(raw_default)
                default = int(default) if default.is_integer() else default
            except ValueError:
                default = raw_default
        if not (source == "payload" or source.startswith("payload.") or source.startswith("payload[")):
            return out, f"unknown output source {source!r}"
        if payload is None:
            return out, f"no payload for output {source!r}"
        value = _get_path({"payload": payload}, source)
        if value is None:
            value = default
        if value is None:
            return out, f"no value at {source!r}"
        out[name] = value
    return out, None


# -- the subset comparison ----------------------------------------------------------


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _js_str(value: Any) -> str:
    """How JavaScript turns a value into a string (``${...}``, URL parameters)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ",".join(_js_str(v) for v in value)
    if value is None:
        return ""
    return str(value)


def payload_mismatches(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Why ``actual`` does not hold ``expected`` (empty list: it does), the upstream way.

    Objects: every expected key must be there and match (extra keys are fine).
    Arrays: element ``i`` of the answer must match expected element ``i`` (extra
    elements in the answer are fine, missing ones are not). Scalars: same JSON
    type and equal value. ``None`` for a whole expected payload means "no check".
    """
    where = path or "$"
    te, ta = _json_type(expected), _json_type(actual)
    if te != ta:
        return [f"{where}: expected {te} {_short(expected)}, got {ta} {_short(actual)}"]
    if te == "object":
        out = []
        for key, value in expected.items():
            sub = f"{path}.{key}" if path else str(key)
            if key not in actual:
                out.append(f"missing {sub}={_short(value)}")
            else:
                out += payload_mismatches(value, actual[key], sub)
        return out
    if te == "array":
        out = []
        for i, value in enumerate(expected):
            sub = f"{path}[{i}]"
            if i >= len(actual):
                out.append(f"missing {sub}={_short(value)}")
            else:
                out += payload_mismatches(value, actual[i], sub)
        return out
    if expected != actual:
        return [f"expected {where}={_short(expected)}, got {_short(actual)}"]
    return []


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- running a story ------------------------------------------------------------------


@dataclass
class ChapterResult:
    """One request of a story and what came back."""

    kind: str  # prologue, chapter, epilogue
    title: str
    method: str
    path: str  # the story's path template
    url: str = ""  # what was requested (path and query)
    request_body: bytes | None = None
    allowed: tuple[int, ...] = ()
    status: int | None = None
    content_type: str | None = None
    payload: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    expected_payload: Any = None
    skipped: str | None = None  # why it did not run
    error: str | None = None  # transport error
    problems: list[str] = field(default_factory=list)

    @property
    def ran(self) -> bool:
        return self.skipped is None

    @property
    def status_ok(self) -> bool:
        return self.status is not None and self.status in self.allowed

    @property
    def passed(self) -> bool:
        return self.skipped is not None or not self.problems

    def label(self) -> str:
        return f"{self.kind} {self.method} {self.url or self.path} ({self.title})"


@dataclass
class StoryRun:
    base_url: str
    results: list[ChapterResult] = field(default_factory=list)

    @property
    def failures(self) -> list[ChapterResult]:
        return [r for r in self.results if r.ran and r.problems]

    @property
    def chapters(self) -> list[ChapterResult]:
        return [r for r in self.results if r.kind == "chapter"]


def _expand_methods(chapters: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for chapter in chapters:
        methods = chapter["method"]
        if isinstance(methods, list):
            for method in methods:
                out.append({**chapter, "method": method, "synopsis": f"{chapter.get('synopsis', '')} [{method}]"})
        else:
            out.append(chapter)
    return out


def _build_request(
    chapter: dict[str, Any], outputs: Outputs
) -> tuple[str, list[tuple[str, str]], dict[str, str], bytes | None]:
    params = {
        k: (outputs.resolve_string(v) if isinstance(v, str) else v)
        for k, v in (chapter.get("parameters") or {}).items()
    }
    used: set[str] = set()

    def fill(m: re.Match) -> str:
        used.add(m.group(1))
        return _js_str(params.get(m.group(1)))

    path = re.sub(r"\{(\w+)\}", fill, chapter["path"])
    query = [(k, _js_str(v)) for k, v in params.items() if k not in used]

    request = chapter.get("request") or {}
    content_type = request.get("content_type") or JSON
    headers: dict[str, str] = {}
    for key, value in (request.get("headers") or {}).items():
        if key.lower() == "content-type":
            content_type = str(value)
        else:
            headers[key] = _js_str(value)
    headers["content-type"] = content_type
    body = None
    if "payload" in request and request["payload"] is not None:
        payload = outputs.resolve(request["payload"])
        if content_type == NDJSON and isinstance(payload, list):
            body = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in payload).encode()
        elif isinstance(payload, str):
            body = payload.encode()
        else:
            body = json.dumps(payload, ensure_ascii=False).encode()
    return path, query, headers, body


def _decode(response: httpx.Response) -> tuple[str | None, Any]:
    content_type = response.headers.get("content-type")
    media = content_type.split(";")[0].strip() if content_type else None
    data = response.content
    if media is None:
        return None, data.decode("utf-8", "replace") if data else None
    if media == JSON:
        return media, json.loads(data) if data else {}
    if media == "application/yaml":
        return media, yaml.safe_load(data) if data else {}
    if media in ("application/cbor", "application/smile"):
        return media, data
    return media, data.decode("utf-8", "replace")


def is_protected(name: str, protected: Iterable[str]) -> bool:
    """``protected`` holds fnmatch patterns of indices the runner must not touch."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in protected)


def _unsafe(method: str, path: str, protected: frozenset[str]) -> str | None:
    """The runner never deletes every index, an index it does not own, nor every
    scroll or point in time on the node (they may be someone else's)."""
    if method != "DELETE":
        return None
    segments = [s for s in path.split("?")[0].split("/") if s]
    if segments and not segments[0].startswith("_"):
        for name in segments[0].split(","):
            if name in ("*", "_all") or is_protected(name, protected) or name.startswith("-") or "*" in name:
                return f"refused by the runner's safety guard: DELETE {path}"
    elif segments == ["_all"] or (segments[:1] == ["_search"] and segments[-1] == "_all"):
        return f"refused by the runner's safety guard: DELETE {path}"
    return None


def run_story(
    client: httpx.Client,
    story: dict[str, Any],
    *,
    version: str,
    distribution: str = DISTRIBUTION,
    protected: frozenset[str] = frozenset(),
    stop_after_error: bool = True,
) -> StoryRun:
    """Run one story against ``client``'s base URL; every request's result is kept.

    ``stop_after_error`` False runs every chapter even after a failed prologue or a
    wrong status (the upstream tool skips them): to see all a second target gets wrong.
    """
    run = StoryRun(str(client.base_url))
    outputs = Outputs()
    has_errors = False

    def one(kind: str, chapter: dict[str, Any], allowed: tuple[int, ...], skip: str | None) -> ChapterResult:
        result = ChapterResult(
            kind=kind,
            title=chapter.get("synopsis") or f"{chapter['method']} {chapter['path']}",
            method=chapter["method"],
            path=chapter["path"],
            allowed=allowed,
        )
        if skip is None:
            skip = _excluded(chapter, version, distribution)
            skip = skip and f"skipped: {skip}"
        if skip is None and chapter.get("pending"):
            skip = f"pending: {str(chapter['pending']).strip()}"
        if skip is not None:
            result.skipped = skip
            return result
        path, query, headers, body = _build_request(chapter, outputs)
        guard = _unsafe(chapter["method"], path, protected)
        if guard:
            result.skipped = guard
            return result
        result.url = str(httpx.URL(path, params=query)) if query else path
        result.request_body = body
        retry = chapter.get("retry") or {}
        tries = int(retry.get("count", 0)) + 1
        for attempt in range(tries):
            result.problems = []
            try:
                response = client.request(chapter["method"], path, params=query or None, headers=headers, content=body)
            except httpx.HTTPError as exc:
                result.error = f"{type(exc).__name__}: {exc}"
                result.problems = [result.error]
            else:
                result.status = response.status_code
                result.headers = {k.lower(): v for k, v in response.headers.items()}
                try:
                    result.content_type, result.payload = _decode(response)
                except ValueError as exc:
                    result.problems.append(f"undecodable {response.headers.get('content-type')} body: {exc}")
                if not result.status_ok:
                    reason = _get_path(result.payload, "error.reason") if isinstance(result.payload, dict) else None
                    result.problems.append(
                        f"status {result.status} not in {list(allowed)}" + (f": {reason}" if reason else "")
                    )
                elif kind == "chapter":
                    expected = (chapter.get("response") or {}).get("payload")
                    if expected is not None:
                        result.expected_payload = outputs.resolve(expected)
                        result.problems += payload_mismatches(result.expected_payload, result.payload)
                if chapter.get("output") and result.status_ok:
                    values, error = _extract_outputs(result.payload, chapter["output"])
                    if error:
                        result.problems.append(error)
                    elif chapter.get("id"):
                        outputs.values[chapter["id"]] = values
            if not result.problems or attempt == tries - 1:
                break
            time.sleep(retry.get("wait", 1000) / 1000)
        return result

    for prologue in _expand_methods(story.get("prologues") or []):
        r = one("prologue", prologue, tuple(prologue.get("status") or (200, 201)), None)
        run.results.append(r)
        has_errors = has_errors or (r.ran and bool(r.problems))
    for chapter in _expand_methods(story.get("chapters") or []):
        expected = (chapter.get("response") or {}).get("status", 200)
        allowed = tuple(expected) if isinstance(expected, list) else (int(expected),)
        r = one(
            "chapter",
            chapter,
            allowed,
            "skipped: an earlier request failed" if has_errors and stop_after_error else None,
        )
        run.results.append(r)
        # A wrong status (upstream: ERROR) skips what follows; a payload mismatch does not.
        has_errors = has_errors or (r.ran and (not r.status_ok or r.error is not None))
    for epilogue in _expand_methods(story.get("epilogues") or []):
        run.results.append(one("epilogue", epilogue, tuple(epilogue.get("status") or (200, 201)), None))
    return run


# -- which indices a story touches (for cleaning up) -----------------------------------


def story_indices(story: dict[str, Any]) -> set[str]:
    """Concrete index names a story creates or uses: path segments, ``index``
    parameters, ``_index`` in bulk lines, ``index`` in msearch headers."""
    names: set[str] = set()

    def add(value: Any) -> None:
        for v in value if isinstance(value, list) else str(value).split(","):
            v = str(v).strip()
            if v and not v.startswith(("_", "{", "$", "-", ".")) and "*" not in v:
                names.add(v)

    def walk(payload: Any) -> None:
        if isinstance(payload, dict):
            for key, value in payload.items():
                if key in ("_index", "index") and isinstance(value, (str, list)):
                    add(value)
                elif (
                    key in ("source", "dest")
                    and isinstance(value, dict)
                    and isinstance(value.get("index"), (str, list))
                ):
                    add(value["index"])
                else:
                    walk(value)
        elif isinstance(payload, list):
            for item in payload:
                walk(item)

    for section in ("prologues", "chapters", "epilogues"):
        for chapter in story.get(section) or []:
            first = chapter["path"].strip("/").split("/")[0]
            if first:
                add(first)
            params = chapter.get("parameters") or {}
            for key in ("index", "target", "new_index", "source", "dest"):
                if key in params:
                    add(params[key])
            walk((chapter.get("request") or {}).get("payload"))
    return names
