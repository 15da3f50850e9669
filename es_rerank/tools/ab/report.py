"""``es-rerank ab report``: what an experiment's users did, per arm, with statistics.

Reads ``ubi_queries`` (what was served: object ids in order, arm, teams) and
``ubi_events`` (clicks, joined on ``query_id`` and ``object_id``) from OpenSearch.
An *impression* is one query id (its pages together); searches forced by the QA
override header are left out.

- A/B: per arm, searches, users, CTR@k (a click in the top k), clicks per search,
  reciprocal rank of the first click, abandonment (no click). Each user's searches
  are averaged first (users are the independent unit), and each arm is compared
  with the baseline (the bm25 arm): difference of means, a 95% bootstrap interval
  over users (``scipy.stats.bootstrap``) and Welch's t-test p-value.
- Interleaving: each impression's clicks credited to the team whose hit was clicked;
  wins, losses and ties per query and per user, the sign test
  (``scipy.stats.binomtest``) and the preference ``(wins - losses) / (wins + losses + ties)``
  with a 95% bootstrap interval over users.

The plot shows the effect and its interval as impressions accumulate, and the
report says at how many impressions p first fell below 0.05 (and 0.01).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import RerankError

__all__ = [
    "Impression",
    "ReportError",
    "impressions_from",
    "ab_report",
    "interleave_report",
    "accumulate",
    "build_report",
    "read_ubi",
    "format_report",
    "write_report",
    "METRICS",
]

METRICS = ("ctr_at_k", "clicks", "rr", "abandoned")
_LABELS = {"ctr_at_k": "CTR@{k}", "clicks": "clicks/search", "rr": "RR first click", "abandoned": "abandonment"}


class ReportError(RerankError):
    """The report cannot be made (no data, OpenSearch unreachable, a bad option)."""

    type = "ab_report_exception"


@dataclass
class Impression:
    query_id: str
    user: str
    arm: str
    mode: str
    ts: float
    served: dict[str, tuple[int, str]] = field(default_factory=dict)  # object id -> (rank, team)
    clicks: list[int] = field(default_factory=list)  # ranks clicked
    click_teams: list[str] = field(default_factory=list)

    def values(self, k: int) -> dict[str, float]:
        first = min(self.clicks) if self.clicks else None
        return {
            "ctr_at_k": float(any(r < k for r in self.clicks)),
            "clicks": float(len(self.clicks)),
            "rr": 0.0 if first is None else 1.0 / (first + 1),
            "abandoned": float(not self.clicks),
        }


def _ts(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value) / 1000.0
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return 0.0


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def impressions_from(
    queries: Iterable[Mapping[str, Any]],
    events: Iterable[Mapping[str, Any]],
    *,
    click_actions: Sequence[str] = ("click",),
) -> tuple[list[Impression], dict[str, int]]:
    """Impressions (served pages joined per query id, clicks attached), oldest first, and counts
    of what was left out."""
    by_id: dict[str, Impression] = {}
    skipped = {"forced": 0, "clicks_unmatched": 0}
    for doc in queries:
        attrs = doc.get("query_attributes") or {}
        if _truthy(attrs.get("forced")):
            skipped["forced"] += 1
            continue
        qid = doc.get("query_id")
        if not qid:
            continue
        imp = by_id.get(qid)
        if imp is None:
            user = doc.get("client_id") or f"query:{qid}"
            imp = by_id[qid] = Impression(
                qid, str(user), str(attrs.get("arm", "")), str(attrs.get("mode", "")), _ts(doc.get("timestamp"))
            )
        start = int(attrs.get("from", 0) or 0)
        teams = attrs.get("teams") or []
        for i, oid in enumerate(doc.get("query_response_object_ids") or []):
            team = teams[i] if i < len(teams) else ""
            imp.served.setdefault(str(oid), (start + i, str(team)))
    actions = set(click_actions)
    seen: set[tuple[str, str]] = set()
    for event in events:
        if event.get("action_name") not in actions:
            continue
        imp = by_id.get(event.get("query_id") or "")
        if imp is None:
            continue  # another experiment's search, or none
        obj = ((event.get("event_attributes") or {}).get("object") or {}).get("object_id")
        hit = imp.served.get(str(obj))
        if hit is None:
            skipped["clicks_unmatched"] += 1
            continue
        if (imp.query_id, str(obj)) in seen:
            continue  # a second click on the same hit of the same search counts once
        seen.add((imp.query_id, str(obj)))
        imp.clicks.append(hit[0])
        imp.click_teams.append(hit[1])
    return sorted(by_id.values(), key=lambda i: (i.ts, i.query_id)), skipped


# -- A/B -------------------------------------------------------------------------


def _user_means(imps: Sequence[Impression], metric: str, k: int) -> np.ndarray:
    sums: dict[str, list[float]] = {}
    for imp in imps:
        sums.setdefault(imp.user, []).append(imp.values(k)[metric])
    return np.array([sum(v) / len(v) for v in sums.values()], dtype=np.float64)


def _diff_stat(x, y, axis=-1):
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def ab_report(
    imps: Sequence[Impression], *, baseline: str | None = None, k: int = 5, n_resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Per-arm metrics and each arm against the baseline, for every metric."""
    from scipy import stats

    arms: dict[str, list[Impression]] = {}
    for imp in imps:
        arms.setdefault(imp.arm, []).append(imp)
    if len(arms) < 2:
        raise ReportError(f"an A/B report needs two arms with searches, found {sorted(arms)}")
    base = baseline if baseline is not None else ("bm25" if "bm25" in arms else sorted(arms)[0])
    if base not in arms:
        raise ReportError(f"baseline arm {base!r} has no searches (arms: {sorted(arms)})")
    per_arm = {}
    for name, group in arms.items():
        vals = [i.values(k) for i in group]
        per_arm[name] = {
            "searches": len(group),
            "users": len({i.user for i in group}),
            **{m: float(np.mean([v[m] for v in vals])) for m in METRICS},
        }
    comparisons = {}
    for name in sorted(arms):
        if name == base:
            continue
        out = {}
        for metric in METRICS:
            x, y = _user_means(arms[name], metric, k), _user_means(arms[base], metric, k)
            diff = float(x.mean() - y.mean())
            p = float(stats.ttest_ind(x, y, equal_var=False).pvalue) if len(x) > 1 and len(y) > 1 else float("nan")
            boot = stats.bootstrap(
                (x, y), _diff_stat, vectorized=True, n_resamples=n_resamples, method="percentile", random_state=seed
            )
            lo, hi = boot.confidence_interval
            out[metric] = {"difference": diff, "ci95": [float(lo), float(hi)], "p_value": p, "users": [len(x), len(y)]}
        comparisons[f"{name} - {base}"] = out
    return {"mode": "ab", "baseline": base, "k": k, "arms": per_arm, "comparisons": comparisons}


