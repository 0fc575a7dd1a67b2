"""Where a Docker sandbox gets its containers from.

A :class:`ContainerSource` hands out started containers of one
:class:`~rlm.backends.docker.container.ContainerSpec`, each to one session only:
:class:`ColdStart` starts one when asked, :class:`~rlm.backends.docker.pool.ContainerPool`
keeps some started ahead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

import anyio
from rlm_sandbox import protocol

from rlm.backends.docker.container import ContainerSpec, SandboxContainer, launch
from rlm.backends.docker.engine import connect

if TYPE_CHECKING:
    from docker import DockerClient


class ContainerSource(Protocol):
    """Started containers for sessions; each container goes to one session only."""

    @property
    def spec(self) -> ContainerSpec:
        """How this source's containers are made (image, runtime, limits)."""
        ...

    async def acquire(self, labels: Mapping[str, str] | None = None) -> SandboxContainer:
        """A started container, handshake done, now the caller's to remove.

        ``labels`` go on a container started for this call (a pre-started one
        keeps the labels it was made with). Raises SandboxUnavailable with what to do.
        """
        ...


class ColdStart:
    """A :class:`ContainerSource` that starts a fresh container on every acquire.

    Without ``docker_client`` it opens its own engine connection on first use (off
    the event loop, from ``DOCKER_HOST`` and friends) and closes it in :meth:`aclose`;
    a client passed in stays the caller's to close.
    """

    def __init__(
        self,
        spec: ContainerSpec | None = None,
        *,
        docker_client: DockerClient | None = None,
        max_message: int = protocol.DEFAULT_MAX_MESSAGE,
    ) -> None:
        self.spec = spec or ContainerSpec()
        self.max_message = max_message
        self.client = docker_client
        self._owns_client = docker_client is None

    async def connect(self) -> DockerClient:
        """The engine client, opened now if it is not yet."""
        if self.client is None:
            client = await anyio.to_thread.run_sync(connect)
            if self.client is None:
                self.client = client
            else:  # another task connected while this one waited
                client.close()
        return self.client

    async def acquire(self, labels: Mapping[str, str] | None = None) -> SandboxContainer:
        client = await self.connect()
        return await launch(client, self.spec, labels=labels, max_message=self.max_message)

    async def aclose(self) -> None:
        """Close the engine connection if this source opened it; safe to call twice."""
        if self._owns_client and self.client is not None:
            client, self.client = self.client, None
            client.close()
