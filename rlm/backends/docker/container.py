"""Sandbox containers: how they are made, started, handed over and removed.

The container has no network, a read-only root, a small size-capped tmpfs at /tmp,
no capabilities, no-new-privileges, a non-root user, pids/memory/CPU limits, rlm's
own seccomp allow-list (``seccomp.json``, tighter than Docker's default) and an empty
environment. The host talks to the runner
(``rlm_sandbox``) over the container process's own stdin/stdout through Docker's
attach socket, so the same code works with runc, with gVisor (runsc) and with a
remote engine (``DOCKER_HOST=tcp://...``).
"""

from __future__ import annotations

import functools
import importlib.resources
import itertools
import json
import logging
import os
import socket
import ssl
import time
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.lowlevel
from rlm_sandbox import protocol

from rlm.backends.docker.channel import Channel, ContainerGone
from rlm.backends.docker.engine import engine_address
from rlm.config import DEFAULT_CPUS, DEFAULT_MEMORY, DEFAULT_RUNTIME, RLMConfig
from rlm.errors import ProtocolError, SandboxUnavailable
from rlm.image import DEFAULT_IMAGE

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

log = logging.getLogger(__name__)

#: Label on every sandbox container (``rlm doctor --cleanup`` finds them by it).
LABEL = "rlm.sandbox"
#: ``host:pid`` of the process that created the container.
OWNER_LABEL = "rlm.owner"
#: This process's value of :data:`OWNER_LABEL`.
OWNER = f"{socket.gethostname()}:{os.getpid()}"
SANDBOX_UID = "10001:10001"

# Docker acts on its detach key sequence even in a binary attach stream; the
# protocol never sends control characters, so control keys can never match.
_DETACH_KEYS = "ctrl-^,ctrl-_"
_HANDSHAKE_TIMEOUT = 60.0
_REMOVAL_WAIT = 30

#: ``ContainerSpec.seccomp`` values: rlm's allow-list, or the engine's default profile.
SECCOMP_PROFILES = ("rlm", "default")


@functools.cache
def seccomp_profile() -> str:
    """rlm's seccomp profile (package data ``seccomp.json``) as compact JSON.

    An allow-list of what the runner and Python's standard library use; everything
    else fails with EPERM. It is what ``security_opt`` carries to the engine.
    """
    text = importlib.resources.files("rlm.backends.docker").joinpath("seccomp.json").read_text()
    return json.dumps(json.loads(text), separators=(",", ":"))


@dataclass(frozen=True)
class ContainerSpec:
    """How sandbox containers are made; one spec per pool.

    The defaults are :class:`~rlm.config.RLMConfig`'s (``memory`` includes swap).
    """

    image: str = DEFAULT_IMAGE
    runtime: str = DEFAULT_RUNTIME
    memory: str = DEFAULT_MEMORY
    pids: int = 128
    cpus: float = DEFAULT_CPUS
    tmpfs_size: str = "64m"
    #: ``"rlm"``: the allow-list shipped in the package (:func:`seccomp_profile`);
    #: ``"default"``: the engine's own default profile (for comparisons only).
    seccomp: str = "rlm"

    def __post_init__(self) -> None:
        if self.seccomp not in SECCOMP_PROFILES:
            raise ValueError(f"seccomp must be one of {SECCOMP_PROFILES}, not {self.seccomp!r}")

    @classmethod
    def from_config(cls, config: RLMConfig) -> ContainerSpec:
        """The image, runtime and limits ``config`` asks for."""
        return cls(
            image=config.image,
            runtime=config.docker_runtime,
            memory=config.docker_memory,
            cpus=config.docker_cpus,
        )

    def security_opt(self) -> list[str]:
        """``no-new-privileges`` and, unless ``seccomp="default"``, rlm's profile."""
        opts = ["no-new-privileges:true"]
        if self.seccomp == "rlm":
            opts.append(f"seccomp={seccomp_profile()}")
        return opts

    def create_kwargs(self, name: str, labels: dict[str, str]) -> dict[str, Any]:
        from docker.types import LogConfig, Ulimit

        return {
            "image": self.image,
            "name": name,
            # Not detached: that is how the SDK sets StdinOnce, so the engine closes
            # the runner's stdin when the host's attach connection ends for any
            # reason (the host killed, its socket closed, the engine connection
            # lost); the runner then exits, and nothing is left running.
            "detach": False,
            "stdin_open": True,
            # A stopped container removes itself: a host that dies before it can
            # remove its containers leaves no trace behind.
            "auto_remove": True,
            "tty": False,
            "runtime": self.runtime,
            "network_mode": "none",
            "read_only": True,
            "tmpfs": {"/tmp": f"rw,nosuid,nodev,noexec,size={self.tmpfs_size},mode=1777"},
            "cap_drop": ["ALL"],
            "security_opt": self.security_opt(),
            "user": SANDBOX_UID,
            "working_dir": "/tmp",
            "pids_limit": self.pids,
            "mem_limit": self.memory,
            "memswap_limit": self.memory,
            "nano_cpus": int(self.cpus * 1e9),
            "ulimits": [Ulimit(name="core", soft=0, hard=0)],
            "environment": {},
            "hostname": "sandbox",
            "ipc_mode": "private",
            # Attach still works without a log driver; logging would copy every
            # protocol byte (a 100 MB context) to the engine's disk.
            "log_config": LogConfig(type=LogConfig.types.NONE),
            "labels": labels,
        }


