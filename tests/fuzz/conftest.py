"""Hypothesis profiles for the boundary fuzzers, and a hard guard per test.

The profile comes from ``RLM_FUZZ_PROFILE`` (see :mod:`tests.fuzz.support`):
``ci`` (the default, what scripts/test.sh and CI run: derandomized, no example
database, a small fixed budget) or ``long`` (many more examples, random, with
Hypothesis's example database, for a run on demand).
"""

from __future__ import annotations

import faulthandler
import sys
from collections.abc import Iterator

import pytest

from tests.fuzz.support import PROFILE, TEST_GUARD_S, load_profile

load_profile()


@pytest.fixture(autouse=True)
def _hard_guard() -> Iterator[None]:
    """A test that outlives its bound is dumped and the process ended: the last
    resort for a hang inside one C call, which no exception can interrupt."""
    faulthandler.dump_traceback_later(TEST_GUARD_S[PROFILE], exit=True, file=sys.stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
