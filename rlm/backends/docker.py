"""The Docker backend: each session's code runs in its own hardened container.

The container has no network, a read-only root, a small size-capped tmpfs at /tmp,
no capabilities, no-new-privileges, a non-root user, pids/memory/CPU limits, the
default seccomp profile and an empty environment. The host talks to the runner
(``rlm_sandbox``) over the container process's own stdin/stdout through Docker's
attach socket, so the same code works with runc, with gVisor (runsc) and with a
remote engine (``DOCKER_HOST=tcp://...``).

Everything the container sends is untrusted: each frame is size-checked and each
message validated (:mod:`rlm_sandbox.protocol`) before it is acted upon, and a
violation stops that session's container with :class:`~rlm.errors.ProtocolError`.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import ssl
import struct
import time
import uuid
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel
from rlm_sandbox import protocol

from rlm.backends.base import CellResult, Sandbox
from rlm.errors import (
    BridgeRefusal,
    ProtocolError,
    SandboxError,
    SandboxUnavailable,
    VariableNotFound,
)

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

    from rlm.backends.pool import ContainerPool
    from rlm.bridge import SessionBridge
    from rlm.config import RLMConfig

log = logging.getLogger(__name__)

#: Label on every sandbox container (``rlm doctor --cleanup`` finds them by it).
LABEL = "rlm.sandbox"
#: ``host:pid`` of the process that created the container.
OWNER_LABEL = "rlm.owner"
#: Image label holding the hash of the runner sources it was built with.
RUNNER_LABEL = "rlm.sandbox.runner"
SANDBOX_UID = "10001:10001"

# Docker acts on its detach key sequence even in a binary attach stream; the
# protocol never sends control characters, so control keys can never match.
_DETACH_KEYS = "ctrl-^,ctrl-_"
_STREAM_HEADER = struct.Struct(">BxxxL")
_STDERR_KEEP = 4096
_HANDSHAKE_TIMEOUT = 60.0
_SEND_TIMEOUT = 60.0
_VARIABLE_TIMEOUT = 30.0
_MAX_OPEN_CALLS = 256
_MAX_VARIABLE_CHARS = 8_000_000
_OWNER = f"{socket.gethostname()}:{os.getpid()}"


def _client(docker_client: Any = None) -> docker.DockerClient:
    if docker_client is not None:
        return docker_client
    import docker

    # from_env honours DOCKER_HOST / DOCKER_TLS_VERIFY / DOCKER_CERT_PATH.
    return docker.from_env(timeout=120)


def _engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


@dataclass(frozen=True)
class ContainerSpec:
    """How sandbox containers are made; one spec per pool.

    ``memory`` defaults to 2g (swap included, so no swap): chunking a 100 MB context
    in model code (lines, chunks, prompts, the batch in flight) peaks near 1 GB.
    """

    image: str = "rlm-sandbox:latest"
    runtime: str = "runc"
    memory: str = "2g"
    pids: int = 128
    cpus: float = 1.0
    tmpfs_size: str = "64m"

    def create_kwargs(self, name: str, labels: dict[str, str]) -> dict[str, Any]:
        from docker.types import LogConfig, Ulimit

        return {
            "image": self.image,
            "name": name,
            "detach": True,
            "stdin_open": True,
            "tty": False,
            "runtime": self.runtime,
            "network_mode": "none",
            "read_only": True,
            "tmpfs": {"/tmp": f"rw,nosuid,nodev,noexec,size={self.tmpfs_size},mode=1777"},
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
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


class _Gone(Exception):
    """The container's end of the channel closed (the container died)."""


