"""Sandboxes placed across two real Docker engines: the machine's own, and a second
``dockerd`` on loopback TCP that the tests start, stop and start again.

Placement is least loaded first; an engine that fails a health check or a
container start is drained and comes back when a check passes; ``rlm serve`` with
two ``[[engines]]`` runs its runs on both and reports them on ``/healthz``.
"""

from __future__ import annotations

import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from rlm.backends.docker import LABEL, ContainerSpec, SandboxContainer
from rlm.errors import SandboxUnavailable
from rlm.service.engines import Placement
from rlm.service.settings import Engine
from rlm.testing import OfflineModelServer
from tests.engines import SecondEngine, make_certs, running_engine
from tests.service.api_support import SCRIPTS, Service, config_text, wait_status
from tests.support import IMAGE

pytestmark = pytest.mark.docker

LOCAL = Engine(url="unix:///var/run/docker.sock")


@pytest.fixture(scope="module")
def second_engine(docker_client: Any) -> Iterator[SecondEngine]:
    with running_engine(docker_client, IMAGE) as engine:
        yield engine


def _tagged(client: Any, tag: str) -> int:
    """Sandbox containers on an engine that carry this test's tag."""
    return len(client.api.containers(all=True, filters={"label": [LABEL, f"rlm.test={tag}"]}))


def _placement(second: SecondEngine, **kwargs: Any) -> Placement:
    remote = Engine(url=second.url, insecure_plaintext=True, **kwargs)
    return Placement(ContainerSpec(image=IMAGE), [LOCAL, remote], pool_size=0, room_wait_s=0.5)


async def test_sandboxes_go_to_the_least_loaded_engine(
    docker_client: Any, second_engine: SecondEngine
) -> None:
    tag = secrets.token_hex(4)
    labels = {"rlm.test": tag}
    async with _placement(second_engine) as placement:
        local, remote = placement.slots
        assert local.healthy and remote.healthy
        boxes = [await placement.acquire(labels) for _ in range(4)]
        try:
            assert (local.live, remote.live) == (2, 2)
            with second_engine.client() as client:
                assert _tagged(client, tag) == 2
            assert _tagged(docker_client, tag) == 2
            # A session on the second engine ends: the next sandbox goes there.
            on_remote = [b for b in boxes if b.client is remote.client]
            await on_remote[0].remove()
            boxes.remove(on_remote[0])
            assert (local.live, remote.live) == (2, 1)
            boxes.append(await placement.acquire(labels))
            assert (local.live, remote.live) == (2, 2)
            assert (local.placed, remote.placed) == (2, 3)
            stats = {s["engine"]: s for s in placement.stats()}
            assert stats[second_engine.url]["live_sandboxes"] == 2
        finally:
            await _remove(boxes)


async def test_sandboxes_started_at_once_spread_out(second_engine: SecondEngine) -> None:
    # Cold starts take a while: the engine chosen for the first must count as
    # loaded while it starts, or every run starting at once lands on one engine.
    async with _placement(second_engine) as placement:
        boxes: list[SandboxContainer] = []

        async def start() -> None:
            boxes.append(await placement.acquire())

        async with anyio.create_task_group() as tasks:
            for _ in range(4):
                tasks.start_soon(start)
        try:
            assert [slot.live for slot in placement.slots] == [2, 2]
        finally:
            await _remove(boxes)


async def test_an_engine_at_max_sandboxes_gets_no_more(second_engine: SecondEngine) -> None:
    async with _placement(second_engine, max_sandboxes=1) as placement:
        local, remote = placement.slots
        boxes = [await placement.acquire() for _ in range(3)]
        try:
            assert (local.live, remote.live) == (2, 1)
        finally:
            await _remove(boxes)


async def test_every_engine_full_waits_then_says_so() -> None:
    engine = Engine(url=LOCAL.url, max_sandboxes=1)
    async with Placement(
        ContainerSpec(image=IMAGE), [engine], pool_size=0, room_wait_s=0.5
    ) as placement:
        box = await placement.acquire()
        try:
            with pytest.raises(SandboxUnavailable, match="at its max_sandboxes"):
                await placement.acquire()
        finally:
            await box.remove()
        # Room again once the first session has ended.
        await (await placement.acquire()).remove()


async def test_every_shape_shares_an_engines_max_sandboxes() -> None:
    # Two sandbox shapes on one engine: its bound counts them together (a placement
    # per shape would each have allowed max_sandboxes), and it is checked once.
    small, large = ContainerSpec(image=IMAGE), ContainerSpec(image=IMAGE, memory="768m")
    engine = Engine(url=LOCAL.url, max_sandboxes=2)
    async with Placement([small, large], [engine], pool_size=0, room_wait_s=0.5) as placement:
        (slot,) = placement.slots
        boxes = [await placement.acquire(spec=small), await placement.source(large).acquire()]
        try:
            assert [box.spec for box in boxes] == [small, large]
            assert slot.live == 2 and placement.stats()[0]["live_sandboxes"] == 2
            for spec in (small, large):
                with pytest.raises(SandboxUnavailable, match="at its max_sandboxes"):
                    await placement.acquire(spec=spec)
        finally:
            await _remove(boxes)
        with pytest.raises(ValueError, match="several shapes"):
            await placement.acquire()
        with pytest.raises(ValueError, match="no pools"):
            placement.source(ContainerSpec(image=IMAGE, memory="1g"))


