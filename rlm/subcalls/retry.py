"""When to try a failed sub-call again, and how long to wait first.

Rate limits, server errors, dropped connections and timeouts may pass; a bad
request, a refused key, an unknown model or a prompt over the context window will
not, so those fail at once. Waits grow exponentially with full jitter (so calls
refused together do not come back together), a Retry-After from the provider is
honoured as a floor, and both the number of tries and the total time are bounded.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rlm.provider.client import ModelCallFailure


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds and pacing of retries for one sub-call."""

    #: Tries in all, the first one included.
    max_tries: int = 6
    #: The first backoff's upper bound; it doubles with each try.
    base_delay: float = 0.5
    #: No single backoff is longer, unless the provider's Retry-After asks for more.
    max_delay: float = 30.0
    #: No retry starts later than this many seconds after the first try started.
    max_elapsed: float = 120.0

    def __post_init__(self) -> None:
        if self.max_tries < 1 or self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("max_tries must be >= 1 and delays must not be negative")

    def delay(
        self,
        tries: int,
        failure: ModelCallFailure,
        elapsed: float,
        rng: random.Random | None = None,
    ) -> float | None:
        """Seconds to wait before try ``tries + 1``, or None to give up.

        ``tries`` is how many tries were made so far and ``elapsed`` the seconds
        since the first one started.
        """
        if not failure.retryable or tries >= self.max_tries:
            return None
        draw = rng.random() if rng is not None else random.random()
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (tries - 1))
        wait = ceiling * draw
        if failure.retry_after is not None:
            # At least what the provider asked, spread by up to 10% so the calls it
            # refused together do not all return in the same instant.
            wait = max(wait, failure.retry_after * (1.0 + 0.1 * draw))
        if elapsed + wait > self.max_elapsed:
            return None
        return wait

    def gave_up(self, tries: int, failure: ModelCallFailure, elapsed: float) -> str:
        """The message for a call that failed for good."""
        if not failure.retryable:
            return str(failure)
        if tries >= self.max_tries:
            noun = "try" if tries == 1 else "tries"
            why = f"gave up after {tries} {noun} in {elapsed:.1f} s"
        else:
            why = (
                f"gave up after {tries} tries: the next wait would pass the "
                f"{self.max_elapsed:g} s retry budget"
            )
        hint = (
            "; lower max_concurrent or try again later"
            if failure.kind == "rate_limit"
            else "; try again later"
        )
        return f"{failure} ({why}{hint})"
