"""Conformance: the upstream OpenSearch API test stories, direct and through es-rerank.

Every story under ``../shared/opensearch-api/tests/default/_core/`` is one test (id:
its path relative to ``tests/default``). A story runs twice, sequentially: once
DIRECT against OpenSearch, once THROUGH the proxy, configured to rerank every
index (pattern ``*``) with the tiny model. For each request of the story:

- the proxy's status equals the direct status and is one the story allows;
- the story's expected ``response.payload`` holds for the proxy's answer (the
  upstream framework's subset semantics, see :mod:`storyrunner`);
- the proxy's content type is the direct one;
- for searches on the story's own indices, the proxy's answer is OpenSearch's:
  equal (but for ``took`` and ids OpenSearch generates) when the proxy did not
  rerank; when it did, the same keys, totals, aggregations and hit count, and the
  same hits (order aside) when the page held every hit.

Our own stories in ``tests/e2e/stories/`` (same format, ids ``local/...``) cover
what the upstream ones barely do: searches the proxy actually reranks. One of them
shows a known drop-in bug and is marked ``xfail(strict=True)`` (``KNOWN_BUGS``).

A story that needs what this node lacks (the integ-test distribution: no plugins,
no analysis-common, painless, mustache, reindex, geo or search-pipeline-common
modules) is listed in ``NOT_ON_THIS_NODE`` with why; a story whose version range
or distributions exclude the node is skipped as the upstream tool skips it; a
story that fails DIRECT anyway is skipped at run time, with the reason (the
summary at the end of the run lists every story and what became of it).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from storyrunner import (
    SUMMARY,
    ChapterResult,
    StoryRun,
    is_protected,
    load_story,
    run_story,
    story_indices,
    story_skip_reason,
)

from es_rerank import create_app, settings_from_dict

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT.parent / "shared" / "opensearch-api" / "tests" / "default"
CORE = SUITE / "_core"
LOCAL = Path(__file__).resolve().parent / "stories"  # our own stories, same format, ids "local/..."
# Indices of the shared dev node and of other suites, and system indices: never touched.
PROTECTED = frozenset({"scifact", "rr-*", ".*", "bench*", "eval*", "demo*"})
FIELDS = ["title", "director", "text", "name"]
WINDOW = 10
MIN_RUNNING = 25

_NO_PAINLESS = "needs the lang-painless module (scripts), absent from the integ-test distribution"
_NO_MUSTACHE = "needs the lang-mustache module (search templates), absent from the integ-test distribution"
_NO_REINDEX = (
    "needs the reindex module (_reindex, _update_by_query, _delete_by_query), absent from the integ-test distribution"
)
_NO_ANALYSIS = (
    "needs the analysis-common module (keyword/whitespace tokenizers), absent from the integ-test distribution"
)
_NO_GEO = "needs the geo module (geo_shape, xy_point, xy_shape), absent from the integ-test distribution"
_NO_PIPELINE = "needs the search-pipeline-common module (its processors), absent from the integ-test distribution"
_NO_KNN = "needs the k-NN plugin (index.knn, knn_vector)"

# Stories under _core that cannot pass DIRECT on this node, or must not run on a
# shared node; each was run direct on OpenSearch 2.19.6 (integ-test) to check why.
NOT_ON_THIS_NODE: dict[str, str] = {
    "_core/analyze/filter/asciifolding.yaml": _NO_ANALYSIS,
    "_core/analyze/filter/lowercase.yaml": _NO_ANALYSIS,
    "_core/analyze/filter/persian_stem.yaml": _NO_ANALYSIS,
    "_core/analyze/filter/porterstem.yaml": _NO_ANALYSIS,
    "_core/analyze/filter/stop.yaml": _NO_ANALYSIS,
    "_core/analyze/filter/uppercase.yaml": _NO_ANALYSIS,
    "_core/msearch/template.yaml": _NO_MUSTACHE,
    "_core/render/template.yaml": _NO_MUSTACHE,
    "_core/rank_eval.yaml": "needs the rank-eval module (GET /_rank_eval answers 400), absent from the integ-test distribution",
    "_core/reindex.yaml": _NO_REINDEX,
    "_core/reindex/pipeline.yaml": _NO_REINDEX + "; also the ingest-common split processor",
    "_core/reindex/rethrottle.yaml": _NO_REINDEX,
    "_core/tasks.yaml": _NO_REINDEX,
    "_core/tasks/cancel.yaml": _NO_REINDEX,
    "_core/update_by_query/rethrottle.yaml": _NO_REINDEX,
    "_core/scripts.yaml": _NO_PAINLESS,
    "_core/scripts/context.yaml": _NO_PAINLESS,
    "_core/scripts/painless/execute.yaml": _NO_PAINLESS,
    "_core/search/aggregations/max_value_type.yaml": _NO_PAINLESS,
    "_core/search/aggregations/min_value_type.yaml": _NO_PAINLESS,
    "_core/search/aggregations/min_script.yaml": _NO_PAINLESS,
    "_core/search/aggregations/terms_script.yaml": _NO_PAINLESS,
    "_core/search/query/script.yaml": _NO_PAINLESS,
    "_core/search/aggregations/terms_aggregate_unsigned_long.yaml": (
        "fails direct on 2.19.6: expects sum_other_doc_count 0 (node: 1) and key_as_string "
        "'9223372036854776000' (node: '9223372036854775808', the upstream tool's JS rounding)"
    ),
    "_core/search/query/geo_shape_shape.yaml": _NO_GEO,
    "_core/search/query/xy_shape_point.yaml": _NO_GEO,
    "_core/search/query/xy_shape_shape.yaml": _NO_GEO,
    "_core/search/pipeline/request_processor/filter_query.yaml": _NO_PIPELINE,
    "_core/search/pipeline/response_processor/rename_field.yaml": _NO_PIPELINE,
    "_core/search/pipeline/response_processor/sort.yaml": _NO_PIPELINE,
    "_core/search/pipeline/response_processor/split_and_sort.yaml": _NO_PIPELINE,
    "_core/search/hybrid_query_pagination.yaml": "needs the neural-search plugin (hybrid query)",
    "_core/search/knn/on_disk.yaml": _NO_KNN,
    "_core/search/knn/search/search_filter.yaml": _NO_KNN,
    "_core/search/knn/search/search_k.yaml": _NO_KNN,
    "_core/search/knn/search/search_max_distance.yaml": _NO_KNN,
    "_core/search/knn/search/search_min_score.yaml": _NO_KNN,
    "_core/search/knn/search/search_pipeline.yaml": _NO_KNN
    + " and the ml-commons plugin (it also retries for minutes)",
    "_core/search/point_in_time/all.yaml": "a chapter deletes every point in time on the node (DELETE /_search/point_in_time/_all): not on a shared node",
    "_core/upgrade.yaml": "POST /_upgrade acts on every index of the node (the shared dev node's included): not on a shared node",
}


# Our own stories that show a drop-in bug; strict: they fail the run once it is fixed.
KNOWN_BUGS: dict[str, str] = {}


def _story_path(rel: str) -> Path:
    return LOCAL / rel.removeprefix("local/") if rel.startswith("local/") else SUITE / rel


def _story_params() -> list:
    params = []
    if not CORE.is_dir():
        params.append(
            pytest.param(None, marks=pytest.mark.skip(reason=f"no upstream stories at {CORE}"), id="no-stories")
        )
    paths = sorted(CORE.rglob("*.yaml")) if CORE.is_dir() else []
    for path in paths:
        rel = path.relative_to(SUITE).as_posix()
        reason = NOT_ON_THIS_NODE.get(rel)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(rel, marks=marks, id=rel))
    for path in sorted(LOCAL.glob("*.yaml")):
        rel = f"local/{path.name}"
        bug = KNOWN_BUGS.get(rel)
        marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
        params.append(pytest.param(rel, marks=marks, id=rel))
    return params


STORY_PARAMS = _story_params()


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node(opensearch_url):
    """The node's version, and a client for housekeeping; leftovers deleted at the end."""
    with httpx.Client(base_url=opensearch_url, timeout=60) as client:
        info = client.get("/").json()
        version = info["version"]["number"]
        created: set[str] = set()
        yield version, client, created
        _delete_indices(client, created)


