"""Run slots shared by the tenants of one replica: bounded, and handed out fairly."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from rlm.service.slots import FairSlots
from rlm.testing import OfflineModelServer
from tests.service.api_support import (
    SCRIPTS,
    Service,
    slow_calls,
    wait_for_the_slow_sub_call,
    wait_status,
)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_free_slot_goes_to_the_waiting_tenant_with_the_fewest_runs_going() -> None:
    slots = FairSlots(2)
    await slots.acquire("flood")
    await slots.acquire("flood")
    order: list[str] = []

    async def wait(tenant: str) -> None:
        await slots.acquire(tenant)
        order.append(tenant)

    flood = [asyncio.create_task(wait("flood")) for _ in range(3)]
    await _settle()
    good = asyncio.create_task(wait("good"))  # asks last, after three of the flood's
    await _settle()
    assert (slots.taken, slots.waiting, order) == (2, 4, [])
    slots.release("flood")
    await _settle()
    assert order == ["good"]  # good has 0 going, flood 1: good first
    slots.release("flood")
    await _settle()
    assert order == ["good", "flood"]  # then the flood's, oldest first
    assert slots.running == {"good": 1, "flood": 1}
    for task in flood:
        task.cancel()
    await asyncio.gather(*flood, good, return_exceptions=True)
    assert slots.waiting == 0 and slots.running == {"good": 1, "flood": 1}


async def test_a_flood_never_holds_more_than_its_share_while_others_run() -> None:
    slots = FairSlots(6)
    for tenant in ("good-1", "good-1", "good-2", "good-2"):
        await slots.acquire(tenant)
    flood = [asyncio.create_task(slots.acquire("flood")) for _ in range(6)]
    await _settle()
    # Three tenants share 6 slots: the flood gets its 2, and its other runs wait.
    assert slots.running["flood"] == 2 and slots.waiting == 4
    # A good run ends: its slot stays free for the good tenant's next run...
    slots.release("good-1")
    await _settle()
    assert slots.running["flood"] == 2 and slots.taken == 5
    await asyncio.wait_for(slots.acquire("good-1"), 1)  # ...which takes it at once
    assert slots.running == {"good-1": 2, "good-2": 2, "flood": 2}
    # The good tenants leave: the flood, alone, may use every slot.
    for tenant in ("good-1", "good-1", "good-2", "good-2"):
        slots.release(tenant)
    await _settle()
    assert slots.running == {"flood": 6} and slots.waiting == 0
    await asyncio.gather(*flood)


async def test_a_cancelled_wait_gives_up_its_place_or_its_slot() -> None:
    slots = FairSlots(1)
    await slots.acquire("a")
    waiting = asyncio.create_task(slots.acquire("b"))
    await _settle()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert slots.waiting == 0
    # Granted and cancelled in the same step: the slot comes back.
    granted = asyncio.create_task(slots.acquire("b"))
    await _settle()
    slots.release("a")
    granted.cancel()
    with pytest.raises(asyncio.CancelledError):
        await granted
    assert slots.taken == 0 and slots.waiting == 0
    await slots.acquire("c")
    assert slots.running == {"c": 1}


async def test_no_size_means_no_bound() -> None:
    slots = FairSlots(None)
    for _ in range(1000):
        await slots.acquire("a")
    assert slots.taken == 1000 and slots.waiting == 0


def test_rlm_serve_queues_runs_over_its_slots_and_starts_them_as_slots_free(
    tmp_path: Path,
) -> None:
    with OfflineModelServer(scripts=SCRIPTS) as model_server:
        service = Service(tmp_path, model_server, str(tmp_path / "rlm.db"))
        one_slot = "[server]\nmax_concurrent_runs = 1\n"
        service.config.write_text(service.config.read_text().replace("[server]\n", one_slot))
        service.start()
        try:
            with service.client() as acme, service.client("globex") as globex:
                before = slow_calls(model_server)
                slow = acme.post("/v1/runs", json={"profile": "slow", "query": "Wait."}).json()
                wait_for_the_slow_sub_call(model_server, before)
                queued = globex.post("/v1/runs", json={"profile": "rlm", "query": "q"}).json()
                assert wait_status(globex, queued["id"], {"queued"})["status"] == "queued"
                with service.client(None) as operator:
                    metrics = operator.get(
                        "/metrics", headers={"Authorization": "Bearer operator-metrics-token"}
                    )
                assert 'rlm_queue_depth{queue="runs"} 1.0' in metrics.text
                assert acme.delete(f"/v1/runs/{slow['id']}").status_code == 200
                done = wait_status(globex, queued["id"], {"succeeded", "failed"})
                assert done["status"] == "succeeded"
        finally:
            assert service.stop(signal.SIGTERM) == 0
