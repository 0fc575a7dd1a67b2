"""InFlight: one call per key in flight, its outcome shared with followers."""

from __future__ import annotations

from collections.abc import Hashable

import anyio
import pytest

from rlm.subcalls.dedup import InFlight


async def test_followers_get_the_leaders_outcome() -> None:
    flights: InFlight[str] = InFlight()
    flight = flights.lead("k")
    assert flights.get("k") is flight and len(flights) == 1
    got: list[str | None] = []

    async def follow() -> None:
        follower = flights.get("k")
        assert follower is not None
        got.append(await follower.wait())

    async with anyio.create_task_group() as tg:
        tg.start_soon(follow)
        tg.start_soon(follow)
        await anyio.wait_all_tasks_blocked()
        assert flight.followers == 2
        flights.land("k", flight, "answer")
    assert got == ["answer", "answer"]
    assert flights.get("k") is None and len(flights) == 0


async def test_an_abandoned_flight_tells_followers_to_call_themselves() -> None:
    flights: InFlight[str] = InFlight()
    flight = flights.lead("k")
    got: list[str | None] = ["unset"]

    async def follow() -> None:
        got[0] = await flight.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(follow)
        await anyio.wait_all_tasks_blocked()
        flights.land("k", flight, None)
    assert got == [None]


async def test_landing_an_old_flight_leaves_a_newer_one_for_the_same_key() -> None:
    flights: InFlight[str] = InFlight()
    old = flights.lead("k")
    new = flights.lead("k")  # the key was led again after the old flight was given up
    flights.land("k", old, None)
    assert flights.get("k") is new
    flights.land("k", new, "x")
    assert flights.get("k") is None


async def test_a_landed_flight_answers_late_followers_at_once() -> None:
    flights: InFlight[int] = InFlight()
    flight = flights.lead(("model", "prompt"))
    flights.land(("model", "prompt"), flight, 7)
    with anyio.fail_after(1):
        assert await flight.wait() == 7


@pytest.mark.parametrize("key", ["a", ("m", "p"), 3])
async def test_keys_are_any_hashable(key: Hashable) -> None:
    flights: InFlight[str] = InFlight()
    flight = flights.lead(key)
    assert flights.get(key) is flight
    flights.land(key, flight, "v")
    assert len(flights) == 0
