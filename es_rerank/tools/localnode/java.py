"""Which Java a distribution needs, and finding one on this machine."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from pathlib import Path

from ...errors import LocalNodeError
from .distributions import _FLAVORS, Distribution

# Where JDKs are looked for after the environment and PATH.
_JVM_ROOTS: tuple[Path, ...] = (Path("/usr/lib/jvm"), Path("/usr/java"), Path("/opt/java"))


def java_range(distribution: Distribution, version: str) -> tuple[int, int | None]:
    """The Java majors (inclusive; None: no upper bound) a distribution version runs on."""
    major = _major(version)
    if distribution == "opensearch":
        if major >= 3:
            return 21, None
        # 1.x/2.x need the Security Manager, which Java 24 removed.
        return (11, 23) if major == 2 else (8, 17)
    if major >= 8:
        return 17, 23
    # 7.10.2 is verified on 17; it predates the newer JDKs.
    return 11, 17


def find_java(distribution: Distribution, version: str) -> Path:
    """A Java home whose major version suits this distribution version.

    Looked for in ``OPENSEARCH_JAVA_HOME`` (``ES_JAVA_HOME``), ``JAVA_HOME``, the
    ``java`` on PATH, then the JDKs under /usr/lib/jvm (newest suitable first).
    """
    flavor = _FLAVORS[distribution]
    low, high = java_range(distribution, version)
    seen: set[Path] = set()
    tried: list[str] = []

    def suitable(home: Path) -> bool:
        real = home.resolve()
        if real in seen or not (real / "bin" / "java").is_file():
            return False
        seen.add(real)
        major = _java_major(real)
        tried.append(f"{home} (Java {major if major is not None else '?'})")
        return major is not None and major >= low and (high is None or major <= high)

    for var in (flavor.java_home_env, "JAVA_HOME"):
        value = os.environ.get(var)
        if value and suitable(Path(value)):
            return Path(value)
    java = shutil.which("java")
    if java is not None:
        home = Path(java).resolve().parent.parent
        if suitable(home):
            return home
    installed: list[tuple[int, Path]] = []
    for root in _JVM_ROOTS:
        with contextlib.suppress(OSError):
            for home in sorted(root.iterdir()):
                if home.is_dir() and suitable(home):
                    installed.append((_java_major(home.resolve()) or 0, home))
    if installed:
        return max(installed, key=lambda item: item[0])[1]

    wanted = f"Java {low}+" if high is None else f"Java {low}-{high}"
    found = "; found: " + ", ".join(tried) if tried else "; no Java found"
    package = "openjdk-21-jdk-headless" if high is None else "openjdk-17-jdk-headless"
    raise LocalNodeError(
        f"{flavor.name} {version} needs {wanted}{found}. Install one "
        f"(e.g. `apt-get install {package}`) or point {flavor.java_home_env} at it"
    )


def _java_major(home: Path) -> int | None:
    text = ""
    with contextlib.suppress(OSError):
        release = (home / "release").read_text(errors="replace")
        match = re.search(r'^JAVA_VERSION="([^"]+)"', release, re.MULTILINE)
        if match:
            text = match.group(1)
    if not text:
        try:
            done = subprocess.run(
                [str(home / "bin" / "java"), "-version"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        match = re.search(r'version "([^"]+)"', done.stderr.decode(errors="replace"))
        if not match:
            return None
        text = match.group(1)
    parts = text.split(".")
    try:
        # "1.8.0_402" is Java 8; "17.0.15" is 17.
        return int(parts[1]) if parts[0] == "1" and len(parts) > 1 else int(parts[0].split("-")[0])
    except ValueError:
        return None


def _major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError as exc:
        raise LocalNodeError(f"invalid version {version!r}") from exc
