"""The viewer in ``rlm serve``: ``/view/`` lists the caller's runs and shows one, live.

The page and its files are static and hold no tenant data: the page asks for a
bearer token (kept in the tab's ``sessionStorage`` only), then calls the API with
it as any client does: ``GET /v1/runs`` for the list, ``GET /v1/runs/{id}`` and
its Server-Sent Events (``/v1/runs/{id}/events``) for a run, so it sees exactly
what the token's tenant may see.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from rlm.viewer.pages import HEADERS, asset, static_file


async def page(request: Request) -> Response:
    return static_file("service.html")


async def to_page(request: Request) -> Response:
    return RedirectResponse(request.url.path + "/", headers=HEADERS)


def viewer_routes() -> list[BaseRoute]:
    """The viewer's routes, for the service's app."""
    return [
        Route("/view", to_page, methods=["GET"]),
        Route("/view/", page, methods=["GET"]),
        Route("/view/static/{name}", asset, methods=["GET"]),
    ]