class Channel:
    """Frames over one Docker attach socket: demultiplex, decode, validate."""

    def __init__(self, sock: Any, *, max_message: int = protocol.DEFAULT_MAX_MESSAGE) -> None:
        self._keep = sock  # the SocketIO/response keep the connection alive
        raw = getattr(sock, "_sock", sock)
        if not isinstance(raw, socket.socket):
            raise SandboxUnavailable(
                f"this Docker connection ({_engine_address()}) gives no raw socket for attach; "
                "use a unix:// or tcp:// DOCKER_HOST"
            )
        self.sock: socket.socket = raw
        self.sock.setblocking(False)
        self._raw = bytearray()
        self._decoder = protocol.Decoder(max_message=max_message)
        self._ready: list[bytes] = []
        self.stderr = bytearray()
        self._send_lock = anyio.Lock()
        self.closed = False

    async def send(self, message: dict[str, Any]) -> None:
        """Send one message whole; never leaves half a frame on the wire."""
        if self.closed:
            raise _Gone("the channel is closed")
        async with self._send_lock:
            try:
                with anyio.CancelScope(shield=True), anyio.fail_after(_SEND_TIMEOUT):
                    for chunk in protocol.encode(message):
                        view = memoryview(chunk)
                        while view:
                            try:
                                view = view[self.sock.send(view) :]
                            except (BlockingIOError, ssl.SSLWantWriteError):
                                await anyio.wait_writable(self.sock)
            except TimeoutError:
                self.closed = True  # half a frame may be on the wire
                raise _Gone(f"the sandbox read nothing for {_SEND_TIMEOUT:g} s") from None
            except OSError as exc:
                self.closed = True
                raise _Gone(f"send failed: {exc}") from None

    async def receive(self) -> dict[str, Any]:
        """The next message; cancelling it loses nothing already received."""
        while not self._ready:
            try:
                data = self.sock.recv(1 << 20)
            except (BlockingIOError, ssl.SSLWantReadError):
                await anyio.wait_readable(self.sock)
                continue
            except OSError as exc:
                raise _Gone(f"receive failed: {exc}") from None
            if not data:
                raise _Gone("the container closed its output")
            self._demux(data)
        try:
            return protocol.parse(self._ready.pop(0), protocol.FROM_SANDBOX)
        except protocol.ProtocolViolation as exc:
            raise ProtocolError(str(exc)) from None

    def _demux(self, data: bytes) -> None:
        # Docker multiplexes stdout and stderr: 8-byte header (stream, size) per chunk.
        self._raw += data
        pos = 0
        raw = self._raw
        try:
            while len(raw) - pos >= _STREAM_HEADER.size:
                stream, size = _STREAM_HEADER.unpack_from(raw, pos)
                if len(raw) - pos - _STREAM_HEADER.size < size:
                    break
                start = pos + _STREAM_HEADER.size
                chunk = bytes(raw[start : start + size])
                pos = start + size
                if stream == 1:
                    try:
                        self._ready.extend(self._decoder.feed(chunk))
                    except protocol.ProtocolViolation as exc:
                        raise ProtocolError(str(exc)) from None
                elif stream == 2:
                    self.stderr += chunk
                    del self.stderr[:-_STDERR_KEEP]
        finally:
            del raw[:pos]

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return
        self.closed = True
        for closer in (self.sock.close, getattr(self._keep, "close", None)):
            try:
                if closer is not None:
                    closer()
            except OSError:
                pass


@dataclass(eq=False)
class SandboxContainer:
    """A started container with its channel, handshake done, ready for one session."""

    client: Any
    container: Container
    channel: Channel
    spec: ContainerSpec
    python: str = ""
    created: float = field(default_factory=time.monotonic)
    _finalizer: Any = None

    def __post_init__(self) -> None:
        # Removes the container if the process exits without close() (Ctrl-C in a
        # sync caller, an interpreter shutdown): a best-effort net under close().
        self._finalizer = weakref.finalize(self, _remove_quietly, self.client, self.container.id)

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
        try:
            data = self.channel.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, ssl.SSLWantReadError):
            return True
        except OSError:
            return False
        # EOF, or bytes while idle (a late message is fine: the next read sees it).
        return bool(data)

    async def inspect_state(self) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            try:
                return dict(self.client.api.inspect_container(self.id).get("State") or {})
            except Exception as exc:
                return {"Error": str(exc)}

        with anyio.CancelScope(shield=True):
            return await anyio.to_thread.run_sync(read)