# -- interleaving ------------------------------------------------------------------


def _credit(imp: Impression, teams: tuple[str, str]) -> int:
    """+1: the second team (the rerank arm) won this impression, -1: the first, 0: a tie."""
    a = sum(1 for t in imp.click_teams if t == teams[0])
    b = sum(1 for t in imp.click_teams if t == teams[1])
    return (b > a) - (a > b)


def _teams_of(imps: Sequence[Impression]) -> tuple[str, str]:
    names = sorted({team for i in imps for _, team in i.served.values() if team})
    if len(names) != 2:
        raise ReportError(f"an interleaving report needs two teams, found {names}")
    # The bm25 team first when there is one.
    return (names[0], names[1]) if names[0] == "bm25" or names[1] != "bm25" else (names[1], names[0])


def _pref_stat(wins, losses, ties, axis=-1):
    total = np.sum(wins, axis=axis) + np.sum(losses, axis=axis) + np.sum(ties, axis=axis)
    return (np.sum(wins, axis=axis) - np.sum(losses, axis=axis)) / np.maximum(total, 1)


def interleave_report(imps: Sequence[Impression], *, n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    from scipy import stats

    imps = [i for i in imps if i.arm == "interleaved"]
    if not imps:
        raise ReportError("no interleaved searches")
    teams = _teams_of(imps)
    clicked = [i for i in imps if i.clicks]
    outcomes = [_credit(i, teams) for i in clicked]
    wins, losses = outcomes.count(1), outcomes.count(-1)
    ties = outcomes.count(0)
    per_user: dict[str, list[int]] = {}
    for imp, o in zip(clicked, outcomes):
        per_user.setdefault(imp.user, [0, 0, 0])[{1: 0, -1: 1, 0: 2}[o]] += 1
    w = np.array([v[0] for v in per_user.values()], dtype=np.float64)
    lo_ = np.array([v[1] for v in per_user.values()], dtype=np.float64)
    t = np.array([v[2] for v in per_user.values()], dtype=np.float64)
    user_wins, user_losses = int(np.sum(w > lo_)), int(np.sum(lo_ > w))
    pref = (wins - losses) / max(wins + losses + ties, 1)
    ci = [float("nan"), float("nan")]
    if len(w) > 1:
        boot = stats.bootstrap(
            (w, lo_, t),
            _pref_stat,
            paired=True,
            vectorized=True,
            n_resamples=n_resamples,
            method="percentile",
            random_state=seed,
        )
        ci = [float(boot.confidence_interval[0]), float(boot.confidence_interval[1])]
    return {
        "mode": "interleave",
        "teams": {"a": teams[0], "b": teams[1]},
        "impressions": len(imps),
        "users": len({i.user for i in imps}),
        "with_clicks": len(clicked),
        "per_query": {
            "wins": wins,
            "losses": losses,
            "ties": ties,
            "p_value": float(stats.binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else float("nan"),
        },
        "per_user": {
            "wins": user_wins,
            "losses": user_losses,
            "ties": len(w) - user_wins - user_losses,
            "p_value": float(stats.binomtest(user_wins, user_wins + user_losses, 0.5).pvalue)
            if user_wins + user_losses
            else float("nan"),
        },
        "preference": {
            "value": float(pref),
            "ci95": ci,
            "meaning": f"(wins - losses) / clicked impressions, + favours {teams[1]}",
        },
        "clicks_per_team": {name: sum(1 for i in clicked for x in i.click_teams if x == name) for name in teams},
    }


# -- as impressions accumulate ----------------------------------------------------------


def _checkpoints(n: int, points: int = 200, start: int = 100) -> list[int]:
    """Impression counts to test at: from ``start`` (fewer is noise: a p below 0.05 at
    20 impressions says nothing) to ``n``."""
    step = max(1, n // points)
    out = list(range(min(start, n), n + 1, step))
    if not out or out[-1] != n:
        out.append(n)
    return out


def accumulate(
    imps: Sequence[Impression],
    mode: str,
    *,
    metric: str = "rr",
    k: int = 5,
    baseline: str | None = None,
    treatment: str | None = None,
) -> list[dict[str, float]]:
    """Effect, 95% interval and p-value on the first n impressions, for growing n
    (A/B: Welch's t on user means of ``metric``; interleaving: the sign test and a t
    interval of the per-impression preference)."""
    from scipy import stats

    out = []
    if mode == "interleave":
        imps = [i for i in imps if i.arm == "interleaved"]
        if not imps:
            return []
        teams = _teams_of(imps)
        credit = np.array([_credit(i, teams) if i.clicks else 0 for i in imps])
        has_click = np.array([bool(i.clicks) for i in imps])
        for n in _checkpoints(len(imps)):
            o = credit[:n][has_click[:n]]
            wins, losses = int(np.sum(o > 0)), int(np.sum(o < 0))
            if len(o) < 2 or wins + losses == 0:
                continue
            eff = float(o.mean())
            sem = float(o.std(ddof=1) / math.sqrt(len(o))) if len(o) > 1 else float("nan")
            z = stats.norm.ppf(0.975)
            p = float(stats.binomtest(wins, wins + losses, 0.5).pvalue)
            out.append({"n": n, "effect": eff, "lo": eff - z * sem, "hi": eff + z * sem, "p": p})
        return out
    arms = sorted({i.arm for i in imps})
    base = baseline or ("bm25" if "bm25" in arms else arms[0])
    other = treatment or next((a for a in arms if a != base), None)
    if other is None:
        return []
    users = {u: j for j, u in enumerate(sorted({i.user for i in imps}))}
    uid = np.array([users[i.user] for i in imps])
    arm = np.array([0 if i.arm == base else 1 if i.arm == other else -1 for i in imps])
    val = np.array([i.values(k)[metric] for i in imps])
    for n in _checkpoints(len(imps)):
        groups = []
        for a in (1, 0):
            sel = arm[:n] == a
            counts = np.bincount(uid[:n][sel], minlength=len(users))
            sums = np.bincount(uid[:n][sel], weights=val[:n][sel], minlength=len(users))
            groups.append(sums[counts > 0] / counts[counts > 0])
        x, y = groups
        if len(x) < 2 or len(y) < 2:
            continue
        res = stats.ttest_ind(x, y, equal_var=False)
        ci = res.confidence_interval(0.95)
        out.append(
            {
                "n": n,
                "effect": float(x.mean() - y.mean()),
                "lo": float(ci.low),
                "hi": float(ci.high),
                "p": float(res.pvalue),
            }
        )
    return out


def first_below(points: Sequence[Mapping[str, float]], alpha: float, *, stay: bool = True) -> int | None:
    """The impressions at which p first fell below ``alpha`` (``stay``: and stayed below it)."""
    found = None
    for pt in points:
        if pt["p"] < alpha:
            if found is None:
                found = int(pt["n"])
                if not stay:
                    return found
        else:
            found = None
    return found


def build_report(
    imps: Sequence[Impression],
    skipped: Mapping[str, int],
    *,
    experiment: str,
    k: int = 5,
    metric: str = "rr",
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    if not imps:
        raise ReportError(f"no searches recorded for experiment [{experiment}] (in this time range)")
    if metric not in METRICS:
        raise ReportError(f"unknown metric {metric!r}; one of {list(METRICS)}")
    mode = "interleave" if any(i.arm == "interleaved" for i in imps) else "ab"
    if mode == "interleave":
        body = interleave_report(imps, n_resamples=n_resamples, seed=seed)
        curve = accumulate(imps, mode)
    else:
        body = ab_report(imps, k=k, n_resamples=n_resamples, seed=seed)
        curve = accumulate(imps, mode, metric=metric, k=k, baseline=body["baseline"])
    return {
        "experiment": experiment,
        **body,
        "metric": metric if mode == "ab" else "preference",
        "left_out": dict(skipped),
        "impressions_total": len(imps),
        "impressions_first_p05": first_below(curve, 0.05, stay=False),
        "impressions_to_p05": first_below(curve, 0.05),
        "impressions_to_p01": first_below(curve, 0.01),
        "curve": curve,
    }


# -- reading OpenSearch -------------------------------------------------------------------


def read_ubi(
    opensearch_url: str,
    experiment: str,
    *,
    queries_index: str = "ubi_queries",
    events_index: str = "ubi_events",
    since: str | None = None,
    until: str | None = None,
    auth: tuple[str, str] | None = None,
    verify: bool = True,
) -> tuple[list[dict], list[dict]]:
    """The experiment's ``ubi_queries`` documents and the click events from ``since`` on."""
    from opensearchpy import OpenSearch
    from opensearchpy.exceptions import NotFoundError, OpenSearchException
    from opensearchpy.helpers import scan

    client = OpenSearch(opensearch_url, http_auth=auth, verify_certs=verify, timeout=60)
    span = {k: v for k, v in (("gte", since), ("lte", until)) if v}
    fmt = "strict_date_optional_time||epoch_millis"
    q_filter: list[dict] = [{"term": {"query_attributes.experiment": experiment}}]
    if span:
        q_filter.append({"range": {"timestamp": {**span, "format": fmt}}})
    e_filter: list[dict] = [{"range": {"timestamp": {"gte": since, "format": fmt}}}] if since else []
    try:
        client.indices.refresh(index=f"{queries_index},{events_index}", ignore_unavailable=True)
        queries = [
            h["_source"]
            for h in scan(client, index=queries_index, query={"query": {"bool": {"filter": q_filter}}}, size=2000)
        ]
        try:
            events = [
                h["_source"]
                for h in scan(client, index=events_index, query={"query": {"bool": {"filter": e_filter}}}, size=2000)
            ]
        except NotFoundError:
            events = []
    except NotFoundError:
        raise ReportError(f"index [{queries_index}] does not exist at {opensearch_url}: nothing recorded yet") from None
    except OpenSearchException as exc:
        raise ReportError(f"cannot read UBI data from {opensearch_url}: {exc}") from None
    except Exception as exc:  # connection errors from the transport
        raise ReportError(f"cannot reach OpenSearch at {opensearch_url}: {exc}") from None
    return queries, events


# -- output ---------------------------------------------------------------------------------


def _f(x: float, d: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"


def _p(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else (f"{x:.2e}" if x < 1e-3 else f"{x:.4f}")


def format_report(report: Mapping[str, Any]) -> str:
    lines = [f"experiment {report['experiment']} ({report['mode']}), {report['impressions_total']} impressions"]
    if report["mode"] == "ab":
        k = report["k"]
        names = [_LABELS[m].format(k=k) for m in METRICS]
        lines.append("| arm | searches | users | " + " | ".join(names) + " |")
        lines.append("|---|---|---|" + "---|" * len(names))
        for arm, row in sorted(report["arms"].items()):
            lines.append(
                f"| {arm} | {row['searches']} | {row['users']} | " + " | ".join(_f(row[m]) for m in METRICS) + " |"
            )
        for label, comp in report["comparisons"].items():
            lines.append("")
            lines.append(f"| {label} | difference | 95% CI (bootstrap over users) | p (Welch) |")
            lines.append("|---|---|---|---|")
            for m in METRICS:
                c = comp[m]
                lines.append(
                    f"| {_LABELS[m].format(k=k)} | {c['difference']:+.4f} | [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] | {_p(c['p_value'])} |"
                )
    else:
        q, u, pref = report["per_query"], report["per_user"], report["preference"]
        a, b = report["teams"]["a"], report["teams"]["b"]
        lines.append(f"| interleaving ({b} vs {a}) | wins ({b}) | losses | ties | p (sign test) |")
        lines.append("|---|---|---|---|---|")
        lines.append(
            f"| per query ({report['with_clicks']} with clicks) | {q['wins']} | {q['losses']} | {q['ties']} | {_p(q['p_value'])} |"
        )
        lines.append(
            f"| per user ({report['users']}) | {u['wins']} | {u['losses']} | {u['ties']} | {_p(u['p_value'])} |"
        )
        lines.append(
            f"preference {pref['value']:+.4f}, 95% CI [{pref['ci95'][0]:+.4f}, {pref['ci95'][1]:+.4f}] (bootstrap over users); clicks per team {report['clicks_per_team']}"
        )
    lines.append(
        f"impressions at which p first fell below 0.05: {report['impressions_first_p05'] or 'not reached'}; "
        f"below 0.05 for good from: {report['impressions_to_p05'] or 'not reached'}; "
        f"below 0.01 for good from: {report['impressions_to_p01'] or 'not reached'} (metric: {report['metric']})"
    )
    if any(report["left_out"].values()):
        lines.append("left out: " + ", ".join(f"{k} {v}" for k, v in report["left_out"].items() if v))
    return "\n".join(lines)


def plot_curves(curves: Mapping[str, Sequence[Mapping[str, float]]], path: str | Path, *, title: str = "") -> Path:
    """One panel per report: the effect and its 95% interval against impressions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
    for ax, (label, pts) in zip(axes[0], curves.items()):
        if pts:
            n = [p["n"] for p in pts]
            ax.plot(n, [p["effect"] for p in pts], color="C0", label="effect")
            ax.fill_between(n, [p["lo"] for p in pts], [p["hi"] for p in pts], color="C0", alpha=0.2, label="95% CI")
            hit = first_below(pts, 0.05)
            if hit:
                ax.axvline(hit, color="C3", linestyle="--", label=f"p < 0.05 from {hit}")
            hit1 = first_below(pts, 0.01)
            if hit1:
                ax.axvline(hit1, color="C2", linestyle=":", label=f"p < 0.01 from {hit1}")
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xlabel("impressions")
        ax.set_title(label)
        ax.legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "table": out / "report.txt", "plot": out / "report.png"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["table"].write_text(format_report(report) + "\n")
    label = "rerank - bm25, " + (report["metric"] if report["mode"] == "ab" else "interleaving preference")
    plot_curves({f"{report['experiment']} ({report['mode']}): {label}": report["curve"]}, paths["plot"])
    return paths


def report_command(
    opensearch_url: str,
    experiment: str,
    *,
    since: str | None,
    until: str | None,
    out_dir: str | Path | None,
    queries_index: str,
    events_index: str,
    k: int,
    metric: str,
    click_actions: Sequence[str] = ("click",),
    auth: tuple[str, str] | None = None,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Read, compute, write: the report and the files written."""
    queries, events = read_ubi(
        opensearch_url,
        experiment,
        queries_index=queries_index,
        events_index=events_index,
        since=since,
        until=until,
        auth=auth,
    )
    imps, skipped = impressions_from(queries, events, click_actions=click_actions)
    report = build_report(imps, skipped, experiment=experiment, k=k, metric=metric)
    report["generated"] = datetime.now(UTC).isoformat(timespec="seconds")
    paths = write_report(report, out_dir) if out_dir is not None else {}
    return report, paths