@pytest.fixture(scope="module")
def proxy_url(opensearch_url, tiny_model_dir, serve_app):
    settings = settings_from_dict(
        {
            "upstream": {"url": opensearch_url, "timeout": 30},
            "models": {"tiny": {"path": str(tiny_model_dir), "max_length": 128, "intra_op_threads": 1}},
            "indices": [{"pattern": "*", "model": "tiny", "fields": FIELDS, "window": WINDOW}],
        },
        env={},
    )
    with serve_app(create_app(settings)) as served:
        yield served.url


def _delete_indices(client: httpx.Client, names: set[str]) -> None:
    for name in sorted(names):
        if is_protected(name, PROTECTED) or name in ("*", "_all") or not name:
            continue
        if client.head(f"/{name}").status_code == 200:
            client.delete(f"/{name}")


# -- the drop-in comparison -------------------------------------------------------------


def _auto_ids(run: StoryRun, story_text: str) -> set[str]:
    """``_id`` values OpenSearch generated (they differ between the two runs)."""
    ids: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("_id"), str) and value["_id"] not in story_text:
                ids.add(value["_id"])
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for r in run.results:
        walk(r.payload)
    return ids


def _normalize(value: Any, auto: set[str]) -> Any:
    if isinstance(value, dict):
        return {
            k: ("<auto>" if k == "_id" and isinstance(v, str) and v in auto else _normalize(v, auto))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_normalize(v, auto) for v in value]
    return value


