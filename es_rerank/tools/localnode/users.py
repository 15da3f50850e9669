"""Running the node as an unprivileged user when es-rerank runs as root: who, and making its files reachable."""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
from pathlib import Path

from ...errors import LocalNodeError

# The unprivileged account the node runs as when we are root.
_RUN_AS_USER = "nobody"


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) to run the node as: ``nobody`` when we are root, else None."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(_RUN_AS_USER)
    except KeyError as exc:
        raise LocalNodeError(
            "OpenSearch and Elasticsearch refuse to run as root, and there is no "
            f"'{_RUN_AS_USER}' user to run the node as; run es-rerank as a regular user"
        ) from exc
    return entry.pw_uid, entry.pw_gid


def _reachable(path: Path, ids: tuple[int, int]) -> bool:
    """Whether uid/gid ``ids`` can traverse every existing directory down to ``path``."""
    uid, gid = ids
    for directory in [*reversed(path.absolute().parents), path.absolute()]:
        try:
            st = directory.stat()
        except FileNotFoundError:
            return True  # we create the rest ourselves, traversable
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _make_readable_dirs(root: Path, leaf: Path) -> None:
    """chmod a+rx every directory from ``root`` down to ``leaf`` (both included).

    Our own directories may have been made under a strict umask.
    """
    chain = [leaf, *leaf.parents]
    for directory in chain[: chain.index(root) + 1] if root in chain else [leaf]:
        with contextlib.suppress(OSError):
            mode = directory.stat().st_mode
            os.chmod(directory, stat.S_IMODE(mode) | 0o555)


def _make_readable(tree: Path) -> None:
    """The unpacked distribution is read by the node's user: a+r, and a+x on dirs."""
    for dirpath, _dirnames, filenames in os.walk(tree):
        os.chmod(dirpath, stat.S_IMODE(os.stat(dirpath).st_mode) | 0o555)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) | 0o444)


def _chown_tree(tree: Path, uid: int, gid: int) -> None:
    for dirpath, _dirnames, filenames in os.walk(tree):
        os.lchown(dirpath, uid, gid)
        for name in filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)
