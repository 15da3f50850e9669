"""The compare page, ``GET /_rerank/ui/``: static files shipped in this package (no build
step), BM25 and reranked side by side. The page asks es-rerank the same query twice,
once with ``x-rerank-enabled: false``, and reads the ``x-rerank-*`` headers of the answer."""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

__all__ = ["ui_response", "UI_FILES"]

UI_FILES = {
    "index.html": "text/html; charset=utf-8",
    "compare.js": "text/javascript; charset=utf-8",
    "compare.css": "text/css; charset=utf-8",
}


def ui_response(request: Request, name: str) -> Response | None:
    """The answer to ``GET /_rerank/ui/<name>``; None when ``name`` is not one of the page's files."""
    if request.method not in ("GET", "HEAD"):
        return None
    if name == "":
        if not request.url.path.endswith("/"):
            # Relative links in the page need the trailing slash.
            return RedirectResponse(request.url.path + "/", status_code=301)
        name = "index.html"
    media_type = UI_FILES.get(name)
    if media_type is None:
        return None
    content = resources.files(__package__).joinpath(name).read_bytes()
    return Response(content, media_type=media_type, headers={"cache-control": "no-cache"})
