"""The node's files: atomic writes, the lock, the JVM options, Maven's errors read from its output."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path

_LOG_TAIL_LINES = 20
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (two `start`s must not launch two nodes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _rewrite_jvm_options(path: Path, logs: Path) -> None:
    """Point jvm.options' home-relative paths (gc log, heap dumps, crash logs) at ``logs``."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return
    for old, new in (
        ("file=logs/", f"file={logs}/"),
        ("-Xloggc:logs/", f"-Xloggc:{logs}/"),
        ("-XX:ErrorFile=logs/", f"-XX:ErrorFile={logs}/"),
        ("-XX:HeapDumpPath=data", f"-XX:HeapDumpPath={logs}"),
    ):
        text = text.replace(old, new)
    path.write_text(text)


def _maven_errors(output: str) -> str:
    """What Maven said went wrong (its first error paragraph and the repositories
    it tried), without its help text; else the tail of its output."""
    lines = [_ANSI.sub("", line).rstrip() for line in output.splitlines()]
    errors = [line for line in lines if line.startswith("[ERROR]")]
    first: list[str] = []
    for line in errors:
        if line == "[ERROR]":
            if first:
                break
            continue
        first.append(line)
    # "central (https://repo.maven.apache.org/maven2, releases=true, ...)"
    repos = [line for line in errors if "(http" in line and line not in first]
    kept = (first + repos)[:_LOG_TAIL_LINES]
    return "\n".join(kept or [line for line in lines if line][-_LOG_TAIL_LINES:]) or "(no output)"
