"""Sharing one provider call among identical requests that are in flight together.

The first request for a key *leads*: it makes the call. Others that arrive while
it runs *follow*: they wait for its outcome instead of calling. Only the provider's
outcome is shared (an answer, or a failure that retries did not fix). If the
leader stops for a reason of its own (its run was cancelled, its session's budget
ran out), its followers are told the flight was abandoned and make the call
themselves, so one session's cancellation never fails another's request.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

import anyio

T = TypeVar("T")


class Flight(Generic[T]):
    """One call in progress; followers wait on it."""

    __slots__ = ("_done", "followers", "outcome")

    def __init__(self) -> None:
        self._done = anyio.Event()
        self.outcome: T | None = None
        self.followers = 0

    async def wait(self) -> T | None:
        """The shared outcome, or None if the leader abandoned the call."""
        self.followers += 1
        await self._done.wait()
        return self.outcome


class InFlight(Generic[T]):
    """Calls in flight by key."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, Flight[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def get(self, key: Hashable) -> Flight[T] | None:
        return self._flights.get(key)

    def lead(self, key: Hashable) -> Flight[T]:
        """Start a flight for ``key``; the caller must :meth:`land` it."""
        flight: Flight[T] = Flight()
        self._flights[key] = flight
        return flight

    def land(self, key: Hashable, flight: Flight[T], outcome: T | None) -> None:
        """End the flight, sharing ``outcome`` (None: abandoned) with its followers."""
        if self._flights.get(key) is flight:
            del self._flights[key]
        flight.outcome = outcome
        flight._done.set()
