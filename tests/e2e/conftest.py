"""The conformance run's summary: every story, and what became of it."""

from __future__ import annotations

from storyrunner import SUMMARY


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    ran = {entry["story"]: entry for entry in SUMMARY}
    marked = []
    for report in terminalreporter.stats.get("skipped", []):
        if "test_api_stories.py::test_story[" not in report.nodeid:
            continue
        story = report.nodeid.split("test_story[", 1)[1].rstrip("]")
        if story not in ran:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            marked.append((story, reason.removeprefix("Skipped: ")))
    if not ran and not marked:
        return
    write = terminalreporter.write_line
    terminalreporter.section("upstream API stories: direct vs es-rerank")
    passed = [e for e in ran.values() if e["outcome"] == "passed"]
    failed = [e for e in ran.values() if e["outcome"] == "failed"]
    skipped = [e for e in ran.values() if e["outcome"] == "skipped"]
    for entry in passed + failed:
        write(
            f"{entry['outcome'].upper():8} {entry['story']}: {entry['chapters']} chapters, "
            f"{entry['reranked']} reranked by the proxy, {entry.get('seconds', 0)}s"
        )
        for note in entry.get("notes", []):
            write(f"         note: {note}")
        if entry["outcome"] == "failed":
            if entry.get("known_bug"):
                write("         (a known drop-in bug: expected to fail)")
            write(f"         {entry['reason']}")
    for entry in skipped:
        write(f"SKIPPED  {entry['story']}: {entry['reason']}")
    for story, reason in sorted(marked):
        write(f"SKIPPED  {story}: {reason}")
    known = sum(1 for e in failed if e.get("known_bug"))
    write(
        f"{len(passed)} passed, {len(failed)} failed ({known} of them known bugs), {len(skipped) + len(marked)} skipped; "
        f"{sum(e['chapters'] for e in passed + failed)} chapters run through the proxy, "
        f"{sum(e['reranked'] for e in passed + failed)} of them reranked"
    )
