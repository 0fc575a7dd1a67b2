"""The Docker backend against a second engine reached over TCP on 127.0.0.1.

The fixture starts a separate ``dockerd`` (own data root, exec root, pid file and
containerd namespace; no iptables) listening on loopback TCP, loads the
sandbox image into it with save/load, and stops it afterwards. This is the
``DOCKER_HOST=tcp://...`` case, where a bind-mounted socket or a published port
could not work but the attach channel does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlm.backends.docker import LABEL, ColdStart, ContainerSpec, DockerSandbox, unavailable_reason
from rlm.config import RLMConfig
from tests.engines import SecondEngine
from tests.support import IMAGE, FakeBatcher, make_bridge

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def remote_engine(docker_client: Any) -> Iterator[tuple[Any, str]]:
    had_docker0 = Path("/sys/class/net/docker0").exists()
    engine = SecondEngine()
    try:
        engine.start()
        engine.load_image(docker_client, IMAGE)
        with engine.client() as client:
            yield client, engine.url
    finally:
        engine.close()
    assert Path("/sys/class/net/docker0").exists() == had_docker0, "the main engine's bridge"


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
async def test_a_session_runs_on_the_remote_engine(
    runtime: str, remote_engine: tuple[Any, str], docker_client: Any
) -> None:
    client, _ = remote_engine
    batcher = FakeBatcher()
    spec = ContainerSpec(image=IMAGE, runtime=runtime)
    box = DockerSandbox(
        make_bridge(batcher), ColdStart(spec, docker_client=client), output_limit=5000
    )
    try:
        await box.start()
        await box.load_context("remote context " * 100_000)
        ids_remote = [c["Id"] for c in client.api.containers()]
        ids_local = [c["Id"] for c in docker_client.api.containers()]
        assert box.container_id in ids_remote
        assert box.container_id not in ids_local
        result = await box.execute(
            "print(len(context), llm_query('via tcp'), llm_batch(['a', 'b']))\n"
            "lines = open('/proc/net/dev').read().splitlines()[2:]\n"
            "print(sorted(line.split(':')[0].strip() for line in lines))",
            30,
        )
        assert result.error is None, result.error
        assert result.stdout == "1500000 echo:via tcp ['echo:a', 'echo:b']\n['lo']\n"
        stopped = await box.execute("import time\ntime.sleep(30)", 1.0)
        assert stopped.timed_out and not stopped.state_lost
        assert (await box.execute("print(len(context))", 10)).stdout == "1500000\n"
    finally:
        await box.close()
    assert not client.api.containers(all=True, filters={"label": f"{LABEL}=1"})


async def test_docker_host_is_honoured(
    remote_engine: tuple[Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, url = remote_engine
    monkeypatch.setenv("DOCKER_HOST", url)
    assert unavailable_reason(RLMConfig(image=IMAGE)) is None
    # No client given: the sandbox connects to DOCKER_HOST itself.
    box = DockerSandbox(make_bridge(), spec=ContainerSpec(image=IMAGE))
    try:
        await box.start()
        assert box.container_id in [c["Id"] for c in client.api.containers()]
        assert (await box.execute("print(6 * 7)", 10)).stdout == "42\n"
    finally:
        await box.close()
    assert os.environ["DOCKER_HOST"] == url
