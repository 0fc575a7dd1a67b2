"""Fixtures for the restricted backend's tests: a started sandbox with a context."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from rlm.backends.restricted import RestrictedSandbox
from tests.backends.restricted.support import make_sandbox


@pytest.fixture
async def box() -> AsyncIterator[RestrictedSandbox]:
    sandbox, _batcher, _bridge = make_sandbox()
    await sandbox.start()
    await sandbox.load_context("The capital of Atlantis is Poseidonia.\n" * 10)
    yield sandbox
    await sandbox.close()
