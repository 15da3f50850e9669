"""The A/B and interleaving report on recorded-shaped data (no OpenSearch)."""

from __future__ import annotations

import numpy as np
import pytest

from es_rerank.tools.ab.report import ReportError, build_report, first_below, format_report, impressions_from


def _query(qid, user, arm, ids, *, ts, teams=None, from_=0, forced=False):
    attrs = {"experiment": "e", "arm": arm, "mode": "interleave" if teams else "ab", "from": from_, "forced": forced}
    if teams:
        attrs["teams"] = teams
    return {
        "query_id": qid,
        "client_id": user,
        "timestamp": ts,
        "query_response_object_ids": ids,
        "query_attributes": attrs,
    }


def _click(qid, oid):
    return {"action_name": "click", "query_id": qid, "event_attributes": {"object": {"object_id": oid}}}


def test_impressions_join_pages_clicks_and_leave_out_forced():
    queries = [
        _query("q1", "u1", "rr", ["a", "b"], ts="2026-12-03T08:00:00Z"),
        _query("q1", "u1", "rr", ["c", "d"], ts="2026-12-03T08:00:01Z", from_=2),
        _query("q2", "u2", "bm25", ["a"], ts=1764748800000, forced=True),
    ]
    events = [
        _click("q1", "d"),
        _click("q1", "d"),
        _click("q1", "zz"),
        _click("nope", "a"),
        {"action_name": "hover", "query_id": "q1"},
    ]
    imps, skipped = impressions_from(queries, events)
    assert len(imps) == 1 and imps[0].clicks == [3] and imps[0].values(3)["ctr_at_k"] == 0.0
    assert imps[0].values(5) == {"ctr_at_k": 1.0, "clicks": 1.0, "rr": 0.25, "abandoned": 0.0}
    assert skipped == {"forced": 1, "clicks_unmatched": 1}


def _ab_data(n_users, lift, seed=0):
    rng = np.random.default_rng(seed)
    queries, events = [], []
    for i in range(n_users * 4):
        user = f"u{i % n_users}"
        arm = "bm25" if (i % n_users) % 2 else "rr"
        qid = f"q{i}"
        queries.append(_query(qid, user, arm, list("abcdefghij"), ts=i * 1000))
        p_top = 0.3 + (lift if arm == "rr" else 0.0)
        if rng.random() < p_top:
            events.append(_click(qid, "a"))
        elif rng.random() < 0.3:
            events.append(_click(qid, "f"))
    return impressions_from(queries, events)


def test_ab_report_finds_a_real_difference_and_not_a_null_one():
    imps, skipped = _ab_data(400, 0.2)
    report = build_report(imps, skipped, experiment="e", k=3)
    comp = report["comparisons"]["rr - bm25"]
    assert comp["rr"]["difference"] > 0 and comp["rr"]["p_value"] < 1e-6
    assert comp["rr"]["ci95"][0] > 0 and comp["ctr_at_k"]["ci95"][0] > 0
    assert report["arms"]["rr"]["users"] == 200 and report["impressions_to_p05"] is not None
    assert "| rr - bm25 |" in format_report(report)
    null, skipped = _ab_data(400, 0.0, seed=3)
    assert build_report(null, skipped, experiment="e")["comparisons"]["rr - bm25"]["rr"]["p_value"] > 0.01


def test_interleave_report_counts_wins_per_query_and_user():
    queries, events = [], []
    for i in range(300):
        qid = f"q{i}"
        queries.append(_query(qid, f"u{i % 50}", "interleaved", ["a", "b", "c"], ts=i, teams=["rr", "bm25", "rr"]))
        if i % 3 != 2:
            events.append(_click(qid, "a"))  # rerank's hit: a win
        elif i % 2:
            events.append(_click(qid, "b"))  # bm25's: a loss
    imps, skipped = impressions_from(queries, events)
    report = build_report(imps, skipped, experiment="e")
    q = report["per_query"]
    assert (q["wins"], q["losses"], q["ties"]) == (200, 50, 0) and q["p_value"] < 1e-10
    assert report["teams"] == {"a": "bm25", "b": "rr"} and report["preference"]["value"] == pytest.approx(150 / 250)
    assert report["per_user"]["wins"] == 50
    assert report["impressions_to_p01"] is not None and "per query" in format_report(report)


def test_no_data_and_first_below():
    with pytest.raises(ReportError, match="no searches recorded"):
        build_report([], {}, experiment="e")
    pts = [{"n": 10, "p": 0.01}, {"n": 20, "p": 0.2}, {"n": 30, "p": 0.04}, {"n": 40, "p": 0.001}]
    assert first_below(pts, 0.05) == 30 and first_below(pts, 0.01) == 40
    assert first_below(pts, 0.05, stay=False) == 10
