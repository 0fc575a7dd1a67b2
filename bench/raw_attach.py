"""A container of the sandbox's shape with its runner replaced, attached raw.

The ceiling the benchmarks hold the channel to: the same hardened container and
the same attach socket, with no protocol on either end.
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread
import docker.errors

from rlm.backends.docker import ContainerSpec


@contextlib.asynccontextmanager
async def raw_container(
    client: Any, spec: ContainerSpec, program: str, *args: str
) -> AsyncIterator[socket.socket]:
    """The non-blocking attach socket of a started container of ``spec`` running
    ``python3 -c program *args``; the container is removed on the way out."""
    kwargs = spec.create_kwargs(f"rlm-bench-{uuid.uuid4().hex[:10]}", {"rlm-bench": "1"})
    kwargs.update(entrypoint=["python3", "-c", program, *args], command=None)
    container = await anyio.to_thread.run_sync(lambda: client.containers.create(**kwargs))
    keep: Any = None
    try:

        def attach() -> Any:
            keep = client.api.attach_socket(
                container.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
            container.start()
            return keep

        keep = await anyio.to_thread.run_sync(attach)
        sock: socket.socket = getattr(keep, "_sock", keep)
        sock.setblocking(False)
        yield sock
    finally:
        if keep is not None:
            keep.close()
        with contextlib.suppress(docker.errors.APIError):  # it may have removed itself
            await anyio.to_thread.run_sync(lambda: container.remove(force=True))
