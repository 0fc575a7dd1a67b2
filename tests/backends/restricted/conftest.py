"""Fixtures for the restricted backend's tests: a started sandbox with a context."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from rlm.backends.restricted import RestrictedSandbox
from tests.backends.restricted.support import make_isolated


@pytest.fixture(autouse=True, scope="module")
def _no_spare_worker_left() -> Iterator[None]:
    # Tests elsewhere count this process's children: the worker kept ready goes.
    yield
    from rlm.backends.restricted.spawn import drop_spares

    drop_spares()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A module that sets ISOLATIONS runs its tests of ``box`` in each mode listed.
    modes = getattr(metafunc.module, "ISOLATIONS", None)
    if modes and "box" in metafunc.fixturenames:
        metafunc.parametrize("box", modes, indirect=True)


@pytest.fixture
async def box(request: pytest.FixtureRequest) -> AsyncIterator[RestrictedSandbox]:
    isolation = getattr(request, "param", "inprocess")
    sandbox, _batcher, _bridge = make_isolated(isolation)
    await sandbox.start()
    await sandbox.load_context("The capital of Atlantis is Poseidonia.\n" * 10)
    yield sandbox
    await sandbox.close()