# Differ between any two runs: timings and the ids of server-side contexts.
_VOLATILE = ("took", "phase_took", "profile", "_scroll_id", "pit_id")


def _strip(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k not in _VOLATILE}


def _key(hit: dict) -> str:
    return json.dumps({k: v for k, v in hit.items() if k not in ("_score", "_rerank", "sort")}, sort_keys=True)


def _search_diffs(direct: Any, proxied: Any, where: str) -> list[str]:
    """How a proxied search answer differs from OpenSearch's, beyond what reranking may change."""
    if not (isinstance(direct, dict) and isinstance(proxied, dict)):
        return [] if direct == proxied else [f"{where}: {_short(proxied)} != direct {_short(direct)}"]
    if "responses" in direct and isinstance(direct["responses"], list):  # _msearch
        out = []
        a, b = direct["responses"], proxied.get("responses")
        if not isinstance(b, list) or len(a) != len(b):
            return [f"{where}.responses: {len(b) if isinstance(b, list) else b!r} items, direct {len(a)}"]
        for i, (x, y) in enumerate(zip(a, b)):
            out += _search_diffs(x, y, f"{where}.responses[{i}]")
        if set(_strip(direct)) != set(_strip(proxied)):
            out.append(f"{where}: keys {sorted(proxied)} != direct {sorted(direct)}")
        return out
    reranked = any("_rerank" in h for h in (proxied.get("hits") or {}).get("hits") or [] if isinstance(h, dict))
    if not reranked:
        a, b = _strip(direct), _strip(proxied)
        if a == b:
            return []
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        return [
            f"{where}: not reranked but differs from direct in {keys}: proxy {_short({k: b.get(k) for k in keys})} direct {_short({k: a.get(k) for k in keys})}"
        ]

    out = []
    if set(direct) != set(proxied):
        out.append(f"{where}: keys {sorted(proxied)} != direct {sorted(direct)}")
    for key in set(direct) - {"hits", *_VOLATILE}:
        if direct.get(key) != proxied.get(key):
            out.append(f"{where}.{key}: {_short(proxied.get(key))} != direct {_short(direct.get(key))}")
    dh, ph = direct.get("hits") or {}, proxied.get("hits") or {}
    if set(dh) != set(ph):
        out.append(f"{where}.hits: keys {sorted(ph)} != direct {sorted(dh)}")
    if dh.get("total") != ph.get("total"):
        out.append(f"{where}.hits.total: {ph.get('total')!r} != direct {dh.get('total')!r}")
    dl, pl = dh.get("hits") or [], ph.get("hits") or []
    if len(dl) != len(pl):
        out.append(f"{where}.hits.hits: {len(pl)} hits, direct {len(dl)}")
    total = dh.get("total")
    total = total.get("value") if isinstance(total, dict) else total
    # the page holds every hit: same hits
    if isinstance(total, int) and len(dl) == total and Counter(map(_key, dl)) != Counter(map(_key, pl)):
        out.append(f"{where}.hits.hits: {_short([_key(h) for h in pl])} != direct {_short([_key(h) for h in dl])}")
    for i, (x, y) in enumerate(zip(dl, pl)):
        if set(x) | {"_rerank"} != set(y) | {"_rerank"}:
            out.append(f"{where}.hits.hits[{i}]: keys {sorted(y)} != direct {sorted(x)}")
    return out


