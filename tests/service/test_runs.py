"""The run manager on its own (a real SQLite store, a stand-in RLM): a run cancelled
before its task starts still ends in the store, and a reader joining mid-run gets
every event once, in order, without a gap between the stored and the live part."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from rlm.config import RLMConfig
from rlm.service.quotas import Quotas
from rlm.service.runs import RunManager
from rlm.service.settings import Profile, ServerSettings, ServiceConfig, Tenant
from rlm.service.store import SQLiteStore

TENANT = Tenant(name="acme", token_sha256="0" * 64, profiles=("p",))
PROFILE = Profile(name="p", model="root", backend="restricted")


class FakeRLM:
    """Emits ``n`` events, a few at a time, then answers."""

    def __init__(self, on_event: Any, n: int = 300) -> None:
        self.on_event = on_event
        self.n = n

    async def acompletion(self, context: Any, query: str) -> Any:
        for i in range(self.n):
            self.on_event({"event": "cell", "iteration": i})
            if i % 7 == 0:
                self.on_event({"event": "batch_progress", "done": i})
                await asyncio.sleep(0.001)
        raise RuntimeError("a bug with a secret host path /etc/x")


async def manager(tmp_path: Path) -> tuple[RunManager, SQLiteStore]:
    config = ServiceConfig(
        server=ServerSettings(database=str(tmp_path / "rlm.db"), allow_unsafe_restricted=True),
        profiles={"p": PROFILE},
        tenants=(TENANT,),
    )
    store = SQLiteStore(str(tmp_path / "rlm.db"))
    await store.open()
    quotas = Quotas(config, store.tokens_used)

    def make(config: RLMConfig, on_event: Any) -> Any:
        return FakeRLM(on_event)

    base = RLMConfig(api_key="k", base_url="http://127.0.0.1:9/v1")
    return RunManager(config, store, quotas, make, base=base), store


async def test_a_run_cancelled_before_it_starts_is_stored_cancelled(tmp_path: Path) -> None:
    runs, store = await manager(tmp_path)
    try:
        record, created = await runs.submit(TENANT, PROFILE, "q", "ctx", context_bytes=3)
        assert created
        assert (await runs.cancel(record)).status == "cancelled"
        stored = await store.get_run("acme", record.id)
        assert stored is not None and stored.status == "cancelled"
        assert runs.quotas.active("acme") == 0
    finally:
        await store.close()


async def test_a_reader_gets_every_event_once_and_a_bug_is_not_shown(tmp_path: Path) -> None:
    runs, store = await manager(tmp_path)
    try:
        record, _ = await runs.submit(TENANT, PROFILE, "q", "ctx", context_bytes=3)
        await asyncio.sleep(0.05)  # some events stored, some not yet
        seen = [seq async for seq, _ in runs.follow("acme", record.id) if seq is not None]
        assert seen == list(range(1, 301))
        stored = await store.get_run("acme", record.id)
        assert stored is not None and stored.status == "failed"
        assert stored.error is not None and "/etc/x" not in stored.error
        assert [seq for seq, _ in await store.events(record.id)] == list(range(1, 301))
    finally:
        await store.close()
