"""es_rerank.tools.localnode: a real local OpenSearch (integration) and its error paths.

The real-node tests fetch the integ-test-zip through Maven (fast once it is in
~/.m2) and start a node on free ports with a fresh data dir, so they never touch
a node someone else runs.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from es_rerank.errors import LocalNodeError
from es_rerank.tools.localnode import DEFAULT_VERSION, LocalOpenSearch, find_java, java_range
from es_rerank.tools.localnode import java as localnode_java

needs_mvn = pytest.mark.skipif(shutil.which("mvn") is None, reason="needs Maven (mvn)")


def _free_port_pair() -> int:
    """A free port p with p+100 (the default transport port) free too."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 100 <= 65535:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 100))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair")


def _gone(pid: int, wait: float = 5.0) -> bool:
    """The process no longer exists (a zombie waiting for init to reap it counts as gone)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z" or time.monotonic() > deadline:
            return state == "Z"
        time.sleep(0.1)


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator:
    """Build LocalOpenSearch instances on free ports in a temp data dir; stop and clean up after."""
    nodes: list[LocalOpenSearch] = []

    def make(**kwargs) -> LocalOpenSearch:
        kwargs.setdefault("port", _free_port_pair())
        kwargs.setdefault("data_dir", tmp_path / "data")
        node = LocalOpenSearch(**kwargs)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop(timeout=20)
        # As root the node's files live outside the data dir (see the module docstring).
        if node.runtime_root != node.data_dir:
            shutil.rmtree(node.runtime_root, ignore_errors=True)


# --- a real node ---


@pytest.mark.integration
@needs_mvn
def test_start_status_restart_stop(make_node) -> None:
    messages: list[str] = []
    node = make_node(on_progress=messages.append)

    assert node.status().running is False
    assert node.stop() is False

    status = node.start()
    assert status.running and status.url == node.url and status.version == DEFAULT_VERSION
    assert status.home is not None and (status.home / "bin" / "opensearch").is_file()
    assert any("Starting OpenSearch" in m for m in messages)

    root = httpx.get(node.url + "/", timeout=10).json()
    assert root["version"]["number"] == DEFAULT_VERSION
    assert root["version"]["distribution"] == "opensearch"
    health = httpx.get(node.url + "/_cluster/health", timeout=10).json()
    assert health["status"] in ("green", "yellow")

    pid = status.pid
    assert pid is not None and not _gone(pid, wait=0)
    assert node.pid_file.read_text().strip() == str(pid)
    assert node.log_file.is_file()
    assert (node.node_dir / "data").is_dir() and (node.node_dir / "logs" / "gc.log").is_file()
    assert node.status() == status

    # A second start, even from another instance, finds the running node.
    again = LocalOpenSearch(port=node.port, data_dir=node.data_dir)
    assert again.start().pid == pid  # the same process: nothing launched

    # The cached distribution is reused: no Maven call.
    assert again.fetch() == status.home

    assert node.stop() is True
    assert _gone(pid)
    assert not node.pid_file.exists()
    after = node.status()
    assert after.running is False and after.pid is None and after.url is None
    with pytest.raises(httpx.TransportError):
        httpx.get(node.url + "/", timeout=2)
    assert node.stop() is False


@pytest.mark.integration
@needs_mvn
def test_a_node_that_dies_while_starting_reports_its_log(make_node) -> None:
    node = make_node(heap="1m")  # the JVM refuses to start with so small a heap
    with pytest.raises(LocalNodeError) as err:
        node.start(timeout=60)
    message = str(err.value)
    assert "exited while starting" in message
    assert "heap" in message.lower()  # the JVM's own complaint, from the log tail
    assert not node.pid_file.exists()
    assert node.status().running is False


@pytest.mark.integration
@needs_mvn
def test_elasticsearch_7_10_2(make_node) -> None:
    node = make_node(distribution="elasticsearch")
    status = node.start()
    assert status.version == "7.10.2"
    assert httpx.get(node.url + "/", timeout=10).json()["version"]["number"] == "7.10.2"
    pid = status.pid
    assert pid is not None
    assert node.stop() is True
    assert _gone(pid)


# --- error paths (no node) ---


def test_missing_mvn_says_to_install_maven(tmp_path: Path, monkeypatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(LocalNodeError) as err:
        LocalOpenSearch(data_dir=tmp_path / "data").fetch()
    message = str(err.value)
    assert "Maven" in message and "apt-get install maven" in message
    assert DEFAULT_VERSION in message


@needs_mvn
def test_unresolvable_version_names_it_and_shows_maven_output(tmp_path: Path) -> None:
    with pytest.raises(LocalNodeError) as err:
        LocalOpenSearch(version="0.0.1", data_dir=tmp_path / "data").fetch()
    message = str(err.value)
    assert "0.0.1" in message
    assert "org.opensearch.distribution.integ-test-zip:opensearch:0.0.1:zip" in message
    assert "[ERROR]" in message  # Maven's own words
    assert "\x1b[" not in message


@pytest.mark.parametrize("which", ["http", "transport"])
def test_port_taken_by_something_else(tmp_path: Path, which: str) -> None:
    port = _free_port_pair()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port if which == "http" else port + 100))
        busy.listen()
        with pytest.raises(LocalNodeError) as err:
            LocalOpenSearch(port=port, data_dir=tmp_path / "data").start()
    taken = port if which == "http" else port + 100
    assert f"port {taken}" in str(err.value) and "already taken" in str(err.value)


def _fake_jdk(root: Path, name: str, java_version: str) -> Path:
    # Only the layout find_java reads: bin/java and the release file.
    home = root / name
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "java").write_text("#!/bin/sh\nexit 1\n")
    (home / "bin" / "java").chmod(0o755)
    (home / "release").write_text(f'JAVA_VERSION="{java_version}"\n')
    return home


@pytest.fixture
def no_java_on_machine(tmp_path: Path, monkeypatch) -> Path:
    """Hide every Java but those put under the returned dir."""
    for var in ("JAVA_HOME", "OPENSEARCH_JAVA_HOME", "ES_JAVA_HOME"):
        monkeypatch.delenv(var, raising=False)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    jvms = tmp_path / "jvm"
    jvms.mkdir()
    monkeypatch.setattr(localnode_java, "_JVM_ROOTS", (jvms,))
    return jvms


def test_missing_java_is_a_clear_error(tmp_path: Path, no_java_on_machine: Path) -> None:
    node = LocalOpenSearch(port=_free_port_pair(), data_dir=tmp_path / "data")
    with pytest.raises(LocalNodeError) as err:
        node.start()
    message = str(err.value)
    assert "OpenSearch 2.19.6 needs Java 11-23" in message and "OPENSEARCH_JAVA_HOME" in message
    assert not node.home.exists()  # failed before any download


def test_java_of_the_right_major_is_chosen(no_java_on_machine: Path, monkeypatch) -> None:
    _fake_jdk(no_java_on_machine, "jdk-8", "1.8.0_402")
    jdk17 = _fake_jdk(no_java_on_machine, "jdk-17", "17.0.15")
    jdk25 = _fake_jdk(no_java_on_machine, "jdk-25", "25.0.3")
    assert find_java("opensearch", "2.19.6") == jdk17
    assert find_java("opensearch", "3.0.0") == jdk25
    assert find_java("elasticsearch", "7.10.2") == jdk17
    # An explicit OPENSEARCH_JAVA_HOME of the wrong major is passed over, and said so.
    monkeypatch.setenv("OPENSEARCH_JAVA_HOME", str(jdk25))
    assert find_java("opensearch", "2.19.6") == jdk17
    shutil.rmtree(jdk17)
    with pytest.raises(LocalNodeError) as err:
        find_java("opensearch", "2.19.6")
    assert "jdk-25 (Java 25)" in str(err.value) and "jdk-8 (Java 8)" in str(err.value)


def test_java_ranges() -> None:
    assert java_range("opensearch", "2.19.6") == (11, 23)
    assert java_range("opensearch", "3.1.0") == (21, None)
    assert java_range("elasticsearch", "7.10.2") == (11, 17)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"version": "../x"},
        {"heap": "lots"},
        {"port": 0},
        {"port": 9200, "transport_port": 9200},
        {"distribution": "solr"},
    ],
)
def test_bad_arguments(kwargs: dict, tmp_path: Path) -> None:
    with pytest.raises(LocalNodeError):
        LocalOpenSearch(data_dir=tmp_path, **kwargs)


def test_no_io_until_asked(tmp_path: Path) -> None:
    node = LocalOpenSearch(data_dir=tmp_path / "data", port=9299)
    assert node.url == "http://127.0.0.1:9299"
    assert node.status().running is False  # the node another process runs on 9299 is not ours
    assert not (tmp_path / "data").exists()


def test_data_dir_default_comes_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ES_RERANK_DATA_DIR", str(tmp_path / "from-env"))
    assert LocalOpenSearch().data_dir == tmp_path / "from-env"
    monkeypatch.delenv("ES_RERANK_DATA_DIR")
    assert LocalOpenSearch().data_dir == Path.home() / ".cache" / "es-rerank"
