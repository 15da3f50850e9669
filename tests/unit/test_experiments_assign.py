"""Hashed assignment and team-draft interleaving: pure functions, no I/O."""

from __future__ import annotations

import collections
import subprocess
import sys

import pytest

from es_rerank.errors import BadRequestError
from es_rerank.experiments import Experiments, ExperimentSettings, bucket, serve, team_draft
from es_rerank.experiments.assign import ubi_ext, without_ubi
from es_rerank.experiments.interleave import interleave_seed


def _exp(**kw) -> ExperimentSettings:
    data = {
        "name": "e1",
        "indices": ["docs*"],
        "salt": "s1",
        "keys": ["ubi.client_id", "header:x-user-id", "cookie:uid"],
        "arms": [{"name": "bm25", "kind": "bm25", "weight": 30}, {"name": "rr", "kind": "rerank", "weight": 70}],
    }
    data.update(kw)
    return ExperimentSettings.model_validate(data)


def test_split_over_10000_users_is_within_one_point():
    exps = Experiments([_exp()])
    counts = collections.Counter(exps.assign("docs", {"x-user-id": f"user-{i}"}, {}, None).label for i in range(10_000))
    assert abs(counts["bm25"] / 10_000 - 0.30) < 0.01
    assert abs(counts["rr"] / 10_000 - 0.70) < 0.01


def test_three_arms_split():
    arms = [
        {"name": n, "kind": k, "weight": w} for n, k, w in (("a", "bm25", 50), ("b", "rerank", 25), ("c", "rerank", 25))
    ]
    exps = Experiments([_exp(arms=arms)])
    counts = collections.Counter(exps.assign("docs", {}, {}, {"client_id": f"c{i}"}).label for i in range(10_000))
    for name, share in (("a", 0.5), ("b", 0.25), ("c", 0.25)):
        assert abs(counts[name] / 10_000 - share) < 0.01


_CHILD = (
    "import sys; from es_rerank.experiments import bucket; "
    "print(','.join(f'{bucket(\"s1\", f\"user-{i}\"):.17f}' for i in range(200)))"
)


def test_assignment_is_the_same_in_other_processes():
    """Two fresh interpreters (as two proxies, or one restarted) agree with this one:
    the hash is not Python's salted hash()."""
    here = ",".join(f"{bucket('s1', f'user-{i}'):.17f}" for i in range(200))
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", _CHILD],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        ).stdout.strip()
        assert out == here


def test_salt_reshuffles_and_key_order():
    assert bucket("s1", "u") != bucket("s2", "u")
    exps = Experiments([_exp()])
    a = exps.assign("docs", {"x-user-id": "header-user"}, {"uid": "cookie-user"}, {"client_id": "ubi-user"})
    assert (a.client_id, a.key_source) == ("ubi-user", "ubi.client_id")
    b = exps.assign("docs", {"x-user-id": "header-user"}, {"uid": "cookie-user"}, None)
    assert (b.client_id, b.key_source) == ("header-user", "header:x-user-id")
    c = exps.assign("docs", {}, {"uid": "cookie-user"}, {})
    assert (c.client_id, c.key_source) == ("cookie-user", "cookie:uid")


def test_no_key_exclude_or_by_query():
    assert Experiments([_exp()]).assign("docs", {}, {}, None) is None
    ids = iter(f"q{i}" for i in range(10_000))
    exps = Experiments([_exp(no_key="query")], new_id=lambda: next(ids))
    got = [exps.assign("docs", {}, {}, None) for _ in range(2000)]
    assert {a.client_id for a in got} == {None}
    assert 0.25 < sum(a.label == "bm25" for a in got) / 2000 < 0.35


def test_query_id_given_or_new_and_override_header():
    exps = Experiments([_exp()], new_id=lambda: "fresh")
    a = exps.assign("docs", {}, {}, {"client_id": "u", "query_id": "q-1"})
    assert (a.query_id, a.query_id_given) == ("q-1", True)
    b = exps.assign("docs", {}, {}, {"client_id": "u"})
    assert (b.query_id, b.query_id_given) == ("fresh", False)
    forced = exps.assign("docs", {"x-rerank-arm": "bm25"}, {}, {"client_id": "u"})
    assert forced.forced and forced.label == "bm25"
    with pytest.raises(BadRequestError, match="names no arm"):
        exps.assign("docs", {"x-rerank-arm": "nope"}, {}, {"client_id": "u"})


