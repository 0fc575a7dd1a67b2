"""A sandbox's life is tied to its host's: nothing is left running when the host goes.

The host here is a real process (or a real attach socket) and the kill a real
SIGKILL; "gone" means the engine has no trace of the container (``docker ps -a``).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from rlm.backends.docker import (
    LABEL,
    OWNER_LABEL,
    ContainerPool,
    ContainerSpec,
    describe_exit,
    launch,
    sweep_orphans,
)
from tests.support import IMAGE

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
GONE_WITHIN = 10.0

# A host process: starts a sandbox, prints its container id, runs one busy cell.
HOST = r"""
import sys

import anyio

from rlm.backends.docker import ColdStart, ContainerSpec, DockerSandbox
from tests.support import FakeBatcher, make_bridge


class SlowBatcher(FakeBatcher):
    async def run(self, session, model, prompts, max_concurrent, *, on_result=None):
        print("batching", flush=True)
        await anyio.sleep(3600)


async def main(image: str, runtime: str, code: str) -> None:
    spec = ContainerSpec(image=image, runtime=runtime)
    box = DockerSandbox(make_bridge(SlowBatcher()), spec=spec)
    await box.start()
    print(box.container_id, flush=True)
    await box.execute(code, 3600)


anyio.run(main, *sys.argv[1:])
"""

BUSY_CELLS = {
    "loop": ("n = 0\nwhile True:\n    n += 1", None),
    "sleep": ("import time\ntime.sleep(3600)", None),
    "llm_batch": ("llm_batch(['never answered', 'nor this'])", "batching"),
}


def _exists(docker_client: Any, container_id: str) -> bool:
    return bool(docker_client.api.containers(all=True, filters={"id": container_id}))


def _seconds_until_gone(docker_client: Any, container_id: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < GONE_WITHIN:
        if not _exists(docker_client, container_id):
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"container {container_id[:12]} still there after {GONE_WITHIN:g} s")


def _read_line(proc: subprocess.Popen[str], timeout: float = 60.0) -> str:
    assert proc.stdout is not None
    with _Deadline(timeout):
        line = proc.stdout.readline()
    if not line:
        assert proc.stderr is not None
        raise AssertionError(f"the host process ended early: {proc.stderr.read()[-2000:]}")
    return line.strip()


class _Deadline:
    """Kills the read with SIGALRM if the host process hangs (never in a passing run)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __enter__(self) -> None:
        def expire(signum: int, frame: Any) -> None:
            raise TimeoutError("the host process printed nothing")

        signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def __exit__(self, *exc: object) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


@pytest.mark.parametrize("cell", sorted(BUSY_CELLS))
def test_a_killed_hosts_container_is_gone(
    runtime: str, cell: str, docker_client: Any, record_property: Any
) -> None:
    code, ready = BUSY_CELLS[cell]
    proc = subprocess.Popen(
        [sys.executable, "-c", HOST, IMAGE, runtime, code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    container_id = ""
    try:
        container_id = _read_line(proc)
        if ready is not None:
            assert _read_line(proc) == ready
        else:
            time.sleep(0.5)  # the cell is running by now
        assert docker_client.api.inspect_container(container_id)["State"]["Running"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        took = _seconds_until_gone(docker_client, container_id)
        record_property("seconds_until_gone", round(took, 2))
        print(f"\n{runtime} {cell}: gone {took:.2f} s after SIGKILL")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        if container_id and _exists(docker_client, container_id):
            docker_client.api.remove_container(container_id, force=True)


async def test_a_closed_attach_socket_ends_the_container(
    runtime: str, docker_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # The engine connection lost: the host's end of the attach socket closes, and
    # nobody is left to remove the container.
    box = await launch(docker_client, ContainerSpec(image=IMAGE, runtime=runtime))
    try:
        sleep = "import time\ntime.sleep(3600)"
        await box.channel.send(
            {"type": "execute", "id": 1, "code": sleep, "output_limit": 10, "final_limit": 10}
        )
        await anyio.sleep(0.3)
        box.channel.close()
        took = await anyio.to_thread.run_sync(_seconds_until_gone, docker_client, box.id)
        print(f"\n{runtime}: gone {took:.2f} s after the attach socket closed")
    finally:
        with caplog.at_level(logging.WARNING, logger="rlm"):
            await box.remove()  # the container removed itself: nothing to say
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_stopped_container_removes_itself_and_removal_stays_quiet(
    docker_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    box = await launch(docker_client, ContainerSpec(image=IMAGE))
    attrs = docker_client.api.inspect_container(box.id)
    assert attrs["Config"]["StdinOnce"] is True
    assert attrs["HostConfig"]["AutoRemove"] is True
    with caplog.at_level(logging.WARNING, logger="rlm"):
        # Removal racing the engine's own auto-removal.
        await anyio.to_thread.run_sync(docker_client.api.kill, box.id)
        await box.remove()
        await box.remove()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    await anyio.to_thread.run_sync(_seconds_until_gone, docker_client, box.id)


async def test_the_exit_is_known_after_the_container_removed_itself(
    runtime: str, docker_client: Any
) -> None:
    box = await launch(docker_client, ContainerSpec(image=IMAGE, runtime=runtime))
    try:
        await anyio.to_thread.run_sync(docker_client.api.kill, box.id)
        await anyio.to_thread.run_sync(_seconds_until_gone, docker_client, box.id)
        state = await box.inspect_state()
        assert state.get("ExitCode") == 137, state
        assert state.get("Running") is False
    finally:
        await box.remove()


async def test_an_out_of_memory_kill_is_known_after_the_container_removed_itself(
    docker_client: Any,
) -> None:
    # runc only: under gVisor the engine flags out-of-memory kills only some of the
    # time, and describe_exit names both causes for a plain exit 137 there.
    spec = ContainerSpec(image=IMAGE, memory="96m")
    box = await launch(docker_client, spec)
    try:
        hog = "hog = bytearray(300 * 1024 * 1024)"
        await box.channel.send(
            {"type": "execute", "id": 1, "code": hog, "output_limit": 10, "final_limit": 10}
        )
        await anyio.to_thread.run_sync(_seconds_until_gone, docker_client, box.id)
        state = await box.inspect_state()
        assert state.get("OOMKilled") is True, state
        assert "out of memory (limit 96m)" in describe_exit(state, spec)
    finally:
        await box.remove()


async def test_the_pools_sweep_removes_orphans_only(docker_client: Any) -> None:
    spec = ContainerSpec(image=IMAGE)
    host = socket.gethostname()
    dead = 999_999_999  # above any pid_max: never a live process
    orphan = await launch(docker_client, spec, labels={OWNER_LABEL: f"{host}:{dead}"})
    live = await launch(docker_client, spec)  # this process's own
    elsewhere = await launch(
        docker_client, spec, labels={OWNER_LABEL: f"not-{host}.example:{dead}"}
    )
    try:
        async with ContainerPool(spec, size=0, docker_client=docker_client):
            ids = {c["Id"] for c in docker_client.api.containers(all=True)}
            assert orphan.id not in ids
            assert live.id in ids
            assert elsewhere.id in ids
        # The same sweep, by its public name, finds nothing more of these three.
        await anyio.to_thread.run_sync(sweep_orphans, docker_client)
        ids = {c["Id"] for c in docker_client.api.containers(all=True, filters={"label": LABEL})}
        assert {live.id, elsewhere.id} <= ids
    finally:
        for box in (orphan, live, elsewhere):
            await box.remove()
