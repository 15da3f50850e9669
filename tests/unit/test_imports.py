"""Every module imports on its own in a fresh interpreter, and serving never imports tools/ or cli/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter: each module is imported first, with every es_rerank module
# forgotten before it (third-party ones stay loaded, which keeps it fast), so an import
# cycle shows whichever module starts it.
SCRIPT = r"""
import importlib, json, pkgutil, sys, traceback
import es_rerank

OFFLINE = ("es_rerank.tools", "es_rerank.cli")
names = sorted(m.name for m in pkgutil.walk_packages(es_rerank.__path__, "es_rerank.") if not m.name.endswith(".__main__"))
failures, leaks = {}, {}
for name in names:
    for loaded in [m for m in sys.modules if m == "es_rerank" or m.startswith("es_rerank.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failures[name] = traceback.format_exc(limit=3)
        continue
    if not name.startswith(OFFLINE):
        offline = sorted(m for m in sys.modules if m.startswith(OFFLINE))
        if offline:
            leaks[name] = offline
print(json.dumps({"modules": names, "failures": failures, "leaks": leaks}))
"""


def _run() -> dict:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_module_imports_alone_and_serving_imports_no_tool():
    result = _run()
    assert "es_rerank.app" in result["modules"] and "es_rerank.tools.datasets" in result["modules"]
    assert "es_rerank.cli" in result["modules"] and "es_rerank.tools.models.quantize" in result["modules"]
    assert result["failures"] == {}
    assert result["leaks"] == {}, "serving modules importing es_rerank.tools or es_rerank.cli"


def test_the_app_alone_loads_no_tool_or_cli():
    code = (
        "import sys, es_rerank.app, es_rerank.server; "
        "print([m for m in sys.modules if m.startswith(('es_rerank.tools', 'es_rerank.cli'))])"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