def test_index_matching():
    exps = Experiments([_exp()])
    assert exps.for_index("docs-1,docs-2") is not None
    assert exps.for_index("docs-1,other") is None
    assert exps.for_index("other") is None
    assert Experiments([_exp(enabled=False)]).for_index("docs") is None


def test_ubi_ext_checked_and_stripped():
    body = {"query": {"match_all": {}}, "ext": {"ubi": {"query_id": "q"}, "rerank": {"enabled": True}}}
    assert ubi_ext(body) == {"query_id": "q"}
    assert without_ubi(body) == {"query": {"match_all": {}}, "ext": {"rerank": {"enabled": True}}}
    assert body["ext"]["ubi"] == {"query_id": "q"}  # not mutated
    assert without_ubi({"ext": {"ubi": {}}}) == {}
    assert ubi_ext({"query": {}}) is None
    with pytest.raises(BadRequestError, match=r"ext.ubi.client_id"):
        ubi_ext({"ext": {"ubi": {"client_id": 5}}})
    with pytest.raises(BadRequestError, match=r"\[ext.ubi\] must be an object"):
        ubi_ext({"ext": {"ubi": []}})


# -- team-draft interleaving ---------------------------------------------------


def test_team_draft_is_a_fair_merge():
    a, b = list("abcdefghij"), list("jihgfedcba")
    mixed = team_draft(a, b, "seed")
    items = [k for k, _ in mixed]
    assert sorted(items) == sorted(a)  # every item once
    teams = [t for _, t in mixed]
    for n in range(1, len(mixed) + 1):  # picks stay balanced at every prefix
        assert abs(teams[:n].count(0) - teams[:n].count(1)) <= 1
    for item, team in mixed:  # each pick is its team's best item left
        ranking = a if team == 0 else b
        before = items[: items.index(item)]
        assert item == next(x for x in ranking if x not in before)


def test_team_draft_deterministic_and_both_teams_start():
    a, b = list(range(20)), list(reversed(range(20)))
    assert team_draft(a, b, "q1") == team_draft(a, b, "q1")
    first = collections.Counter(team_draft(a, b, f"q{i}")[0][1] for i in range(400))
    assert 150 < first[0] < 250


def test_team_draft_identical_lists_and_uneven():
    mixed = team_draft([1, 2, 3], [1, 2, 3], "x")
    assert [k for k, _ in mixed] == [1, 2, 3]
    mixed = team_draft([1, 2], [3, 1, 4, 5], "x")
    assert sorted(k for k, _ in mixed) == [1, 2, 3, 4, 5]


def test_serve_ab_and_interleave_pages_are_slices_of_one_list():
    exps = Experiments([_exp()])
    first, reranked = list("abcdefghij"), list("cbajihgfed")
    a = exps.assign("docs", {"x-rerank-arm": "bm25"}, {}, {"client_id": "u"})
    assert serve(a, first, reranked).order == first
    r = exps.assign("docs", {"x-rerank-arm": "rr"}, {}, {"client_id": "u"})
    assert serve(r, first, reranked).order == reranked and serve(r, first, reranked).teams is None
    il = Experiments(
        [_exp(mode="interleave", arms=[{"name": "bm25", "kind": "bm25"}, {"name": "rr", "kind": "rerank"}])]
    )
    i1 = il.assign("docs", {}, {}, {"client_id": "u"})
    i2 = il.assign("docs", {}, {}, {"client_id": "u"})  # a new query id, same user and text
    whole = serve(i1, first, reranked, query_text="t")
    assert set(whole.teams) == {"bm25", "rr"} and i1.label == "interleaved"
    pages = [serve(i2, first, reranked, query_text="t").page(f, 3) for f in (0, 3, 6, 9)]
    assert sum((p.order for p in pages), []) == whole.order
    assert sum((p.teams for p in pages), []) == whole.teams
    j = il.assign("docs", {}, {}, {"client_id": "u", "query_id": "given"})
    assert interleave_seed(j, "t") != interleave_seed(i1, "t")
    assert serve(j, first, reranked, query_text="other").order == serve(j, first, reranked, query_text="t").order