def _remove_quietly(client: Any, container_id: str) -> None:
    try:
        client.api.remove_container(container_id, force=True)
    except Exception as exc:
        if "No such container" not in str(exc) and "is already in progress" not in str(exc):
            log.warning("could not remove sandbox container %s: %s", container_id[:12], exc)


async def launch(
    client: Any,
    spec: ContainerSpec,
    *,
    labels: dict[str, str] | None = None,
    max_message: int = protocol.DEFAULT_MAX_MESSAGE,
) -> SandboxContainer:
    """Create, attach, start and handshake one container (removed again on failure)."""
    import docker.errors

    name = f"rlm-sandbox-{uuid.uuid4().hex[:12]}"
    all_labels = {LABEL: "1", OWNER_LABEL: _OWNER, **(labels or {})}

    def create() -> Any:
        return client.containers.create(**spec.create_kwargs(name, all_labels))

    try:
        # Shielded: a cancellation (Ctrl-C) that lands while the engine creates the
        # container must not lose the only handle to it; the checkpoint below then
        # raises it, and the cleanup further down removes the container.
        with anyio.CancelScope(shield=True):
            container = await anyio.to_thread.run_sync(create)
    except docker.errors.ImageNotFound:
        raise SandboxUnavailable(
            f"image {spec.image} not found; run `rlm image build` (or `rlm image build --offline`)"
        ) from None
    except docker.errors.APIError as exc:
        raise SandboxUnavailable(_explain_api_error(exc, spec)) from None
    except docker.errors.DockerException as exc:
        raise SandboxUnavailable(
            f"Docker engine not reachable at {_engine_address()} ({exc}); "
            "start it (scripts/setup-docker.sh) or use --backend restricted"
        ) from None
    box: SandboxContainer | None = None
    try:
        await anyio.lowlevel.checkpoint()

        def attach_and_start() -> Any:
            sock = client.api.attach_socket(
                container.id,
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
        except docker.errors.APIError as exc:
            raise SandboxUnavailable(_explain_api_error(exc, spec)) from None
        box = SandboxContainer(client, container, Channel(sock, max_message=max_message), spec)
        await box.channel.send({"type": "hello", "protocol": protocol.PROTOCOL_VERSION})
        with anyio.move_on_after(_HANDSHAKE_TIMEOUT):
            hello = None
            try:
                hello = await box.channel.receive()
            except _Gone as exc:
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
                await anyio.to_thread.run_sync(_remove_quietly, client, container.id)
        raise


def _explain_api_error(exc: Exception, spec: ContainerSpec) -> str:
    text = str(exc)
    if "unknown or invalid runtime" in text or ("runtime" in text and spec.runtime in text):
        return (
            f"Docker has no runtime {spec.runtime!r} ({text[:200]}); for gVisor run "
            "scripts/setup-docker.sh (it registers runsc), or use --runtime runc"
        )
    return f"Docker refused to run the sandbox container: {text[:300]}"


class DockerSandbox(Sandbox):
    """One session's sandbox: a container of its own, replaced if it dies.

    Cells that overrun ``timeout`` are interrupted (SIGINT inside the runner) and
    keep their state; a cell that will not stop, or a container that dies, costs a
    fresh container with the context reloaded, and the cell's result says the
    variables were lost.
    """

    def __init__(
        self,
        bridge: SessionBridge,
        *,
        output_limit: int = 100_000,
        image: str = "rlm-sandbox:latest",
        runtime: str = "runc",
        memory: str = "2g",
        pids: int = 128,
        cpus: float = 1.0,
        tmpfs_size: str = "64m",
        docker_client: Any = None,
        pool: ContainerPool | None = None,
        interrupt_grace: float = 2.0,
        max_message: int = protocol.DEFAULT_MAX_MESSAGE,
    ) -> None:
        super().__init__(bridge, output_limit=output_limit)
        self.pool = pool
        self.spec = (
            pool.spec
            if pool is not None
            else ContainerSpec(image, runtime, memory, pids, cpus, tmpfs_size)
        )
        self.name = f"docker:{self.spec.runtime}"
        self.interrupt_grace = interrupt_grace
        self.max_message = max_message
        self._client_arg = docker_client if pool is None else pool.client
        self._client: Any = None
        self._box: SandboxContainer | None = None
        self._context: Any = None
        self._has_context = False
        self._ids = itertools.count(1)
        self._broken: str | None = None
        self._closed = False
        #: Containers this session has used (the first plus any restarts).
        self.containers_started = 0

    @property
    def container_id(self) -> str | None:
        return self._box.id if self._box is not None else None

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        if self._closed:
            raise SandboxError("this sandbox was closed; create a new one")
        if self._box is None:
            await self._new_container()

    async def _new_container(self) -> None:
        labels = {"rlm.session": self.bridge.session.session_id}
        box: SandboxContainer | None = None
        if self.pool is not None:
            box = await self.pool.acquire()
        else:
            if self._client is None:
                self._client = await anyio.to_thread.run_sync(_client, self._client_arg)
            box = await launch(self._client, self.spec, labels=labels, max_message=self.max_message)
        self._box = box
        self.containers_started += 1
        self.bridge.session.event("sandbox_started", backend=self.name, container=box.id[:12])

    async def _discard(self) -> None:
        box, self._box = self._box, None
        if box is not None:
            await box.remove()

    async def close(self) -> None:
        self._closed = True
        await self._discard()

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise ProtocolError(self._broken)
        if self._closed:
            raise SandboxError("this sandbox was closed; create a new one")

    async def _fail(self, exc: ProtocolError) -> ProtocolError:
        self._broken = (
            f"the sandbox broke the wire protocol ({exc}); its container was stopped "
            "and this session cannot run more code -- start a new session"
        )
        log.warning("session %s: %s", self.bridge.session.session_id, self._broken)
        await self._discard()
        return ProtocolError(self._broken)

    async def _ready_box(self) -> tuple[SandboxContainer, bool]:
        """The live container, starting a fresh one (context reloaded) if needed."""
        self._check_usable()
        fresh = False
        if self._box is None:
            await self._new_container()
            fresh = True
            if self._has_context:
                await self._send_context()
        assert self._box is not None
        return self._box, fresh

    # -- requests --------------------------------------------------------------

    async def load_context(self, context: Any) -> None:
        self._check_usable()
        if not isinstance(context, (str, list, dict)):
            raise TypeError(f"context must be a str, list or dict, not {type(context).__name__}")
        self._context, self._has_context = context, True
        if self._box is None:
            await self._ready_box()  # loads it
        else:
            await self._send_context()

    async def _send_context(self) -> None:
        box = self._box
        assert box is not None
        req = next(self._ids)
        try:
            await box.channel.send({"type": "load_context", "id": req, "context": self._context})
            reply = await self._await_reply(box, req, "loaded", timeout=None)
        except ProtocolError as exc:
            raise await self._fail(exc) from None
        except _Gone as exc:
            cause = await self._death_cause(box, exc)
            await self._discard()
            raise SandboxError(f"the sandbox died while loading the context: {cause}") from None
        except BaseException:
            # Cancelled mid-load: a late "loaded" would confuse the next request.
            await self._discard()
            raise
        del reply

    async def get_variable(self, name: str) -> str:
        box, fresh = await self._ready_box()
        if fresh:
            raise VariableNotFound(f"variable {name!r} was lost when the sandbox restarted")
        req = next(self._ids)
        try:
            await box.channel.send(
                {"type": "get_variable", "id": req, "name": name, "max_chars": _MAX_VARIABLE_CHARS}
            )
            reply = await self._await_reply(box, req, "variable", timeout=_VARIABLE_TIMEOUT)
        except ProtocolError as exc:
            raise await self._fail(exc) from None
        except _Gone as exc:
            cause = await self._death_cause(box, exc)
            await self._discard()
            raise VariableNotFound(
                f"variable {name!r} is lost: the sandbox died ({cause})"
            ) from None
        except TimeoutError:
            await self._discard()
            raise VariableNotFound(
                f"variable {name!r} could not be read: the sandbox stopped answering "
                "and was restarted"
            ) from None
        except BaseException:
            await self._discard()
            raise
        if not reply["found"]:
            raise VariableNotFound(f"no variable named {name!r} in the sandbox")
        value = str(reply["value"])
        if reply["truncated"]:
            value += f"\n... [value truncated at {_MAX_VARIABLE_CHARS:,} characters]"
        return value

    async def _await_reply(
        self, box: SandboxContainer, req: int, kind: str, timeout: float | None
    ) -> dict[str, Any]:
        with anyio.fail_after(timeout):
            while True:
                message = await box.channel.receive()
                if message["type"] == "call":
                    await self._refuse_outside_cell(box, message)
                    continue
                if message["type"] == "fatal":
                    raise _Gone(f"runner failed: {message['message'][:300]}")
                if message["type"] != kind or message["id"] != req:
                    raise ProtocolError(
                        f"unexpected {message['type']} message (waiting for {kind})"
                    )
                return message

    async def _refuse_outside_cell(self, box: SandboxContainer, message: dict[str, Any]) -> None:
        await box.channel.send(
            {
                "type": "refused",
                "id": message["id"],
                "message": "sub-calls can only be made while a cell is running",
            }
        )

    async def execute(self, code: str, timeout: float) -> CellResult:
        if not isinstance(code, str):
            return CellResult(error="TypeError: a cell must be a str of Python code")
        started = time.monotonic()
        notice = ""
        if self._box is not None and not self._box.alive():
            # It died between cells (killed from outside, or a leftover thread ran it
            # out of memory): run this cell in a fresh one and say what was lost.
            dead = self._box
            cause = await self._death_cause(dead, _Gone("found dead before the cell"))
            await self._discard()
            notice = (
                f"[sandbox] the sandbox container had died since the last cell ({cause}); "
                "this cell ran in a fresh one: every variable except `context` is lost.\n"
            )
        box, _ = await self._ready_box()
        cell = next(self._ids)
        try:
            message, timed_out = await self._run_cell(box, cell, code, timeout)
        except ProtocolError as exc:
            raise await self._fail(exc) from None
        except _Gone as exc:
            cause = await self._death_cause(box, exc)
            await self._discard()
            return CellResult(
                error=(
                    f"SandboxDied: the sandbox container died while running this cell: "
                    f"{cause}. A fresh sandbox will run the next cell; every variable "
                    "except `context` is lost."
                ),
                duration_s=time.monotonic() - started,
                state_lost=True,
            )
        except BaseException:
            # Cancelled (Ctrl-C) or an unexpected failure mid-cell: the container's
            # state is unknown, so it must not be used again.
            await self._discard()
            raise
        duration = time.monotonic() - started
        if message is None:
            await self._discard()
            await self._ready_box()
            return CellResult(
                error=(
                    f"TimeoutError: the cell ran over its {timeout:g} s limit and did not stop "
                    "when interrupted, so the sandbox was restarted: every variable except "
                    "`context` is lost. Make cells shorter or process the data in pieces."
                ),
                timed_out=True,
                duration_s=duration,
                state_lost=True,
            )
        stdout, cut_out = _cap(message["stdout"], self.output_limit)
        stderr, cut_err = _cap(message["stderr"], self.output_limit)
        error = message["error"]
        if timed_out:
            error = (
                f"TimeoutError: the cell ran over its {timeout:g} s limit and was interrupted; "
                "variables are kept (anything the cell did before it stopped stays done)."
                + (f"\n{error}" if error else "")
            )
        return CellResult(
            stdout=stdout,
            stderr=notice + stderr,
            error=error,
            timed_out=timed_out,
            duration_s=duration,
            truncated=message["truncated"] or cut_out or cut_err,
            state_lost=bool(notice),
        )

    async def _run_cell(
        self, box: SandboxContainer, cell: int, code: str, timeout: float
    ) -> tuple[dict[str, Any] | None, bool]:
        result: dict[str, Any] | None = None
        timed_out = False
        open_calls: set[int] = set()
        failures: list[Exception] = []
        # Failures are carried out of the task group by hand so callers see the
        # exception itself, not an ExceptionGroup around it.
        async with anyio.create_task_group() as calls:
            try:
                await box.channel.send(
                    {"type": "execute", "id": cell, "code": code, "output_limit": self.output_limit}
                )
                with anyio.move_on_after(timeout):
                    result = await self._pump(box, cell, calls, open_calls, failures)
                if result is None and not failures:
                    timed_out = True
                    await box.channel.send({"type": "interrupt", "id": cell})
                    with anyio.move_on_after(self.interrupt_grace):
                        result = await self._pump(box, cell, calls, open_calls, failures)
            except (_Gone, ProtocolError) as exc:
                failures.append(exc)
            calls.cancel_scope.cancel()
        if failures:
            raise failures[0]
        return result, timed_out

    async def _pump(
        self,
        box: SandboxContainer,
        cell: int,
        calls: anyio.abc.TaskGroup,
        open_calls: set[int],
        failures: list[Exception],
    ) -> dict[str, Any] | None:
        while not failures:
            message = await box.channel.receive()
            kind = message["type"]
            if kind == "result":
                if message["id"] != cell:
                    raise ProtocolError(f"result for cell {message['id']} while cell {cell} runs")
                return message
            if kind == "call":
                call_id = message["id"]
                if call_id in open_calls:
                    raise ProtocolError(f"sub-call id {call_id} reused while still open")
                if len(open_calls) >= _MAX_OPEN_CALLS:
                    await box.channel.send(
                        {
                            "type": "refused",
                            "id": call_id,
                            "message": f"more than {_MAX_OPEN_CALLS} sub-calls at once; "
                            "use llm_batch for many prompts",
                        }
                    )
                    continue
                open_calls.add(call_id)
                calls.start_soon(self._serve_call, box, message, open_calls, failures, calls)
            elif kind == "fatal":
                raise _Gone(f"runner failed: {message['message'][:300]}")
            else:
                raise ProtocolError(f"unexpected {kind} message while a cell runs")
        return None

    async def _serve_call(
        self,
        box: SandboxContainer,
        message: dict[str, Any],
        open_calls: set[int],
        failures: list[Exception],
        calls: anyio.abc.TaskGroup,
    ) -> None:
        call_id = message["id"]
        try:
            try:
                value = await self.bridge.call(message["method"], message["params"])
                reply: dict[str, Any] = {"type": "reply", "id": call_id, "result": value}
            except BridgeRefusal as exc:
                reply = {"type": "refused", "id": call_id, "message": str(exc)}
            except Exception:
                # The model's code sees that the call failed, never why inside the host.
                log.exception("sub-call %s failed inside the host", message["method"])
                reply = {
                    "type": "refused",
                    "id": call_id,
                    "message": "the host could not complete this sub-call (internal error)",
                }
            await box.channel.send(reply)
        except _Gone as exc:
            failures.append(exc)
            calls.cancel_scope.cancel()
        finally:
            open_calls.discard(call_id)

    async def _death_cause(self, box: SandboxContainer, exc: Exception) -> str:
        state = await box.inspect_state()
        tail = bytes(box.channel.stderr).decode("utf-8", "replace").strip()[-300:]
        return describe_exit(state, self.spec, detail=str(exc), stderr=tail)


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


def _cap(text: str, limit: int) -> tuple[str, bool]:
    # The runner caps output already; the host does not trust that it did.
    marker = "\n... [output truncated"
    if len(text) <= limit + 80:
        return text, False
    return text[:limit] + f"{marker}: {len(text) - limit:,} more characters]", True


# -- checks for the CLI ----------------------------------------------------------------


def unavailable_reason(config: RLMConfig) -> str | None:
    """``None`` when Docker can run sandboxes for ``config``, else what is missing and
    what to do about it (one line)."""
    import docker.errors

    try:
        client = docker.from_env(timeout=5)
        client.ping()
    except Exception as exc:
        return (
            f"Docker engine not reachable at {_engine_address()} ({_short(exc)}); "
            "start it (scripts/setup-docker.sh) or use --backend restricted"
        )
    try:
        try:
            client.images.get(config.image)
        except docker.errors.ImageNotFound:
            return (
                f"image {config.image} not found; run `rlm image build` "
                "(or `rlm image build --offline`)"
            )
        if config.docker_runtime != "runc":
            runtimes = client.info().get("Runtimes") or {}
            if config.docker_runtime not in runtimes:
                return (
                    f"Docker runtime {config.docker_runtime!r} is not registered "
                    "(run scripts/setup-docker.sh to add gVisor's runsc), or use --runtime runc"
                )
    except Exception as exc:
        return f"Docker engine error: {_short(exc)}"
    finally:
        client.close()
    return None


def doctor_checks(config: RLMConfig) -> list[tuple[str, bool, str]]:
    """``(check, ok, detail or what to do)`` for engine, image, runc and gVisor."""
    from rlm.image import image_status

    try:
        client = _client()
        version = client.version()
    except Exception as exc:
        return [
            (
                "docker engine",
                False,
                f"not reachable at {_engine_address()} ({_short(exc)}); "
                "run scripts/setup-docker.sh or start dockerd",
            )
        ]
    checks: list[tuple[str, bool, str]] = [
        (
            "docker engine",
            True,
            f"{version.get('Version', '?')} at {_engine_address()}",
        )
    ]
    try:
        ok, detail = image_status(config.image, client)
        checks.append(("sandbox image", ok, detail))
        if ok:
            runtimes = client.info().get("Runtimes") or {}
            for runtime, label in (("runc", "runc"), ("runsc", "gVisor (runsc)")):
                if runtime not in runtimes:
                    checks.append(
                        (label, False, "not registered with Docker; run scripts/setup-docker.sh")
                    )
                    continue
                checks.append((label, *_smoke_test(client, config.image, runtime)))
    finally:
        client.close()
    return checks


def _smoke_test(client: Any, image: str, runtime: str) -> tuple[bool, str]:
    async def probe() -> str:
        started = time.monotonic()
        box = await launch(client, ContainerSpec(image=image, runtime=runtime))
        try:
            return f"sandbox starts in {time.monotonic() - started:.2f} s (Python {box.python})"
        finally:
            await box.remove()

    try:
        return True, anyio.run(probe)
    except Exception as exc:
        return False, _short(exc, 300)


def cleanup_leftovers(client: Any = None, *, everything: bool = False) -> int:
    """Remove sandbox containers left behind by a crashed rlm; returns how many.

    A container is a leftover when it is not running, or when the process that
    made it (``rlm.owner`` label) is gone from this host. A container its live
    owner is still starting ("created") is not: removing it would kill another
    process's session as it starts. ``everything=True`` removes every sandbox
    container, including live sessions'.
    """
    client = _client(client)
    host = socket.gethostname()
    removed = 0
    for item in client.api.containers(all=True, filters={"label": f"{LABEL}=1"}):
        owner = (item.get("Labels") or {}).get(OWNER_LABEL, "")
        in_use = item.get("State") in ("running", "created")
        if not everything and in_use and _owner_alive(owner, host):
            continue
        _remove_quietly(client, item["Id"])
        removed += 1
    return removed


def _owner_alive(owner: str, host: str) -> bool:
    owner_host, _, pid = owner.rpartition(":")
    if owner_host != host or not pid.isdigit():
        return owner_host != host  # another machine's session: not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _short(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:limit]
