"""The slot scheduler on its own: order of hand-out, limits, cancellation."""

from __future__ import annotations

import anyio
import anyio.lowlevel

from rlm.subcalls.fairness import FairScheduler


async def hand_out(
    scheduler: FairScheduler, requests: list[tuple[str, str]], limits: int | None = None
) -> list[tuple[str, str]]:
    """Queue ``requests`` behind one held slot, then record the order they get slots."""
    order: list[tuple[str, str]] = []
    await scheduler.acquire("hold", "hold")

    async def one(tenant: str, session: str) -> None:
        async with scheduler.slot(tenant, session, limits):
            order.append((tenant, session))
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        for tenant, session in requests:
            tg.start_soon(one, tenant, session)
        await anyio.wait_all_tasks_blocked()
        scheduler.release("hold", "hold")
    return order


async def test_sessions_take_turns() -> None:
    scheduler = FairScheduler(lambda: 1)
    requests = [("t", "a")] * 4 + [("t", "b")] * 2 + [("t", "c")]
    order = await hand_out(scheduler, requests)
    assert [s for _, s in order] == ["a", "b", "c", "a", "b", "a", "a"]


async def test_tenants_take_turns_before_their_sessions() -> None:
    scheduler = FairScheduler(lambda: 1)
    requests = [("x", "x1")] * 2 + [("x", "x2")] * 2 + [("y", "y1")] * 2
    order = await hand_out(scheduler, requests)
    assert order == [
        ("x", "x1"),
        ("y", "y1"),
        ("x", "x2"),
        ("y", "y1"),
        ("x", "x1"),
        ("x", "x2"),
    ]


async def test_weights_give_a_tenant_more_turns() -> None:
    scheduler = FairScheduler(lambda: 1, tenant_weights={"x": 3})
    requests = [("x", "x1")] * 6 + [("y", "y1")] * 2
    order = await hand_out(scheduler, requests)
    assert [t for t, _ in order] == ["x", "x", "x", "y", "x", "x", "x", "y"]


async def test_limits_per_tenant_and_session_hold() -> None:
    scheduler = FairScheduler(lambda: 10, tenant_limit=3)
    peak: dict[str, int] = {}
    running: dict[str, int] = {}

    async def one(tenant: str, session: str) -> None:
        async with scheduler.slot(tenant, session, 2):
            running[session] = running.get(session, 0) + 1
            running[tenant] = running.get(tenant, 0) + 1
            for key in (session, tenant):
                peak[key] = max(peak.get(key, 0), running[key])
            await anyio.sleep(0.001)
            running[session] -= 1
            running[tenant] -= 1

    async with anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(one, "t1", f"s{i % 4}")
            tg.start_soon(one, "t2", "u")
    assert peak["t1"] == 3 and peak["t2"] == 2
    assert max(peak[f"s{i}"] for i in range(4)) <= 2
    assert scheduler.max_in_flight == 5 and scheduler.in_flight == 0


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    scheduler = FairScheduler(lambda: 1)
    await scheduler.acquire("t", "a")
    with anyio.move_on_after(0.01):
        await scheduler.acquire("t", "b")
    assert scheduler.waiting() == 0
    scheduler.release("t", "a")
    assert scheduler.in_flight == 0
    # The queue structures are gone, and the next acquire is immediate.
    with anyio.fail_after(1):
        async with scheduler.slot("t", "b"):
            assert scheduler.in_flight == 1


async def test_a_raised_limit_is_used_at_once() -> None:
    limit = [1]
    scheduler = FairScheduler(lambda: limit[0])
    await scheduler.acquire("t", "a")
    got: list[str] = []

    async def second() -> None:
        await scheduler.acquire("t", "b")
        got.append("b")

    async with anyio.create_task_group() as tg:
        tg.start_soon(second)
        await anyio.wait_all_tasks_blocked()
        assert got == []
        limit[0] = 2
        scheduler.poke()
    assert got == ["b"] and scheduler.in_flight == 2
