"""The Docker backend against a second engine reached over TCP on 127.0.0.1.

The fixture starts a separate ``dockerd`` (own data root, exec root, pid file and
containerd namespace; no iptables) listening on loopback TCP, loads the
sandbox image into it with save/load, and stops it afterwards. This is the
``DOCKER_HOST=tcp://...`` case, where a bind-mounted socket or a published port
could not work but the attach channel does.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlm.backends.docker import LABEL, ColdStart, ContainerSpec, DockerSandbox, unavailable_reason
from rlm.config import RLMConfig
from tests.support import IMAGE, FakeBatcher, make_bridge

pytestmark = pytest.mark.docker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def remote_engine(docker_client: Any) -> Iterator[tuple[Any, str]]:
    import docker

    dockerd = shutil.which("dockerd")
    if dockerd is None:
        pytest.fail("dockerd is not installed; run scripts/setup-docker.sh", pytrace=False)
    # Short paths: containerd's socket lives under the exec root (108-byte limit).
    root = Path(tempfile.mkdtemp(prefix="rlmd-", dir="/tmp"))
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    config = {"runtimes": {"runsc": {"path": shutil.which("runsc") or "runsc"}}}
    config["runtimes"]["runsc"]["runtimeArgs"] = ["--network=none"]
    (root / "daemon.json").write_text(json.dumps(config))
    # A bridge of its own: with --bridge=none, dockerd deletes the host's docker0,
    # which belongs to the main engine. The address is from the benchmarking range
    # (198.18.0.0/15) so it clashes with nothing; no container ever uses it.
    had_docker0 = Path("/sys/class/net/docker0").exists()
    bridge = "rlmt" + secrets.token_hex(3)
    subprocess.run(["ip", "link", "add", "name", bridge, "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", "198.18.213.1/30", "dev", bridge], check=True)
    log = open(root / "dockerd.log", "wb")  # noqa: SIM115 -- closed in teardown
    proc = subprocess.Popen(
        [
            dockerd,
            f"--host={url}",
            f"--data-root={root / 'd'}",
            f"--exec-root={root / 'e'}",
            f"--pidfile={root / 'dockerd.pid'}",
            f"--config-file={root / 'daemon.json'}",
            "--containerd-namespace=rlmtest",
            "--containerd-plugins-namespace=rlmtest-plugins",
            f"--bridge={bridge}",
            "--iptables=false",
            "--ip-masq=false",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    client: Any = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client = docker.DockerClient(base_url=url, timeout=120)
                client.ping()
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        "second dockerd did not start:\n"
                        + (root / "dockerd.log").read_text(errors="replace")[-2000:],
                        pytrace=False,
                    )
                time.sleep(0.3)
        tarball = root / "image.tar"
        with tarball.open("wb") as f:
            for chunk in docker_client.images.get(IMAGE).save(named=True):
                f.write(chunk)
        with tarball.open("rb") as f:
            client.images.load(f.read())
        tarball.unlink()
        yield client, url
    finally:
        if client is not None:
            try:
                for c in client.api.containers(all=True, filters={"label": f"{LABEL}=1"}):
                    client.api.remove_container(c["Id"], force=True)
            except Exception:
                pass
            client.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        subprocess.run(["ip", "link", "del", bridge], check=False)
        shutil.rmtree(root, ignore_errors=True)
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
