"""Starting restricted worker processes, and the frames to and from one.

A worker (:mod:`.worker`) starts with an empty environment, in its own session,
with no descriptor but its stdin and stdout (the protocol's pipes) and stderr on
/dev/null. One started worker per set of limits is kept ready (:class:`_Spares`):
the interpreter's start and imports take a few hundred milliseconds, which a
session then does not wait for. A spare has run nothing: it waits, confined, for
its first ``hello``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from typing import Any

import anyio
from rlm_sandbox import protocol

from rlm.backends.inbox import MAX_VALUES, Inbox
from rlm.backends.restricted.confine import Limits


class WorkerGone(Exception):
    """The worker's end of the pipes closed (it died or was killed)."""


def _command(limits: Limits) -> list[str]:
    return [
        sys.executable,
        "-I",
        "-m",
        "rlm.backends.restricted.worker",
        json.dumps(limits.to_json()),
    ]


def spawn(limits: Limits) -> subprocess.Popen[bytes]:
    """A new worker: empty environment, only the protocol's pipes, its own session."""
    proc = subprocess.Popen(
        _command(limits),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={},
        cwd="/",
        close_fds=True,
        start_new_session=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    os.set_blocking(proc.stdin.fileno(), False)
    os.set_blocking(proc.stdout.fileno(), False)
    return proc


class Spares:
    """One started worker kept ready per set of limits: it hides the interpreter's start.

    A spare has run nothing; it only waits, confined, for its first ``hello``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: dict[str, subprocess.Popen[bytes]] = {}

    def take(self, limits: Limits) -> subprocess.Popen[bytes]:
        """A started worker for ``limits`` (the spare if it is alive); a new spare follows."""
        key = json.dumps(limits.to_json(), sort_keys=True)
        with self._lock:
            proc = self._ready.pop(key, None)
        if proc is None or proc.poll() is not None:
            if proc is not None:
                _reap(proc)
            proc = spawn(limits)
        with self._lock:
            if key not in self._ready:
                self._ready[key] = spawn(limits)
        return proc

    def drop(self) -> None:
        with self._lock:
            procs = list(self._ready.values())
            self._ready.clear()
        for proc in procs:
            kill(proc)


SPARES = Spares()


def drop_spares() -> None:
    """Kill the workers kept ready (at exit; tests that count child processes)."""
    SPARES.drop()


def kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        proc.kill()
    _reap(proc)


def _reap(proc: subprocess.Popen[bytes]) -> None:
    for stream in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError):
            if stream is not None:
                stream.close()
    with contextlib.suppress(Exception):
        proc.wait(timeout=5)


class Pipes:
    """Frames to and from one worker over its stdin and stdout."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self._out = proc.stdin.fileno()
        self._in = proc.stdout.fileno()
        self._messages = Inbox(self._fill, self._refuse, max_values=MAX_VALUES)
        self._send_lock = anyio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            with anyio.CancelScope(shield=True):
                try:
                    for chunk in protocol.encode(message):
                        view = memoryview(chunk)
                        while view:
                            try:
                                view = view[os.write(self._out, view) :]
                            except BlockingIOError:
                                with anyio.fail_after(60):
                                    await anyio.wait_writable(self._out)
                except (OSError, TimeoutError) as exc:
                    raise WorkerGone(f"sending to the worker failed: {exc}") from None

    async def receive(self) -> dict[str, Any]:
        return await self._messages.receive()

    async def _refuse(self, call_id: int, why: str) -> None:
        await self.send({"type": "refused", "id": call_id, "message": why})

    async def _fill(self) -> None:
        while self._messages.empty:
            try:
                data = os.read(self._in, 1 << 20)
            except BlockingIOError:
                await anyio.wait_readable(self._in)
                continue
            except OSError as exc:
                raise WorkerGone(f"reading from the worker failed: {exc}") from None
            if not data:
                raise WorkerGone("the worker closed its output")
            self._messages.feed(data)
