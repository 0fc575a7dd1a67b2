"""``rlm view TRAJECTORY.jsonl``: one trajectory file served on loopback.

The page (``static/file.html``) asks this server for pages of event summaries
(``/api/events?after=N``) and polls it again for what the file gained since (a run
in progress), and fetches a long field whole only when the user opens it
(``/api/events/{seq}/{field}``). Only ``127.0.0.1`` and ``localhost`` are accepted
as the Host, so a web page elsewhere cannot reach the file by rebinding its DNS name
to loopback.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rlm.errors import ConfigurationError
from rlm.viewer.index import PAGE_EVENTS, TrajectoryIndex
from rlm.viewer.pages import HEADERS, asset, static_file


def build_viewer(path: str | Path) -> Starlette:
    """The viewer's app for the trajectory at ``path``."""
    index = TrajectoryIndex(path)
    name = Path(path).name

    def page(request: Request) -> Response:
        return static_file("file.html")

    def events(request: Request) -> Response:
        after = _number(request.query_params.get("after", "0"))
        limit = _number(request.query_params.get("limit", str(PAGE_EVENTS)))
        if after is None or limit is None:
            return _json({"error": "after and limit must be numbers"}, 400)
        total = index.refresh()
        head = json.dumps({"file": name, "total": total, "bytes": index.size})
        body = head[:-1].encode() + b', "events": ' + index.page_json(after, limit) + b"}"
        return Response(body, headers=HEADERS, media_type="application/json")

    def field(request: Request) -> Response:
        seq = _number(request.path_params["seq"])
        value = None if seq is None else index.field(seq, request.path_params["field"])
        if value is None:
            return _json({"error": "no such event or field"}, 404)
        return _json({"value": value})

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/static/{name}", asset, methods=["GET"]),
        Route("/api/events", events, methods=["GET"]),
        Route("/api/events/{seq}/{field}", field, methods=["GET"]),
    ]
    hosts = Middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost"])
    return Starlette(routes=routes, middleware=[hosts])


def _number(text: str) -> int | None:
    return int(text) if text.isdigit() and len(text) < 19 else None


def _json(data: object, status: int = 200) -> Response:
    return JSONResponse(data, status, headers=HEADERS)


def bind(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1 (``port`` 0: any free port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(
            f"cannot listen on 127.0.0.1:{port} ({exc.strerror}): choose another --port"
        ) from None
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def serve_file(path: str, port: int, *, announce: bool = True) -> int:
    """Serve ``path`` until a stop signal; prints the page's URL first."""
    import uvicorn

    if not Path(path).is_file():
        raise ConfigurationError(f"{path}: no such trajectory file")
    sock = bind(port)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    if announce:
        print(f"rlm view: {Path(path).name} at {url} (Ctrl-C to stop)", flush=True)
    config = uvicorn.Config(
        build_viewer(path), lifespan="off", log_level="warning", server_header=False
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0
