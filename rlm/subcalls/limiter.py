"""Adaptive concurrency: how many sub-calls the provider is taking right now (AIMD).

A provider that answers 429 is saying "fewer, please". Retrying each refused call
on its own turns a burst into a storm, so the batcher also shrinks the number of
calls it keeps in flight: the limit is halved on a rate limit and grows back by
about one for every ``limit`` calls that succeed (TCP's congestion control, in
short). Rate limits from calls that started before the last cut are ignored, so
one burst of refusals halves the limit once, not once per refused call.
"""

from __future__ import annotations

import time
from collections import deque


class AdaptiveLimit:
    """An AIMD limit between ``minimum`` and ``maximum`` (starts at ``maximum``)."""

    def __init__(
        self,
        maximum: int,
        *,
        minimum: int = 1,
        decrease: float = 0.5,
        increase: float = 1.0,
        history: int = 1024,
    ) -> None:
        if maximum < 1 or not 1 <= minimum <= maximum:
            raise ValueError("need 1 <= minimum <= maximum")
        if not 0 < decrease < 1 or increase <= 0:
            raise ValueError("decrease must be in (0, 1) and increase positive")
        self.maximum = maximum
        self.minimum = minimum
        self.decrease = decrease
        self.increase = increase
        self._value = float(maximum)
        self._epoch = 0
        #: How many times the limit was cut, and the lowest it went.
        self.cuts = 0
        self.lowest = maximum
        #: ``(monotonic time, limit)`` at each change of the whole-number limit.
        self.history: deque[tuple[float, int]] = deque(maxlen=history)
        self.history.append((time.monotonic(), maximum))

    @property
    def current(self) -> int:
        """The whole number of calls that may be in flight now."""
        return int(self._value)

    @property
    def epoch(self) -> int:
        """Take this when a call starts and hand it back to :meth:`on_overload`."""
        return self._epoch

    def on_success(self) -> None:
        if self._value >= self.maximum:
            return
        before = int(self._value)
        self._value = min(float(self.maximum), self._value + self.increase / self._value)
        if int(self._value) != before:
            self.history.append((time.monotonic(), int(self._value)))

    def on_overload(self, epoch: int) -> bool:
        """A call that started in ``epoch`` was rate limited; True if the limit was cut."""
        if epoch != self._epoch:
            return False
        self._epoch += 1
        before = int(self._value)
        self._value = max(float(self.minimum), self._value * self.decrease)
        self.cuts += 1
        self.lowest = min(self.lowest, int(self._value))
        if int(self._value) != before:
            self.history.append((time.monotonic(), int(self._value)))
        return True