def unavailable(exc: Exception, spec: ContainerSpec) -> SandboxUnavailable:
    """What an error from the Docker SDK means for running ``spec``, and what to do.

    A missing image, an engine that refuses the container (an unknown runtime, ...)
    and anything else (the engine cannot be reached) each get their own advice.
    """
    import docker.errors

    if isinstance(exc, docker.errors.ImageNotFound):
        return SandboxUnavailable(
            f"image {spec.image} not found; run `rlm image build` (or `rlm image build --offline`)"
        )
    if isinstance(exc, docker.errors.APIError):
        text = str(exc)
        if "unknown or invalid runtime" in text or ("runtime" in text and spec.runtime in text):
            return SandboxUnavailable(
                f"Docker has no runtime {spec.runtime!r} ({text[:200]}); for gVisor run "
                "scripts/setup-docker.sh (it registers runsc), or use --runtime runc"
            )
        return SandboxUnavailable(f"Docker refused to run the sandbox container: {text[:300]}")
    return SandboxUnavailable(unreachable(str(exc)))


def unreachable(detail: str) -> str:
    """The engine cannot be reached (``detail`` says how it failed): what to do."""
    return (
        f"Docker engine not reachable at {engine_address()} ({detail}); "
        "start it (scripts/setup-docker.sh) or use --backend restricted"
    )


@dataclass(eq=False)
class SandboxContainer:
    """A started container with its channel, handshake done, ready for one session."""

    client: DockerClient
    container: Container
    channel: Channel
    spec: ContainerSpec
    python: str = ""
    created: float = field(default_factory=time.monotonic)
    _finalizer: Any = None

    def __post_init__(self) -> None:
        # Removes the container if the process exits without close() (Ctrl-C in a
        # sync caller, an interpreter shutdown): a best-effort net under close().
        self._finalizer = weakref.finalize(self, remove_quietly, self.client, self.id)

    @property
    def id(self) -> str:
        return str(self.container.id)

    async def remove(self) -> None:
        """Kill and remove the container; safe to call twice, survives cancellation."""
        self.channel.close()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._finalizer)

    def alive(self) -> bool:
        """True if the channel is open and the runner has sent nothing unasked."""
        if self.channel.closed:
            return False
        sock = self.channel.sock
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True  # decrypted bytes already wait to be read
        try:
            # Peek at the TCP bytes themselves: an SSLSocket (a TLS engine) refuses
            # recv flags, and peeking below TLS takes nothing the TLS layer needs.
            data = socket.socket.recv(sock, 1, socket.MSG_PEEK)
        except (BlockingIOError, ssl.SSLWantReadError):
            return True
        except OSError:
            return False
        # EOF, or bytes while idle (a late message is fine: the next read sees it).
        return bool(data)

    async def inspect_state(self) -> dict[str, Any]:
        """The container's ``State`` (``ExitCode``, ``OOMKilled``, ...), even once it
        has removed itself; ``{"Error": ...}`` when neither source knows."""
        with anyio.CancelScope(shield=True):
            state = await anyio.to_thread.run_sync(exit_state, self.client, self.id)
        return state


