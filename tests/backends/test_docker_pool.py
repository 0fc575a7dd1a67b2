"""The warm pool refills several containers at once and grows with demand."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from rlm.backends.docker import LABEL, OWNER, OWNER_LABEL, ContainerPool, ContainerSpec
from tests.support import IMAGE

pytestmark = pytest.mark.docker


def _ours(client: Any) -> set[str]:
    """This process's sandbox containers (other processes may share the engine)."""
    return {
        c["Id"]
        for c in client.api.containers(all=True, filters={"label": f"{LABEL}=1"})
        if c["Labels"].get(OWNER_LABEL) == OWNER
    }


async def test_the_pool_grows_with_demand_up_to_its_max_and_refills_in_parallel(
    docker_client: Any,
) -> None:
    before = _ours(docker_client)
    spec = ContainerSpec(image=IMAGE)
    async with ContainerPool(
        spec, size=1, max_size=3, parallel=3, docker_client=docker_client
    ) as pool:
        await pool.wait_full()
        # Four sessions at once: one warm container, three started cold, and each
        # cold start raises what the pool keeps ready, to its max of 3.
        boxes = []

        async def take() -> None:
            boxes.append(await pool.acquire())

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(take)
        assert pool.cold_starts == 3 and pool.target == 3
        assert len({box.id for box in boxes}) == 4
        with anyio.fail_after(60):
            while pool.ready < 3:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        await anyio.sleep(0.3)
        assert pool.ready == 3  # never more than the target
        for box in boxes:
            await box.remove()
    # Removal is the engine's, asynchronously (auto_remove): wait for it.
    with anyio.fail_after(30):
        while _ours(docker_client) != before:  # noqa: ASYNC110
            await anyio.sleep(0.1)


def test_the_pool_refuses_a_max_below_its_size() -> None:
    with pytest.raises(ValueError, match="max_size"):
        ContainerPool(size=2, max_size=1)
    with pytest.raises(ValueError, match="parallel"):
        ContainerPool(parallel=0)
