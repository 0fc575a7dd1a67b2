"""The viewer's static page and its headers, shared by ``rlm view`` and ``rlm serve``.

Every response of the viewer carries a strict Content-Security-Policy: scripts
only from the viewer's own files (no inline script, no eval), no plugins, no
frames, requests to the same origin only. The page builds its DOM with
``textContent`` and ``createElement`` alone, so a trajectory's text (model code,
outputs, answers: written by a model, possibly hostile) is shown, never run; the
policy is the second wall.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
STATIC = Path(str(resources.files("rlm.viewer") / "static"))
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
}


def static_file(name: str) -> Response:
    """One of the viewer's own files by its plain name, or 404 (no paths)."""
    path = STATIC / name
    kind = _TYPES.get(path.suffix)
    if "/" in name or "\\" in name or name.startswith(".") or kind is None or not path.is_file():
        return Response("not found", 404, headers=HEADERS, media_type="text/plain")
    return Response(path.read_bytes(), headers=HEADERS, media_type=kind)


async def asset(request: Request) -> Response:
    """Route endpoint for ``.../static/{name}``."""
    return static_file(str(request.path_params["name"]))