def exit_state(client: DockerClient, container_id: str) -> dict[str, Any]:
    """``State`` of a container from inspect, or from the engine's event log if the
    container is already gone (auto-removed as it stopped).

    Blocking: call it off the event loop.
    """
    try:
        return dict(client.api.inspect_container(container_id).get("State") or {})
    except Exception as exc:
        error = str(exc)
    if "No such container" not in error:
        return {"Error": error}
    # The engine emits "oom" and "die" before the auto-removal's "destroy", so a
    # container that is gone has them in the log (a ring of recent events).
    state: dict[str, Any] = {"Error": error}
    try:
        # The engine takes fractional seconds for `until`; the SDK's types say int.
        events = cast(Any, client).events(
            since=1,
            until=_engine_now(client),
            filters={"container": container_id},
            decode=True,
        )
        for event in events:
            action = str(event.get("Action") or event.get("status") or "")
            if action == "oom":
                state["OOMKilled"] = True
            elif action == "die":
                attributes = (event.get("Actor") or {}).get("Attributes") or {}
                code = str(attributes.get("exitCode", ""))
                if code.lstrip("-").isdigit():
                    state.pop("Error", None)
                    state.update(Running=False, ExitCode=int(code))
    except Exception as exc:
        state["Error"] = f"{error}; its events could not be read: {exc}"
    return state


def _engine_now(client: DockerClient) -> str:
    # The engine's clock, not this host's: with a remote engine the two may differ,
    # and an `until` before the engine's "die" would miss it.
    now = time.time()
    try:
        stamp = str(client.info().get("SystemTime") or "")
        head, dot, rest = stamp.partition(".")
        fraction = "".join(itertools.takewhile(str.isdigit, rest))
        zone = rest[len(fraction) :]
        when = datetime.fromisoformat(head + (zone.replace("Z", "+00:00") or "+00:00"))
        now = when.timestamp() + (float("0." + fraction) if dot and fraction else 0.0)
    except Exception:
        pass
    return f"{now:.9f}"


def remove_quietly(client: DockerClient, container_id: str) -> None:
    """Force-remove a container and return once it is gone; logs (never raises)
    unless it is already gone or going."""
    try:
        client.api.remove_container(container_id, force=True)
        return
    except Exception as exc:
        if "No such container" in str(exc):
            return
        if "is already in progress" not in str(exc):
            log.warning("could not remove sandbox container %s: %s", container_id[:12], exc)
            return
    # The engine is removing it already (it stopped, and removes itself): wait, so
    # that "removed" means gone for the caller too.
    try:
        client.api.wait(container_id, timeout=_REMOVAL_WAIT, condition="removed")
    except Exception as exc:
        if "No such container" not in str(exc):
            log.warning("sandbox container %s is still being removed: %s", container_id[:12], exc)


