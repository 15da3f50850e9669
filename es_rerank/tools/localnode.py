"""A real single-node OpenSearch (or Elasticsearch OSS) on loopback, for development and tests.

The distribution is the ``integ-test-zip`` artifact from Maven Central: a plain zip
without a bundled JDK, so the node runs on a Java found on this machine. Maven
fetches it (and caches it in ``~/.m2``); it is unpacked once under the data dir.
The integ-test-zip holds only the ``transport-netty4`` module: core search, the
``standard`` analyzer and BM25 work; ``analysis-common`` (``english``, ``stop``...),
painless scripts and reindex are not there.

Layout under the data dir (default ``$ES_RERANK_DATA_DIR`` or ``~/.cache/es-rerank``)::

    dist/opensearch-2.19.6/              the unpacked distribution, read-only
    nodes/opensearch-2.19.6-9200/        one node per distribution, version and port
        node.pid  node.log  node.lock    what start/stop/status use
        config/  data/  logs/  tmp/      the node's own files

OpenSearch refuses to run as root. As root the node runs as ``nobody`` instead,
which means ``nobody`` must be able to reach the distribution and the node's files;
a root home (``/root`` is mode 700) is not reachable, so then the distribution and
the node's ``config/data/logs/tmp`` live under the system temp dir instead
(``$TMPDIR/es-rerank-nobody-<hash of the data dir>/``), while ``node.pid`` and
``node.log`` stay in the data dir.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

from ..errors import LocalNodeError

__all__ = [
    "DEFAULT_VERSION",
    "DEFAULT_ELASTICSEARCH_VERSION",
    "Distribution",
    "NodeStatus",
    "LocalOpenSearch",
]

logger = logging.getLogger(__name__)

DEFAULT_VERSION = "2.19.6"
# The last Apache-2.0 Elasticsearch; its OSS integ-test-zip runs on Java 17.
DEFAULT_ELASTICSEARCH_VERSION = "7.10.2"

Distribution = Literal["opensearch", "elasticsearch"]

# The unprivileged account the node runs as when we are root.
_RUN_AS_USER = "nobody"
# Where JDKs are looked for after the environment and PATH.
_JVM_ROOTS: tuple[Path, ...] = (Path("/usr/lib/jvm"), Path("/usr/java"), Path("/opt/java"))
_LOG_TAIL_LINES = 20
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SAFE_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.\-_]*$")
_HEAP = re.compile(r"^[0-9]+[kKmMgG]?$")


@dataclass(frozen=True)
class _Flavor:
    """What differs between the two distributions."""

    name: str
    group: str
    executable: str
    java_home_env: str
    java_opts_env: str
    conf_env: str
    tmp_env: str


_FLAVORS: dict[str, _Flavor] = {
    "opensearch": _Flavor(
        name="OpenSearch",
        group="org.opensearch.distribution.integ-test-zip",
        executable="opensearch",
        java_home_env="OPENSEARCH_JAVA_HOME",
        java_opts_env="OPENSEARCH_JAVA_OPTS",
        conf_env="OPENSEARCH_PATH_CONF",
        tmp_env="OPENSEARCH_TMPDIR",
    ),
    "elasticsearch": _Flavor(
        name="Elasticsearch",
        group="org.elasticsearch.distribution.integ-test-zip",
        executable="elasticsearch",
        # 7.10 reads JAVA_HOME; ES_JAVA_HOME is what 7.12+ reads. Both are set.
        java_home_env="ES_JAVA_HOME",
        java_opts_env="ES_JAVA_OPTS",
        conf_env="ES_PATH_CONF",
        tmp_env="ES_TMPDIR",
    ),
}


@dataclass
class NodeStatus:
    """What :meth:`LocalOpenSearch.status` found.

    ``running`` means the node's process is alive; ``version`` is None until it
    answers HTTP (e.g. while it is still starting). ``home`` is the unpacked
    distribution, when it has been fetched.
    """

    running: bool
    url: str | None
    pid: int | None
    version: str | None
    home: Path | None


def default_data_dir() -> Path:
    """``$ES_RERANK_DATA_DIR`` or ``~/.cache/es-rerank``."""
    env = os.environ.get("ES_RERANK_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "es-rerank"


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


class LocalOpenSearch:
    """Fetch, start, stop and inspect one local node on ``127.0.0.1:{port}``.

    The node is started detached (its own session), so it outlives the process
    that started it; a later instance with the same data dir, distribution,
    version and port finds it through its pid file.
    """

    def __init__(
        self,
        *,
        version: str | None = None,
        port: int = 9200,
        transport_port: int | None = None,
        data_dir: Path | None = None,
        heap: str = "512m",
        distribution: Distribution = "opensearch",
        on_progress: Callable[[str], None] | None = None,
    ) -> None:
        if distribution not in _FLAVORS:
            raise LocalNodeError(f"unknown distribution {distribution!r}: use 'opensearch' or 'elasticsearch'")
        if version is None:
            is_os = distribution == "opensearch"
            version = DEFAULT_VERSION if is_os else DEFAULT_ELASTICSEARCH_VERSION
        if not _SAFE_VERSION.match(version):
            raise LocalNodeError(f"invalid version {version!r}: expected something like {DEFAULT_VERSION}")
        if transport_port is None:
            transport_port = port + 100  # 9200 -> 9300, as OpenSearch pairs them
        for value in (port, transport_port):
            if not 1 <= value <= 65535:
                raise LocalNodeError(f"invalid port {value}")
        if port == transport_port:
            raise LocalNodeError(f"the HTTP and transport ports must differ (both {port})")
        if not _HEAP.match(heap):
            raise LocalNodeError(f"invalid heap {heap!r}: expected a JVM size such as 512m or 2g")
        self.version = version
        self.port = port
        self.transport_port = transport_port
        self.data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
        self.heap = heap
        self.distribution: Distribution = distribution
        self._flavor = _FLAVORS[distribution]
        self._on_progress = on_progress
        self._proc: subprocess.Popen[bytes] | None = None

    # -- paths ---------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def _name(self) -> str:
        return f"{self.distribution}-{self.version}"

    @property
    def state_dir(self) -> Path:
        """Holds ``node.pid``, ``node.log`` and the lock; always inside the data dir."""
        return self.data_dir / "nodes" / f"{self._name}-{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "node.pid"

    @property
    def log_file(self) -> Path:
        """The node's console output for its latest start."""
        return self.state_dir / "node.log"

    @property
    def runtime_root(self) -> Path:
        """Where the distribution and the node's files live (see the module docstring)."""
        runas = _run_as()
        if runas is None or _reachable(self.data_dir, runas):
            return self.data_dir
        digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:12]
        root = Path(tempfile.gettempdir()) / f"es-rerank-{_RUN_AS_USER}-{digest}"
        # A shared temp dir: never use a directory someone else planted there.
        with contextlib.suppress(FileNotFoundError):
            st = root.lstat()
            if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid():
                raise LocalNodeError(f"{root} exists and is not ours; remove it and retry")
        return root

    @property
    def home(self) -> Path:
        """The unpacked distribution (it may not exist yet: see :meth:`fetch`)."""
        return self.runtime_root / "dist" / self._name

    @property
    def node_dir(self) -> Path:
        """The node's ``config``, ``data``, ``logs`` and ``tmp``."""
        return self.runtime_root / "nodes" / f"{self._name}-{self.port}"

    def _prepare_data_dir(self) -> None:
        """Create the data dir; as root, traversable by the node's user where it can be."""
        missing = [d for d in (self.data_dir, *self.data_dir.parents) if not d.exists()]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if _run_as() is not None:
            for directory in missing:
                os.chmod(directory, stat.S_IMODE(directory.stat().st_mode) | 0o755)

    def _progress(self, message: str) -> None:
        if self._on_progress is not None:
            logger.debug(message)  # the caller shows it: once is enough
            self._on_progress(message)
        else:
            logger.info(message)

    # -- fetch ---------------------------------------------------------------

    def fetch(self) -> Path:
        """Download (through Maven) and unpack the distribution; return its home.

        Cached: once unpacked, no Maven call is made.
        """
        executable = self.home / "bin" / self._flavor.executable
        if executable.is_file():
            return self.home
        self._prepare_data_dir()
        with _locked(self.data_dir / f".fetch-{self._name}.lock"):
            if executable.is_file():  # another process fetched it while we waited
                return self.home
            mvn = shutil.which("mvn")
            if mvn is None:
                raise LocalNodeError(
                    f"Maven (mvn) is needed to download {self._flavor.name} {self.version} "
                    "and was not found on PATH: install Maven, e.g. `apt-get install maven`"
                )
            with tempfile.TemporaryDirectory(prefix=".fetch-", dir=self.data_dir) as tmp:
                archive = self._download(mvn, Path(tmp))
                self._progress(f"Unpacking {archive.name}")
                self._unpack(archive)
        return self.home

    def _download(self, mvn: str, into: Path) -> Path:
        artifact = f"{self._flavor.group}:{self.distribution}:{self.version}:zip"
        self._progress(f"Downloading {self._flavor.name} {self.version} with Maven ({artifact})")
        try:
            done = subprocess.run(
                [
                    mvn,
                    "-B",
                    "-q",
                    "-Dstyle.color=never",
                    "dependency:copy",
                    f"-Dartifact={artifact}",
                    f"-DoutputDirectory={into}",
                ],
                # A pom.xml in the caller's directory would change what Maven does.
                cwd=into,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=1800,
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalNodeError(f"Maven did not download {artifact} within 30 minutes") from exc
        zips = sorted(into.glob("*.zip"))
        if done.returncode != 0 or not zips:
            raise LocalNodeError(
                f"could not download {self._flavor.name} {self.version} ({artifact}); "
                f"is {self.version} a released version? mvn said:\n"
                + _maven_errors(done.stdout.decode(errors="replace"))
            )
        return zips[0]

    def _unpack(self, archive: Path) -> None:
        self.home.parent.mkdir(parents=True, exist_ok=True)
        # Unpacked beside the home, then renamed: a half-unpacked home never looks fetched.
        with tempfile.TemporaryDirectory(prefix=".unpack-", dir=self.home.parent) as tmp:
            top = self._extract(archive, Path(tmp))
            if _run_as() is not None:
                _make_readable(top)
                _make_readable_dirs(self.runtime_root, self.home.parent)
            if self.home.exists():  # a half-finished earlier unpack
                shutil.rmtree(self.home)
            os.rename(top, self.home)

    def _extract(self, archive: Path, into: Path) -> Path:
        try:
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    target = Path(zf.extract(info, into))
                    # zipfile drops permissions; bin/ scripts must stay executable.
                    mode = (info.external_attr >> 16) & 0o777
                    if mode:
                        os.chmod(target, mode)
        except (zipfile.BadZipFile, OSError) as exc:
            raise LocalNodeError(f"could not unpack {archive}: {exc}") from exc
        tops = [p for p in into.iterdir() if p.is_dir()]
        if len(tops) != 1 or not (tops[0] / "bin" / self._flavor.executable).is_file():
            raise LocalNodeError(f"{archive.name} does not hold bin/{self._flavor.executable}")
        return tops[0]

    # -- start ---------------------------------------------------------------

    def start(self, *, timeout: float = 180) -> NodeStatus:
        """Start the node (fetching it first) and wait until it serves requests.

        Ready means ``GET /`` answers 200 and cluster health is at least yellow;
        ``timeout`` is how long to wait for that once the node is launched. If
        this node already runs (its pid file names a live process), it is only
        waited for. A node that fails to start is stopped again.
        """
        self._prepare_data_dir()
        with _locked(self.state_dir / "node.lock"):
            pid = self._live_pid()
            if pid is not None:
                self._wait_ready(pid, timeout)
                return self.status()
            self._check_ports_free()
            java_home = find_java(self.distribution, self.version)
            home = self.fetch()
            self._progress(f"Starting {self._flavor.name} {self.version} on {self.url} (Java: {java_home})")
            proc = self._launch(home, java_home)
            try:
                self._wait_ready(proc.pid, timeout)
            except BaseException:
                self._kill(proc.pid, grace=10)
                _unlink(self.pid_file)
                raise
            self._progress(f"{self._flavor.name} {self.version} is up on {self.url} (pid {proc.pid})")
            return self.status()

    def _check_ports_free(self) -> None:
        for port, what in ((self.port, "HTTP"), (self.transport_port, "transport")):
            if _port_free(port):
                continue
            answer = _describe(f"http://127.0.0.1:{port}") if port == self.port else None
            who = f" by {answer}" if answer else " by another process"
            raise LocalNodeError(
                f"port {port} ({what} port of the local node) is already taken{who}, "
                f"not by a node started from {self.data_dir}; choose another port"
            )

    def _launch(self, home: Path, java_home: Path) -> subprocess.Popen[bytes]:
        flavor = self._flavor
        node = self.node_dir
        for sub in ("data", "logs", "tmp"):
            (node / sub).mkdir(parents=True, exist_ok=True)
        conf = node / "config"
        if not conf.exists():
            # A config dir per node: the node writes its keystore there, and
            # jvm.options' relative log paths would otherwise land in the shared home.
            shutil.copytree(home / "config", conf)
            _rewrite_jvm_options(conf / "jvm.options", node / "logs")

        env = dict(os.environ)
        env.update(
            {
                flavor.java_home_env: str(java_home),
                "JAVA_HOME": str(java_home),
                flavor.java_opts_env: f"-Xms{self.heap} -Xmx{self.heap}",
                flavor.conf_env: str(conf),
                flavor.tmp_env: str(node / "tmp"),
                # bash here-strings and the JVM write temp files; keep them ours.
                "TMPDIR": str(node / "tmp"),
            }
        )
        args = [
            str(home / "bin" / flavor.executable),
            f"-Ehttp.port={self.port}",
            f"-Etransport.port={self.transport_port}",
            "-Ediscovery.type=single-node",
            "-Enetwork.host=127.0.0.1",
            f"-Epath.data={node / 'data'}",
            f"-Epath.logs={node / 'logs'}",
            # Tight disks must not turn the node read-only under tests.
            "-Ecluster.routing.allocation.disk.threshold_enabled=false",
        ]

        runas = _run_as()
        if runas is not None:
            _make_readable_dirs(self.runtime_root, node)
            _chown_tree(node, *runas)
            env["HOME"] = str(node)
            env["USER"] = env["LOGNAME"] = _RUN_AS_USER

        with open(self.log_file, "wb") as log:
            try:
                proc = subprocess.Popen(
                    args,
                    cwd=node,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    # Its own session and process group: it outlives the CLI, and
                    # stop() can signal the JVM and anything it spawned at once.
                    start_new_session=True,
                    user=runas[0] if runas else None,
                    group=runas[1] if runas else None,
                    extra_groups=[] if runas else None,
                )
            except OSError as exc:
                raise LocalNodeError(f"could not run {args[0]}: {exc}") from exc
        self._proc = proc
        _write_atomic(self.pid_file, f"{proc.pid}\n")
        return proc

    def _wait_ready(self, pid: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=5.0) as client:
            while True:
                if not self._alive(pid):
                    _unlink(self.pid_file)
                    raise LocalNodeError(
                        f"{self._flavor.name} {self.version} (pid {pid}) exited while starting; "
                        f"last lines of {self.log_file}:\n{self._log_tail()}"
                    )
                if _ready(client, self.url):
                    return
                if time.monotonic() >= deadline:
                    raise LocalNodeError(
                        f"{self._flavor.name} {self.version} did not become ready on {self.url} "
                        f"within {timeout:.0f}s; last lines of {self.log_file}:\n{self._log_tail()}"
                    )
                time.sleep(0.5)

    def _log_tail(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(empty log)"

    # -- stop ----------------------------------------------------------------

    def stop(self, *, timeout: float = 60) -> bool:
        """Stop the node: SIGTERM its process group, SIGKILL after ``timeout`` seconds.

        Returns False when no node was running.
        """
        if not self.state_dir.exists():
            return False
        with _locked(self.state_dir / "node.lock"):
            pid = self._live_pid()
            if pid is None:
                return False
            self._progress(f"Stopping {self._flavor.name} {self.version} on {self.url} (pid {pid})")
            self._kill(pid, grace=timeout)
            _unlink(self.pid_file)
            return True

    def _kill(self, pid: int, *, grace: float) -> None:
        # pid is the process group leader (start_new_session), so the group
        # holds the JVM and any helper it started.
        _signal_group(pid, signal.SIGTERM)
        if not self._wait_gone(pid, grace):
            logger.warning("pid %d did not stop within %.0fs; killing it", pid, grace)
            _signal_group(pid, signal.SIGKILL)
            if not self._wait_gone(pid, 10):
                raise LocalNodeError(f"could not stop pid {pid}, even with SIGKILL")
        # Whatever else is left in the group (nothing, normally) goes too.
        _signal_group(pid, signal.SIGKILL)
        self._proc = None

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)
        return True

    # -- status --------------------------------------------------------------

    def status(self) -> NodeStatus:
        """Whether this node runs, and what it answers as."""
        home = self.home if (self.home / "bin" / self._flavor.executable).is_file() else None
        pid = self._live_pid()
        if pid is None:
            return NodeStatus(running=False, url=None, pid=None, version=None, home=home)
        version: str | None = None
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
            response = httpx.get(self.url + "/", timeout=5.0)
            if response.status_code == 200:
                version = str(response.json()["version"]["number"])
        return NodeStatus(running=True, url=self.url, pid=pid, version=version, home=home)

    def _live_pid(self) -> int | None:
        """The pid in the pid file if that process is alive and is this node; else None.

        A stale pid file (the node died, or the pid was reused) is removed.
        """
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if self._alive(pid) and _is_our_node(pid, self.node_dir):
            return pid
        _unlink(self.pid_file)
        return None

    def _alive(self, pid: int) -> bool:
        # Our own child must be reaped, or it lingers as a zombie that still "exists".
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None
        return _pid_alive(pid)


# -- Java ----------------------------------------------------------------------


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


# -- helpers -------------------------------------------------------------------


def _major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError as exc:
        raise LocalNodeError(f"invalid version {version!r}") from exc


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


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: a socket in TIME_WAIT does not count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _describe(url: str) -> str | None:
    """'OpenSearch 2.19.6 at URL' when a search engine answers there, else None."""
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
        body = httpx.get(url + "/", timeout=2.0).json()
        version = body["version"]
        name = "OpenSearch" if version.get("distribution") == "opensearch" else "Elasticsearch"
        return f"{name} {version['number']} at {url}"
    return None


def _ready(client: httpx.Client, url: str) -> bool:
    try:
        if client.get(url + "/").status_code != 200:
            return False
        health = client.get(url + "/_cluster/health", params={"wait_for_status": "yellow", "timeout": "2s"})
        return health.status_code == 200 and health.json().get("status") in ("yellow", "green")
    except (httpx.HTTPError, ValueError):
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still "exists"; it is dead for us. Reap it if it is our child.
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return False
    return True


def _is_our_node(pid: int, node_dir: Path) -> bool:
    """Guard against a reused pid: the process's command line names this node's data path."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc to ask: trust the pid file
    return f"-Epath.data={node_dir / 'data'}".encode() in cmdline


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


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
