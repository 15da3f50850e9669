"""The node's process and HTTP port: free ports, liveness, readiness, signals."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from pathlib import Path

import httpx


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
