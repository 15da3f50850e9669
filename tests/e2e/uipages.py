"""Real search UIs built with npm into small pages, served on loopback, driven in Chromium.

Each page lives in ``tests/e2e/ui/<name>/`` (``package.json`` with exact versions, its
``package-lock.json``, and one entry file). :func:`build` installs and bundles it with
esbuild into ``~/.cache/es-rerank/ui-builds/<name>-<hash of its sources>/`` (reused while
the sources are unchanged; ``ES_RERANK_UI_BUILDS`` moves the cache). Every page gets the
same ``index.html``: the containers the entry fills, and a recorder that wraps ``fetch``
and ``XMLHttpRequest`` so the test can read what page code saw of each search answer:
its status, ``x-rerank`` headers (readable only when CORS exposes them) and body, or the
network error a browser gives when CORS headers are missing.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent / "ui"
CHROMIUM = os.environ.get("ES_RERANK_CHROMIUM", "/usr/bin/chromium")

RECORDER = r"""
window.__answers = [];
(function () {
  const watched = (url) => /_m?search/.test(String(url));
  const keep = (url, sent, status, get, text, error) => {
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (e) { body = text; }
    window.__answers.push({
      url: String(url), sent: typeof sent === "string" ? sent : null, status, error: error || null, body,
      rerank: get ? get("x-rerank") : null, reason: get ? get("x-rerank-reason") : null,
      items: get ? get("x-rerank-items") : null, outcomes: get ? get("x-rerank-item-outcomes") : null,
    });
  };
  const fetch0 = window.fetch.bind(window);
  window.fetch = async function (input, init) {
    const url = typeof input === "string" ? input : input.url;
    try {
      const answer = await fetch0(input, init);
      if (watched(url)) {
        const text = await answer.clone().text();
        keep(url, init && init.body, answer.status, (h) => answer.headers.get(h), text);
      }
      return answer;
    } catch (error) {
      if (watched(url)) keep(url, init && init.body, 0, null, null, String(error));
      throw error;
    }
  };
  const open0 = XMLHttpRequest.prototype.open, send0 = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.open = function (method, url) { this.__url = url; return open0.apply(this, arguments); };
  XMLHttpRequest.prototype.send = function (sent) {
    if (watched(this.__url)) {
      this.addEventListener("loadend", () => {
        const text = this.responseType === "" || this.responseType === "text" ? this.responseText : null;
        keep(this.__url, sent, this.status, (h) => this.getResponseHeader(h), text, this.status === 0 ? "network error" : null);
      });
    }
    return send0.apply(this, arguments);
  };
})();
"""

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{name}</title><script>{recorder}</script></head>
<body>
<div id="searchbox"></div><div id="stats"></div><div id="facets"></div><div id="hits"></div>
<div id="hits-root"></div><div id="error"></div>
<script src="bundle.js"></script>
</body></html>
"""


def cache_root() -> Path:
    return Path(os.environ.get("ES_RERANK_UI_BUILDS", Path.home() / ".cache" / "es-rerank" / "ui-builds"))


def skip_unless_browser() -> None:
    """Skip (with the reason) where Chromium, Playwright or npm is missing; .ci/run installs them."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set ES_RERANK_CHROMIUM)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("Playwright for Python is not installed (pip install playwright)")


def build(name: str) -> Path:
    """The built page ``name`` (index.html + bundle.js), from the cache when its sources are unchanged."""
    source = HERE / name
    files = sorted(p for p in source.iterdir() if p.is_file())
    digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files) + RECORDER.encode()).hexdigest()[
        :16
    ]
    out = cache_root() / f"{name}-{digest}"
    if (out / "bundle.js").exists() and (out / "index.html").exists():
        return out
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed (.ci/run installs node and npm)")
    work = cache_root() / f"{name}-{digest}.building"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for p in files:
        shutil.copy2(p, work / p.name)
    install = ["npm", "ci"] if (work / "package-lock.json").exists() else ["npm", "install"]
    _run([*install, "--no-audit", "--no-fund", "--loglevel=error"], work)
    entry = next(p.name for p in files if p.stem == "main")
    _run(
        ["npx", "--no-install", "esbuild", entry, "--bundle", "--format=iife", "--minify", "--outfile=bundle.js",
         "--define:process.env.NODE_ENV=\"production\"", "--define:global=window", "--loader:.js=jsx"],
        work,
    )  # fmt: skip
    (work / "index.html").write_text(PAGE.format(name=name, recorder=RECORDER), encoding="utf-8")
    if not (source / "package-lock.json").exists():
        shutil.copy2(work / "package-lock.json", source / "package-lock.json")  # pin what was resolved
    out.mkdir(parents=True, exist_ok=True)
    for keep in ("index.html", "bundle.js", "package-lock.json"):
        shutil.copy2(work / keep, out / keep)
    shutil.rmtree(work, ignore_errors=True)
    return out


def _run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


class StaticSite:
    """A folder served over HTTP on a free loopback port, in a thread."""

    def __init__(self, folder: Path) -> None:
        handler = functools.partial(_Quiet, directory=str(folder))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StaticSite:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def answers(page) -> list[dict]:
    """What the page's code saw of every search answer so far."""
    return json.loads(page.evaluate("JSON.stringify(window.__answers)"))
