"""``rlm serve``: the service of a config file, served by uvicorn until a stop signal.

On SIGTERM or SIGINT the runs in flight are cancelled first and stored as
``interrupted`` (so the requests and event streams waiting on them end), then
uvicorn closes its connections and the app's lifespan closes the pools (their
containers removed), the batcher and the store. A second SIGINT forces the exit.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from rlm.service.app import build_app
from rlm.service.config import load_config
from rlm.service.guard import Guard, head_deadline_protocol

if TYPE_CHECKING:
    import argparse

    from starlette.applications import Starlette

#: Seconds uvicorn waits for open requests after the runs were interrupted.
GRACEFUL_S = 15
#: The largest request line and headers taken; longer, the connection is refused.
MAX_HEAD_BYTES = 64 << 10
#: Seconds an idle keep-alive connection stays open.
KEEP_ALIVE_S = 5

log = logging.getLogger("rlm.service")


class _Server(uvicorn.Server):
    """uvicorn's server, which interrupts the runs in flight when told to stop and
    then exits normally (uvicorn would raise the signal again once it is done)."""

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self.app = app
        self._interrupting = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
            return
        self.should_exit = True
        service = getattr(self.app.state, "service", None)
        if service is not None and not self._interrupting:
            self._interrupting = True
            loop = asyncio.get_event_loop()
            loop.call_soon_threadsafe(lambda: loop.create_task(service.manager.shutdown()))


def serve(config_path: str, host: str, port: int) -> int:
    config = load_config(config_path)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = build_app(config)
    settings = config.server
    guarded = Guard(
        app,
        auth_failures_per_minute=settings.auth_failures_per_minute,
        trusted_proxy=settings.trusted_proxy,
        body_timeout_s=settings.body_timeout_s,
    )
    server = _Server(
        uvicorn.Config(
            guarded,
            host=host,
            port=port,
            lifespan="on",
            timeout_graceful_shutdown=GRACEFUL_S,
            server_header=False,
            # h11, not httptools: httptools takes headers of any size (a 1 MiB header
            # was read and answered); h11 refuses a head over this with 400, and the
            # head must arrive within body_timeout_s (uvicorn alone waits for ever).
            http=head_deadline_protocol(settings.body_timeout_s),
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            timeout_keep_alive=KEEP_ALIVE_S,
            log_config=None,
        ),
        app,
    )
    # Start-up's objects live as long as the server: a full collection over them
    # would pause every run now and then for nothing (see README).
    gc.freeze()
    server.run()
    return 0 if server.started else 1


def main(args: argparse.Namespace) -> int:
    return serve(args.config, args.host, args.port)
