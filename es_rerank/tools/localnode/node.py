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
``node.log`` stay in the data dir."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from ...errors import LocalNodeError
from .distributions import _FLAVORS, _SAFE_VERSION, DEFAULT_ELASTICSEARCH_VERSION, DEFAULT_VERSION, Distribution
from .files import _LOG_TAIL_LINES, _locked, _maven_errors, _rewrite_jvm_options, _unlink, _write_atomic
from .java import find_java
from .process import _describe, _is_our_node, _pid_alive, _port_free, _ready, _signal_group
from .users import _RUN_AS_USER, _chown_tree, _make_readable, _make_readable_dirs, _reachable, _run_as

__all__ = ["NodeStatus", "LocalOpenSearch", "default_data_dir"]


logger = logging.getLogger("es_rerank.tools.localnode")


_HEAP = re.compile(r"^[0-9]+[kKmMgG]?$")


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