def _short(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _targets(result: ChapterResult) -> list[str]:
    """Index expressions a search request addresses (path, or _msearch headers)."""
    first = result.url.lstrip("/").split("?")[0].split("/")[0]
    default = first if first and not first.startswith("_") else ""
    if result.path.rstrip("/").endswith("_msearch") and result.request_body:
        targets = []
        lines = [json.loads(x) for x in result.request_body.decode().splitlines() if x.strip()]
        for header in lines[::2]:
            index = header.get("index", default) if isinstance(header, dict) else default
            targets.append(",".join(index) if isinstance(index, list) else str(index))
        return targets
    return [default]


def _is_search(result: ChapterResult) -> bool:
    return result.path.rstrip("/").endswith(("/_search", "/_msearch")) and result.method in ("GET", "POST")


def compare_runs(direct: StoryRun, proxied: StoryRun, own: set[str], story_text: str) -> list[str]:
    problems = []
    auto = _auto_ids(direct, story_text) | _auto_ids(proxied, story_text)
    for d, p in zip(direct.results, proxied.results):
        label = p.label()
        if d.ran != p.ran:
            problems.append(f"{label}: ran direct={d.ran} ({d.skipped}), proxy={p.ran} ({p.skipped})")
            continue
        if not p.ran:
            continue
        if p.error:
            problems.append(f"{label}: {p.error}")
            continue
        if p.status != d.status:
            reason = p.payload.get("error") if isinstance(p.payload, dict) else p.payload
            problems.append(f"{label}: proxy status {p.status} != direct {d.status} (proxy said {_short(reason)})")
        problems += [f"{label}: {m}" for m in p.problems]
        if p.content_type != d.content_type:
            problems.append(f"{label}: proxy content-type {p.content_type!r} != direct {d.content_type!r}")
        if p.kind == "chapter" and _is_search(p) and p.status == d.status == 200:
            targets = _targets(p)
            if targets and all(t and all(n in own for n in t.split(",")) for t in targets):
                diffs = _search_diffs(_normalize(d.payload, auto), _normalize(p.payload, auto), "payload")
                problems += [f"{label}: drop-in: {m}" for m in diffs]
    if len(direct.results) != len(proxied.results):
        problems.append(f"{len(proxied.results)} requests through the proxy, {len(direct.results)} direct")
    return problems


# -- the tests --------------------------------------------------------------------------


def test_enough_stories_run():
    running = [p for p in STORY_PARAMS if not p.marks and p.values[0] and not p.values[0].startswith("local/")]
    assert len(running) >= MIN_RUNNING, f"only {len(running)} upstream stories would run"
    for rel in NOT_ON_THIS_NODE:
        assert (SUITE / rel).is_file(), f"{rel} is listed but no longer upstream"


@pytest.mark.parametrize("rel", STORY_PARAMS)
def test_story(rel, node, proxy_url):
    version, client, created = node
    path = _story_path(rel)
    story = load_story(path)
    story_text = path.read_text(encoding="utf-8")
    entry = {"story": rel, "outcome": "", "reason": "", "chapters": 0, "reranked": 0, "known_bug": rel in KNOWN_BUGS}
    SUMMARY.append(entry)

    reason = story_skip_reason(story, version)
    if reason:
        entry.update(outcome="skipped", reason=reason)
        pytest.skip(reason)
    own = story_indices(story)
    touched = sorted(n for n in own if is_protected(n, PROTECTED))
    if touched:
        entry.update(outcome="skipped", reason=f"touches protected indices {touched}")
        pytest.skip(entry["reason"])
    created |= own

    started = time.perf_counter()
    _delete_indices(client, own)  # a story expects a clean slate
    direct = run_story(client, story, version=version, protected=PROTECTED)
    _delete_indices(client, own)
    if direct.failures:
        first = direct.failures[0]
        entry.update(outcome="skipped", reason=f"fails direct: {first.label()}: {'; '.join(first.problems)[:300]}")
        pytest.skip(entry["reason"])
    with httpx.Client(base_url=proxy_url, timeout=60) as via:
        # Direct passed every chapter: run them all through the proxy, even after a failure.
        proxied = run_story(via, story, version=version, protected=PROTECTED, stop_after_error=False)
    _delete_indices(client, own)

    chapters = [r for r in proxied.chapters if r.ran]
    entry["chapters"] = len(chapters)
    entry["reranked"] = sum(1 for r in chapters if r.headers.get("x-rerank") == "reranked")
    entry["notes"] = [f"{r.label()}: {r.skipped}" for r in proxied.results if r.skipped]
    problems = compare_runs(direct, proxied, own, story_text)
    entry["seconds"] = round(time.perf_counter() - started, 2)
    entry.update(outcome="failed" if problems else "passed", reason="; ".join(problems)[:2000])
    assert not problems, f"{rel}: es-rerank is not a drop-in here:\n  " + "\n  ".join(problems)
