"""What the boundary fuzzers share: profiles, budgets, hang guards and JSON strategies.

Profiles (chosen with ``RLM_FUZZ_PROFILE``, ``ci`` when unset):

- ``ci``: what CI runs. ``derandomize=True`` and no example database, so every run
  tries the same examples and a failure reproduces; each test's budget is the
  number it passes to :func:`examples`, sized so the whole fuzz suite takes well under
  60 s on a 2-core machine. ``deadline`` is 5 s per example (an example takes
  milliseconds; the bound is for a hang, not for a slow machine).
- ``long``: ``RLM_FUZZ_PROFILE=long .venv/bin/python -m pytest tests/fuzz`` tries
  :data:`LONG_FACTOR` times as many examples, randomly, and keeps failing ones in
  Hypothesis's database (``.hypothesis/``) to try first next time.

Every example also runs under :func:`hard_timeout` (a SIGALRM that raises
:class:`Hang` into the code under test), and every test under a faulthandler bound
(``conftest.py``) that ends the process if a single C call never returns.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
from collections.abc import Iterator
from datetime import timedelta
from types import FrameType
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

LONG_FACTOR = 50
PROFILE = os.environ.get("RLM_FUZZ_PROFILE", "ci") or "ci"
#: Seconds one whole test may take before faulthandler ends the process.
TEST_GUARD_S = {"ci": 120.0, "long": 3600.0}

if PROFILE not in TEST_GUARD_S:
    raise RuntimeError(f"RLM_FUZZ_PROFILE must be one of {sorted(TEST_GUARD_S)}, not {PROFILE!r}")

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=timedelta(seconds=5),
    print_blob=True,
    # A shared, loaded machine: generation speed is not what these tests check.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    derandomize=False,
    deadline=timedelta(seconds=10),
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def load_profile() -> None:
    settings.load_profile(PROFILE)


def examples(ci: int) -> int:
    """A test's number of examples: ``ci`` under the ci profile, more under long."""
    return ci * LONG_FACTOR if PROFILE == "long" else ci


class Hang(Exception):
    """An example ran past its hard time bound."""


@contextlib.contextmanager
def hard_timeout(seconds: float) -> Iterator[None]:
    """Raise :class:`Hang` in the code under test after ``seconds`` (main thread)."""

    def expired(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- JSON ------------------------------------------------------------------------------

#: Any character, lone surrogates included (the wire carries them, surrogatepass).
any_text = st.text(st.characters(exclude_categories=()), max_size=40)
#: Names that look like the fields a forger would try.
FORGED_FIELDS = (
    "depth",
    "max_depth",
    "budget",
    "max_sub_calls",
    "max_children",
    "max_tokens",
    "session",
    "session_id",
    "tenant",
    "parent_id",
    "run_id",
    "limits",
    "calls_admitted",
)
keys = st.one_of(any_text, st.sampled_from(FORGED_FIELDS))
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    any_text,
)
#: JSON values (finite floats, str keys), a few levels deep.
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=25,
)


def json_equal(a: Any, b: Any) -> bool:
    """Equal as JSON: ``==`` that also tells a bool from an int and 1 from 1.0
    (iterative: a value may be nested as deep as the decoder takes)."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, list):
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y, strict=True))
        elif isinstance(x, dict):
            if x.keys() != y.keys():
                return False
            stack.extend((x[k], y[k]) for k in x)
        elif isinstance(x, float):
            if not (x == y or (math.isnan(x) and math.isnan(y))):
                return False
        elif x != y:
            return False
    return True


def nested(depth: int, leaf: str = "0") -> str:
    """JSON text of ``depth`` nested lists around ``leaf``."""
    return "[" * depth + leaf + "]" * depth
