"""Every x-rerank-* header es-rerank answers with is exposed to page code by default."""

from __future__ import annotations

import re
from pathlib import Path

from es_rerank.config import CorsSettings

PACKAGE = Path(__file__).resolve().parents[2] / "es_rerank"
REQUEST_ONLY = {"x-rerank-enabled", "x-rerank-api-key"}  # headers clients send, never answered


def test_the_default_expose_headers_cover_every_x_rerank_header():
    written = set()
    for path in PACKAGE.rglob("*.py"):
        written |= set(re.findall(r"[\"'](x-rerank(?:-[a-z]+)*)[\"']", path.read_text(encoding="utf-8")))
    missing = written - REQUEST_ONLY - set(CorsSettings().expose_headers)
    assert not missing, f"add to CORS_EXPOSE_HEADERS in es_rerank/config.py: {sorted(missing)}"
