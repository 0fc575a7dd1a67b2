"""Run slots one replica shares among its tenants, handed out fairly.

At most ``size`` runs go at once on a replica (``[server] max_concurrent_runs``);
the others wait as ``queued``. While several tenants have runs going or waiting,
none may hold more than its share (``size`` / those tenants, rounded up), even
if that leaves a slot free for a moment: a tenant's client that sends its next
run right after the last one ended finds its slot still there, instead of taken
by a flood that always has one waiting. A free slot goes to the waiting tenant
with the fewest runs going, and among equals to the run that has waited longest.
A tenant alone may use every slot. (Each tenant's own ``max_concurrent_runs`` still bounds how
many of its runs may be admitted at all; see :mod:`rlm.service.quotas`.)
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from dataclasses import dataclass, field


@dataclass(order=True)
class _Waiter:
    seq: int
    tenant: str = field(compare=False)
    granted: asyncio.Future[None] = field(compare=False)


class FairSlots:
    """``size`` slots (None: unbounded) taken with :meth:`acquire`, given back with
    :meth:`release`. Single event loop; no locks needed."""

    def __init__(self, size: int | None) -> None:
        self.size = size
        self.running: Counter[str] = Counter()
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()

    @property
    def taken(self) -> int:
        return sum(self.running.values())

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, tenant: str) -> None:
        """Wait for a slot for one of ``tenant``'s runs. Cancelling the wait gives
        up the place in the queue (or the slot, if it was granted meanwhile)."""
        if self._free() and not self._waiters and self._within_share(tenant):
            self.running[tenant] += 1
            return
        waiter = _Waiter(next(self._seq), tenant, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        # A slot may be free and held back only for a share: this waiter's, maybe.
        self._grant()
        try:
            await waiter.granted
        except asyncio.CancelledError:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                self._grant()  # one tenant fewer sharing: the others' shares grow
            elif waiter.granted.done() and not waiter.granted.cancelled():
                self.release(tenant)
            raise

    def release(self, tenant: str) -> None:
        """Give back a slot ``tenant`` holds; the next waiter in fair order gets it."""
        self.running[tenant] -= 1
        if self.running[tenant] <= 0:
            del self.running[tenant]
        self._grant()

    def _free(self) -> bool:
        return self.size is None or self.taken < self.size

    def _within_share(self, tenant: str, *, waiting: bool = False) -> bool:
        """Whether ``tenant`` may take one more slot now (``waiting``: it is one of
        the waiters, so it already counts among the tenants sharing)."""
        if self.size is None:
            return True
        sharing = set(self.running) | {w.tenant for w in self._waiters}
        if not waiting:
            sharing.add(tenant)
        share = -(-self.size // len(sharing))
        return self.running[tenant] < share

    def _grant(self) -> None:
        while self._waiters and self._free():
            eligible = [w for w in self._waiters if self._within_share(w.tenant, waiting=True)]
            if not eligible:
                return
            waiter = min(eligible, key=lambda w: (self.running[w.tenant], w.seq))
            self._waiters.remove(waiter)
            self.running[waiter.tenant] += 1
            waiter.granted.set_result(None)
