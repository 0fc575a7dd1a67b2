"""Everything one replica shares across requests, built when the app starts and
closed when it stops: the store, the tenants' authenticator and quotas, one
batcher for every run's model calls, the placement of Docker sandboxes (a warm
pool per sandbox shape the profiles use on each Docker engine,
:mod:`rlm.service.engines`), and the run manager."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rlm.config import RLMConfig
from rlm.service.metrics import Metrics
from rlm.service.runs import RunManager
from rlm.service.sse import keepalive_seconds

if TYPE_CHECKING:
    from rlm.backends.docker import ContainerSource, ContainerSpec
    from rlm.core import RLM
    from rlm.service.auth import Authenticator
    from rlm.service.config import ServiceConfig
    from rlm.service.engines import Placement
    from rlm.service.quotas import Quotas
    from rlm.service.store import Store
    from rlm.service.store.base import TenantLoad
    from rlm.subcalls.batcher import Batcher

log = logging.getLogger("rlm.service")


@dataclass(eq=False)
class Service:
    config: ServiceConfig
    base: RLMConfig
    store: Store
    auth: Authenticator
    quotas: Quotas
    batcher: Batcher
    manager: RunManager
    metrics: Metrics
    #: The Docker engines and their warm pools (None when no profile is on Docker).
    placement: Placement | None = None
    #: Where each Docker sandbox shape's containers come from (the placement's).
    pools: dict[ContainerSpec, ContainerSource] = field(default_factory=dict)
    keepalive_s: float = 10.0
    started: float = field(default_factory=time.time)


@contextlib.asynccontextmanager
async def running_service(
    config: ServiceConfig,
    *,
    base: RLMConfig | None = None,
    store: Store | None = None,
    on_ready: Callable[[Service], None] | None = None,
) -> AsyncIterator[Service]:
    """The service of ``config``, open for its whole block; on the way out every run
    in flight is cancelled and stored as interrupted, and its sandboxes removed."""
    from rlm.core import RLM
    from rlm.service.auth import Authenticator
    from rlm.service.quotas import Quotas
    from rlm.service.store import open_store
    from rlm.stack import model_client
    from rlm.subcalls.batcher import Batcher

    base = base if base is not None else RLMConfig.from_env()
    store = store if store is not None else open_store(config.server.database)
    metrics = Metrics()
    async with contextlib.AsyncExitStack() as stack:
        await store.open()
        stack.push_async_callback(store.close)
        batcher = Batcher(model_client(base), max_concurrent=config.server.max_concurrent_sub_calls)
        stack.push_async_callback(batcher.client.aclose)
        placement = await _open_placement(config, base, stack)
        pools: dict[ContainerSpec, ContainerSource] = (
            {spec: placement.source(spec) for spec in placement.specs} if placement else {}
        )

        def make_rlm(run_config: RLMConfig, on_event: Callable[[dict[str, Any]], None]) -> RLM:
            pool = None
            if run_config.backend == "docker":
                from rlm.backends.docker import ContainerSpec

                pool = pools.get(ContainerSpec.from_config(run_config))
            return RLM(run_config, batcher=batcher, pool=pool, on_event=on_event)

        replica = config.server.replica_id

        async def others_load(tenant: str, since: float) -> TenantLoad:
            return await store.others_load(tenant, since, replica)

        quotas = Quotas(config, store.tokens_used, others_load=others_load)
        manager = RunManager(
            config, store, quotas, make_rlm, base=base, on_finish=metrics.run_finished
        )
        service = Service(
            config=config,
            base=base,
            store=store,
            auth=Authenticator(config.tenants),
            quotas=quotas,
            batcher=batcher,
            manager=manager,
            metrics=metrics,
            placement=placement,
            pools=pools,
            keepalive_s=keepalive_seconds(),
        )
        await manager.recover()
        watcher = asyncio.get_running_loop().create_task(manager.watch())
        stack.callback(watcher.cancel)
        # Registered last, so it runs first: runs end before their pools close.
        stack.push_async_callback(manager.shutdown)
        if on_ready is not None:
            on_ready(service)
        yield service


async def _open_placement(
    config: ServiceConfig, base: RLMConfig, stack: contextlib.AsyncExitStack
) -> Placement | None:
    """The engines, with a warm pool on each per container shape of the Docker
    profiles (None when no profile is on Docker); entering a pool sweeps the
    containers of processes of this host that died before removing theirs."""
    specs = []
    for profile in config.profiles.values():
        if profile.backend == "docker":
            from rlm.backends.docker import ContainerSpec

            spec = ContainerSpec.from_config(profile.rlm_config(base))
            if spec not in specs:
                specs.append(spec)
    if not specs:
        return None
    from rlm.service.engines import Placement

    # An engine that cannot be reached starts drained and is retried; runs then go
    # to the others, or fail saying which engine is down and why.
    placement = Placement(specs, config.engines, pool_size=config.server.pool_size)
    return await stack.enter_async_context(placement)