async def test_a_failing_engine_is_drained_and_comes_back(
    docker_client: Any, second_engine: SecondEngine
) -> None:
    tag = secrets.token_hex(4)
    async with _placement(second_engine) as placement:
        local, remote = placement.slots
        second_engine.stop()
        try:
            # No check has run yet: the failed start drains it, and the sandbox is
            # placed on the other engine instead of failing the run.
            boxes = [await placement.acquire({"rlm.test": tag}) for _ in range(2)]
            assert not remote.healthy and "could not start a sandbox" in (remote.error or "")
            assert (local.live, remote.live) == (2, 0)
            assert _tagged(docker_client, tag) == 2
            await _remove(boxes)
            # The health check keeps it drained while it is down...
            await placement.check()
            assert not remote.healthy and remote.error is not None
            assert remote.error.startswith("health check")
        finally:
            second_engine.start()
        # ...and brings it back once it answers again.
        await placement.check()
        assert remote.healthy and remote.error is None
        boxes = [await placement.acquire({"rlm.test": tag}) for _ in range(2)]
        try:
            assert (local.live, remote.live) == (1, 1)
        finally:
            await _remove(boxes)


async def test_no_engine_left_says_which_and_why(second_engine: SecondEngine) -> None:
    remote = Engine(url=second_engine.url, insecure_plaintext=True)
    placement = Placement(ContainerSpec(image=IMAGE), [remote], pool_size=0)
    async with placement:
        second_engine.stop()
        try:
            await placement.check()
            with pytest.raises(SandboxUnavailable) as caught:
                await placement.acquire()
        finally:
            second_engine.start()
    message = str(caught.value)
    assert second_engine.url in message and "health check" in message
    assert "/healthz" in message


async def test_an_engine_down_at_start_is_connected_when_it_comes_up() -> None:
    port_engine = SecondEngine()
    try:
        remote = Engine(url=port_engine.url, insecure_plaintext=True)
        placement = Placement(
            ContainerSpec(image=IMAGE), [LOCAL, remote], pool_size=0, check_interval_s=0.2
        )
        async with placement:
            _, slot = placement.slots
            assert not slot.healthy and "cannot connect" in (slot.error or "")
            await anyio.to_thread.run_sync(port_engine.start)
            for _ in range(300):  # its own task retries every check interval
                if slot.healthy:
                    break
                await anyio.sleep(0.1)
            assert slot.healthy and list(slot.pools) == placement.specs
    finally:
        port_engine.close()


async def test_an_engine_over_verified_tls_and_one_with_a_wrong_ca(
    docker_client: Any, tmp_path: Path
) -> None:
    engine = SecondEngine(tls=True)
    try:
        engine.start()
        engine.load_image(docker_client, IMAGE)
        certs = engine.certs
        good = Engine(
            url=engine.url,
            ca_cert=str(certs / "ca.pem"),
            client_cert=str(certs / "cert.pem"),
            client_key=str(certs / "key.pem"),
        )
        make_certs(tmp_path / "other")
        wrong = Engine(
            url=engine.url,
            ca_cert=str(tmp_path / "other" / "ca.pem"),
            client_cert=str(tmp_path / "other" / "cert.pem"),
            client_key=str(tmp_path / "other" / "key.pem"),
        )
        async with Placement(ContainerSpec(image=IMAGE), [good], pool_size=0) as placement:
            (slot,) = placement.slots
            assert slot.healthy
            box = await placement.acquire()
            try:
                assert box.alive()  # the handshake went over the TLS channel
            finally:
                await box.remove()
        async with Placement(ContainerSpec(image=IMAGE), [wrong], pool_size=0) as placement:
            (slot,) = placement.slots
            assert not slot.healthy
            assert "certificate verify failed" in (slot.error or "")
            with pytest.raises(SandboxUnavailable, match="certificate verify failed"):
                await placement.acquire()
    finally:
        engine.close()


def test_a_plain_tcp_engine_is_refused_unless_marked_insecure() -> None:
    from rlm.errors import ConfigurationError

    placement = Placement(ContainerSpec(image=IMAGE), [Engine(url="tcp://127.0.0.1:9")])
    with pytest.raises(ConfigurationError, match="insecure_plaintext = true"):
        anyio.run(placement.__aenter__)


def test_rlm_serve_places_runs_on_both_engines(
    docker_client: Any, second_engine: SecondEngine, tmp_path: Path
) -> None:
    folder = tmp_path / "docker"
    folder.mkdir()
    engines = f"""
[[engines]]
url = "{LOCAL.url}"

[[engines]]
url = "{second_engine.url}"
insecure_plaintext = true
"""
    with OfflineModelServer(scripts=SCRIPTS) as model_server:
        service = Service(folder, model_server, str(folder / "rlm.db"))
        service.config.write_text(config_text(str(folder / "rlm.db"), docker=True) + engines)
        service.start()
        try:
            with service.client() as http:
                health = http.get("/healthz").json()
                assert health["status"] == "ok"
                assert [e["engine"] for e in health["engines"]] == [LOCAL.url, second_engine.url]
                assert all(e["healthy"] for e in health["engines"])
                ids = []
                for _ in range(2):
                    reply = http.post("/v1/runs", json={"profile": "slow", "query": "q"})
                    assert reply.status_code == 202, reply.text
                    ids.append(reply.json()["id"])
                for run_id in ids:
                    wait_status(http, run_id, {"running"})
                deadline = time.monotonic() + 30
                while True:
                    engines = http.get("/healthz").json()["engines"]
                    if [e["live_sandboxes"] for e in engines] == [1, 1]:
                        break
                    assert time.monotonic() < deadline, engines
                    time.sleep(0.1)
                for run_id in ids:
                    assert http.delete(f"/v1/runs/{run_id}").status_code == 200
                    wait_status(http, run_id, {"cancelled"})
        finally:
            assert service.stop(signal.SIGTERM) == 0


async def _remove(boxes: list[SandboxContainer]) -> None:
    for box in boxes:
        await box.remove()