async def launch(
    client: DockerClient,
    spec: ContainerSpec,
    *,
    labels: Mapping[str, str] | None = None,
    max_message: int = protocol.DEFAULT_MAX_MESSAGE,
) -> SandboxContainer:
    """Create, attach, start and handshake one container (removed again on failure)."""
    import docker.errors
    import requests.exceptions

    name = f"rlm-sandbox-{uuid.uuid4().hex[:12]}"
    all_labels = {LABEL: "1", OWNER_LABEL: OWNER, **(labels or {})}

    def create() -> Container:
        return client.containers.create(**spec.create_kwargs(name, all_labels))

    try:
        # Shielded: a cancellation (Ctrl-C) that lands while the engine creates the
        # container must not lose the only handle to it; the checkpoint below then
        # raises it, and the cleanup further down removes the container.
        with anyio.CancelScope(shield=True):
            container = await anyio.to_thread.run_sync(create)
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        # The SDK lets the transport's errors through: an engine that is down or
        # unreachable is a RequestException (ConnectionError), not a DockerException.
        raise unavailable(exc, spec) from None
    box: SandboxContainer | None = None
    try:
        await anyio.lowlevel.checkpoint()

        def attach_and_start() -> Any:
            sock = client.api.attach_socket(
                str(container.id),
                params={
                    "stdin": 1,
                    "stdout": 1,
                    "stderr": 1,
                    "stream": 1,
                    "detachKeys": _DETACH_KEYS,
                },
            )
            container.start()
            return sock

        try:
            sock = await anyio.to_thread.run_sync(attach_and_start)
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            raise unavailable(exc, spec) from None
        box = SandboxContainer(client, container, Channel(sock, max_message=max_message), spec)
        await box.channel.send({"type": "hello", "protocol": protocol.PROTOCOL_VERSION})
        with anyio.move_on_after(_HANDSHAKE_TIMEOUT):
            hello = None
            try:
                hello = await box.channel.receive()
            except ContainerGone as exc:
                state = await box.inspect_state()
                tail = bytes(box.channel.stderr).decode("utf-8", "replace").strip()
                raise SandboxUnavailable(
                    f"the sandbox container exited during start-up ({exc}; exit code "
                    f"{state.get('ExitCode')}): {tail[-500:] or 'no output'}; "
                    "rebuild the image with `rlm image build`"
                ) from None
        if hello is None:
            raise SandboxUnavailable(
                f"the sandbox container did not answer within {_HANDSHAKE_TIMEOUT:g} s; "
                f"check the engine (`docker info`) and the image ({spec.image})"
            )
        if hello["type"] != "hello":
            raise ProtocolError(f"expected hello from the sandbox, got {hello['type']}")
        if hello["protocol"] != protocol.PROTOCOL_VERSION:
            raise SandboxUnavailable(
                f"image {spec.image} speaks protocol {hello['protocol']}, this rlm speaks "
                f"{protocol.PROTOCOL_VERSION}; rebuild it with `rlm image build`"
            )
        box.python = hello["python"][:40]
        return box
    except BaseException:
        if box is not None:
            await box.remove()
        else:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(remove_quietly, client, str(container.id))
        raise


def describe_exit(
    state: dict[str, Any], spec: ContainerSpec, *, detail: str = "", stderr: str = ""
) -> str:
    """Why a container stopped, in words a model (and a user) can act on."""
    code = state.get("ExitCode")
    if state.get("OOMKilled"):
        return (
            f"it ran out of memory (limit {spec.memory}) and was killed; "
            "hold less data at once, e.g. process the context in chunks"
        )
    if state.get("Running"):
        return f"its channel broke ({detail}) while it was still running"
    if code == 137 and spec.runtime == "runsc":
        # Under gVisor the engine flags an out-of-memory kill only some of the time
        # (seen in CI: a 400 MB allocation under a 192 MB limit came back as plain
        # exit 137), so both causes are named.
        return (
            "it was killed (SIGKILL, exit 137): under gVisor the engine does not always "
            f"flag out-of-memory kills, so it either ran out of memory (limit {spec.memory}) "
            "or was killed from outside the sandbox; if it was memory, hold less data at once"
        )
    if code == 137:
        return "it was killed (SIGKILL, exit 137), e.g. from outside the sandbox or for memory"
    if code is None:
        return f"it is gone ({state.get('Error') or detail})"
    extra = f"; last output: {stderr}" if stderr else ""
    if spec.runtime == "runsc" and code not in (0, 1):
        # gVisor's own host threads count against the container's limits, so a
        # fork/thread bomb ends the whole sandbox instead of failing in the code.
        extra += (
            f"; under gVisor this usually means the sandbox hit its pids ({spec.pids}) "
            f"or memory ({spec.memory}) limit"
        )
    return f"its process exited with code {code}{extra}"
