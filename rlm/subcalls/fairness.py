"""Fair hand-out of in-flight slots across tenants and sessions.

Every sub-call holds one slot while its request is at the provider. Slots are
bounded three ways: a global limit (which may move, see :mod:`rlm.subcalls.limiter`), a
limit per tenant, and a limit per session. When a slot frees, it goes to the next
tenant in round-robin order that has a call waiting and room under its limits, and
within that tenant to the next such session, so a session with 10,000 queued calls
gets one slot per turn like a session with one. A tenant's ``weight`` is how many
slots it gets per turn (deficit round robin with unit cost).

Slots are handed over directly to a waiter (it does not race for them after
waking), and a waiter that is cancelled gives back a slot it was just handed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

import anyio


class _Waiter:
    __slots__ = ("event", "granted", "live")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False
        self.live = True


class _Session:
    __slots__ = ("in_flight", "limit", "queued", "waiters")

    def __init__(self, limit: int | None) -> None:
        self.in_flight = 0
        self.limit = limit
        #: In its tenant's rotation (it has, or recently had, live waiters).
        self.queued = False
        self.waiters: deque[_Waiter] = deque()

    def has_room(self) -> bool:
        return self.limit is None or self.in_flight < self.limit

    def first_live(self) -> _Waiter | None:
        waiters = self.waiters
        while waiters and not waiters[0].live:
            waiters.popleft()
        return waiters[0] if waiters else None


class _Tenant:
    __slots__ = ("credit", "in_flight", "queued", "rotation", "sessions")

    def __init__(self) -> None:
        self.in_flight = 0
        self.credit = 0
        #: In the global rotation (some session of it is queued).
        self.queued = False
        self.sessions: dict[str, _Session] = {}
        #: Queued sessions, in round-robin order.
        self.rotation: deque[str] = deque()


class FairScheduler:
    """Hands out in-flight slots under global, per-tenant and per-session limits."""

    def __init__(
        self,
        global_limit: Callable[[], int],
        *,
        tenant_limit: int | None = None,
        tenant_limits: Mapping[str, int] | None = None,
        tenant_weights: Mapping[str, int] | None = None,
    ) -> None:
        self._global_limit = global_limit
        self._tenant_limit = tenant_limit
        self._tenant_limits = dict(tenant_limits or {})
        self._weights = dict(tenant_weights or {})
        self._tenants: dict[str, _Tenant] = {}
        #: Queued tenants, in round-robin order.
        self._rotation: deque[str] = deque()
        self.in_flight = 0
        self.max_in_flight = 0

    # -- public ----------------------------------------------------------------------

    @asynccontextmanager
    async def slot(
        self, tenant: str, session: str, session_limit: int | None = None
    ) -> AsyncIterator[None]:
        """Hold one slot for the body of the ``async with``."""
        await self.acquire(tenant, session, session_limit)
        try:
            yield
        finally:
            self.release(tenant, session)

    async def acquire(self, tenant: str, session: str, session_limit: int | None = None) -> None:
        """Wait for a slot; the caller must :meth:`release` it."""
        t = self._tenants.get(tenant)
        if t is None:
            t = self._tenants[tenant] = _Tenant()
        s = t.sessions.get(session)
        if s is None:
            s = t.sessions[session] = _Session(session_limit)
        else:
            s.limit = session_limit
        if (
            not self._rotation
            and self.in_flight < self._global_limit()
            and self._tenant_room(tenant, t)
            and s.has_room()
        ):
            # Nobody is waiting: take the slot without queueing.
            self._grant(t, s)
            return
        waiter = _Waiter()
        s.waiters.append(waiter)
        if not s.queued:
            s.queued = True
            t.rotation.append(session)
        if not t.queued:
            t.queued = True
            t.credit = self._weights.get(tenant, 1)
            self._rotation.append(tenant)
        self._dispatch()
        if waiter.granted:
            return
        try:
            await waiter.event.wait()
        except BaseException:
            waiter.live = False
            if waiter.granted:
                self.release(tenant, session)
            else:
                self._tidy(tenant, t, session, s)
            raise

    def release(self, tenant: str, session: str) -> None:
        t = self._tenants[tenant]
        s = t.sessions[session]
        s.in_flight -= 1
        t.in_flight -= 1
        self.in_flight -= 1
        self._tidy(tenant, t, session, s)
        self._dispatch()

    def waiting(self) -> int:
        """Calls waiting for a slot (for stats; it walks every queue)."""
        return sum(
            sum(1 for w in s.waiters if w.live)
            for t in self._tenants.values()
            for s in t.sessions.values()
        )

    def poke(self) -> None:
        """Hand out slots again (call after the global limit went up)."""
        self._dispatch()

    # -- internals -------------------------------------------------------------------

    def _tenant_room(self, name: str, t: _Tenant) -> bool:
        limit = self._tenant_limits.get(name, self._tenant_limit)
        return limit is None or t.in_flight < limit

    def _dispatch(self) -> None:
        rotation = self._rotation
        while rotation and self.in_flight < self._global_limit():
            for _ in range(len(rotation)):
                name = rotation[0]
                t = self._tenants[name]
                waiter = self._next_in(t) if self._tenant_room(name, t) else None
                if waiter is None:
                    if t.rotation:
                        rotation.rotate(-1)
                    else:
                        rotation.popleft()
                        t.queued = False
                    continue
                t.credit -= 1
                if not t.rotation:
                    rotation.popleft()
                    t.queued = False
                elif t.credit <= 0:
                    t.credit = self._weights.get(name, 1)
                    rotation.rotate(-1)
                t.in_flight += 1
                self._count_in()
                waiter.granted = True
                waiter.event.set()
                break
            else:
                # Everyone waiting is held back by a tenant or session limit.
                return

    def _grant(self, t: _Tenant, s: _Session) -> None:
        s.in_flight += 1
        t.in_flight += 1
        self._count_in()

    def _count_in(self) -> None:
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight

    def _next_in(self, t: _Tenant) -> _Waiter | None:
        """Pop the next waiter of the next session with room, in round-robin order."""
        rotation = t.rotation
        for _ in range(len(rotation)):
            s = t.sessions[rotation[0]]
            if s.first_live() is None:
                rotation.popleft()
                s.queued = False
                continue
            if not s.has_room():
                rotation.rotate(-1)
                continue
            waiter = s.waiters.popleft()
            s.in_flight += 1
            if s.first_live() is None:
                rotation.popleft()
                s.queued = False
            else:
                rotation.rotate(-1)
            return waiter
        return None

    def _tidy(self, tenant: str, t: _Tenant, session: str, s: _Session) -> None:
        """Drop a session (and tenant) that holds no slot and has no live waiter."""
        if s.in_flight or s.first_live() is not None:
            return
        if s.queued:
            t.rotation.remove(session)
            s.queued = False
        del t.sessions[session]
        if not t.rotation and t.queued:
            self._rotation.remove(tenant)
            t.queued = False
        if not t.sessions and t.in_flight == 0:
            del self._tenants[tenant]
