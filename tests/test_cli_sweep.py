"""`rlm run` removes the sandbox containers of rlm processes that are gone, and only
those: a live process's and another host's are left alone."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlm.backends.docker import LABEL, OWNER_LABEL
from rlm.demo import make_haystack
from rlm.testing import OfflineModelServer
from tests.cli_support import model_env, rlm
from tests.support import IMAGE

pytestmark = pytest.mark.docker


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: nothing answers to this pid any more
    return child.pid


@pytest.fixture
def labelled(docker_client: Any) -> Iterator[Any]:
    """Makes running containers labelled as rlm sandboxes of a given owner."""
    made: list[Any] = []

    def make(owner: str, *, stopped: bool = False) -> Any:
        container = docker_client.containers.run(
            IMAGE,
            entrypoint=["true"] if stopped else ["sleep", "300"],
            labels={LABEL: "1", OWNER_LABEL: owner},
            network_disabled=True,
            detach=True,
        )
        made.append(container)
        return container

    yield make
    for container in made:
        # The sweep may have removed it already, as it should have.
        with contextlib.suppress(Exception):
            container.remove(force=True)


def _exists(docker_client: Any, container: Any) -> bool:
    return bool(docker_client.containers.list(all=True, filters={"id": container.id}))


def test_run_sweeps_leftovers_of_dead_processes_only(
    docker_client: Any, labelled: Any, server: OfflineModelServer, tmp_path: Path
) -> None:
    host = socket.gethostname()
    dead = labelled(f"{host}:{_dead_pid()}")
    live = labelled(f"{host}:{os.getpid()}")  # this test process: alive
    elsewhere = labelled("another-host.example:1")  # not ours to judge
    stopped = labelled(f"{host}:{os.getpid()}", stopped=True)  # exited: a session no more
    stopped.wait(timeout=30)
    haystack = make_haystack(500)
    context = tmp_path / "c.txt"
    context.write_text(haystack.text)
    proc = rlm(
        "run",
        "--context",
        str(context),
        "--query",
        haystack.query,
        "--backend",
        "docker",
        env=model_env(server),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == haystack.answer
    assert "leftover sandbox container(s) of ended runs" in proc.stderr
    assert not _exists(docker_client, dead) and not _exists(docker_client, stopped)
    assert _exists(docker_client, live) and _exists(docker_client, elsewhere)
    live.reload()
    assert live.status == "running"


def test_a_failed_sweep_is_one_line_and_not_the_runs_failure(
    server: OfflineModelServer, tmp_path: Path
) -> None:
    context = tmp_path / "c.txt"
    context.write_text("the code is 7")
    nowhere = {**model_env(server), "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    proc = rlm("run", "--context", str(context), "--query", "q", "--backend", "docker", env=nowhere)
    lines = proc.stderr.splitlines()
    assert sum("could not sweep leftover sandbox containers" in line for line in lines) == 1
    # The run went on, and failed for its own reason: no engine for its sandbox.
    assert proc.returncode == 6, proc.stderr
    assert "Traceback" not in proc.stderr
    # With `auto` the run goes to the restricted backend, and the sweep says nothing.
    auto = rlm("run", "--context", str(context), "--query", "q", "--backend", "auto", env=nowhere)
    assert auto.returncode == 0, auto.stderr
    assert "could not sweep" not in auto.stderr
