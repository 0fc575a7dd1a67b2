"""The service's store, on each database it supports (a SQLite file, a real PostgreSQL
server): runs, idempotency, events, restarts, several replicas at once.

No test looks for secrets in the database: the store is never given one (tenants
reach it as names, and the provider's key stays in the session stack).
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import psycopg
import pytest

from rlm.service.store import (
    RUN_STATUSES,
    RunRecord,
    SQLiteStore,
    Store,
    StoreError,
    UnknownRun,
    open_store,
)
from rlm.service.store.postgres import PostgresStore
from tests.service.conftest import REPO


def run(id: str, tenant: str = "acme", **fields: Any) -> RunRecord:
    values: dict[str, Any] = {
        "profile": "rlm",
        "status": "queued",
        "query": f"query of {id}",
        "created_at": time.time(),
        "owner": "replica-a",
    }
    values.update(fields)
    return RunRecord(id=id, tenant=tenant, **values)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = open_store(database_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def test_a_created_run_reads_back_whole_and_lists_newest_first(store: Store) -> None:
    first = run("r1", created_at=100.0, idempotency_key="k1", context_bytes=12)
    assert await store.create_run(first) == (first, True)
    await store.create_run(run("r2", created_at=200.0))
    await store.create_run(run("r3", created_at=300.0))
    await store.create_run(run("x1", tenant="globex", created_at=400.0))

    assert await store.get_run("acme", "r1") == first
    assert [r.id for r in await store.list_runs("acme")] == ["r3", "r2", "r1"]
    assert [r.id for r in await store.list_runs("acme", limit=2)] == ["r3", "r2"]
    # SQLite would read a negative limit as none, PostgreSQL refuse it: both give none.
    assert await store.list_runs("acme", limit=-1) == []
    assert await store.get_run("acme", "nope") is None


async def test_another_tenants_run_is_not_there(store: Store) -> None:
    await store.create_run(run("r1"))
    assert await store.get_run("globex", "r1") is None
    assert await store.list_runs("globex") == []


async def test_update_run_sets_fields_and_takes_total_tokens_from_usage(store: Store) -> None:
    await store.create_run(run("r1"))
    await store.update_run("r1", status="running", started_at=10.5)
    usage = {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42, "by_depth": {}}
    await store.update_run("r1", status="succeeded", answer="42", usage=usage, finished_at=11.0)
    got = await store.get_run("acme", "r1")
    assert got is not None
    assert (got.status, got.started_at, got.finished_at) == ("succeeded", 10.5, 11.0)
    assert (got.answer, got.usage, got.total_tokens) == ("42", usage, 42)

    with pytest.raises(ValueError, match="tenant"):
        await store.update_run("r1", tenant="globex")
    with pytest.raises(ValueError, match="status"):
        await store.update_run("r1", status="done")
    with pytest.raises(UnknownRun):
        await store.update_run("nope", status="failed")


async def test_a_retried_create_returns_the_first_run(store: Store) -> None:
    first = run("r1", idempotency_key="key")
    await store.create_run(first)
    again, created = await store.create_run(run("r2", idempotency_key="key", query="other"))
    assert (again, created) == (first, False)
    # The key is the tenant's own; runs without a key never collide.
    assert (await store.create_run(run("x1", tenant="globex", idempotency_key="key")))[1]
    assert (await store.create_run(run("r3")))[1]
    assert (await store.create_run(run("r4")))[1]
    assert {r.id for r in await store.list_runs("acme")} == {"r1", "r3", "r4"}


async def test_concurrent_creates_with_one_key_make_one_run(database_url: str) -> None:
    replicas = [open_store(database_url), open_store(database_url)]
    for replica in replicas:
        await replica.open()
    results: list[tuple[RunRecord, bool]] = []

    async def create(replica: Store, n: int) -> None:
        results.append(await replica.create_run(run(f"r{n}", idempotency_key="same")))

    try:
        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(create, replicas[n % 2], n)
        assert sum(created for _, created in results) == 1
        assert len({record.id for record, _ in results}) == 1
        assert len(await replicas[0].list_runs("acme")) == 1
    finally:
        for replica in replicas:
            await replica.close()


async def test_events_get_consecutive_seqs_and_read_back_in_order(store: Store) -> None:
    await store.create_run(run("r1"))
    await store.create_run(run("r2"))
    assert await store.append_events("r1", [{"event": "run_start", "n": 1}, {"event": "cell"}]) == 2
    assert await store.append_events("r2", [{"event": "other"}]) == 1
    assert await store.append_events("r1", [{"event": "output", "text": "é ✓"}]) == 3
    assert await store.append_events("r1", []) == 3

    assert await store.events("r1") == [
        (1, {"event": "run_start", "n": 1}),
        (2, {"event": "cell"}),
        (3, {"event": "output", "text": "é ✓"}),
    ]
    assert [seq for seq, _ in await store.events("r1", after=1)] == [2, 3]
    assert [seq for seq, _ in await store.events("r1", after=0, limit=2)] == [1, 2]
    assert await store.events("r1", after=3) == []
    assert await store.events("nope") == []
    with pytest.raises(UnknownRun):
        await store.append_events("nope", [{"event": "x"}])


async def test_an_event_with_a_value_json_lacks_is_kept_as_text(store: Store) -> None:
    await store.create_run(run("r1"))
    await store.append_events("r1", [{"event": "x", "path": REPO}])
    assert await store.events("r1") == [(1, {"event": "x", "path": str(REPO)})]


async def test_two_replicas_appending_to_one_run_keep_seqs_unique_and_gapless(
    database_url: str,
) -> None:
    replicas = [open_store(database_url), open_store(database_url)]
    for replica in replicas:
        await replica.open()
    returned: list[int] = []

    async def append(replica: Store, name: str, batch: int) -> None:
        events = [{"from": name, "batch": batch, "i": i} for i in range(batch % 3 + 1)]
        returned.append(await replica.append_events("r1", events))

    try:
        await replicas[0].create_run(run("r1"))
        async with anyio.create_task_group() as tg:
            for batch in range(30):
                tg.start_soon(append, replicas[batch % 2], f"replica{batch % 2}", batch)
        stored = await replicas[1].events("r1", limit=10_000)
        total = sum(batch % 3 + 1 for batch in range(30))
        assert [seq for seq, _ in stored] == list(range(1, total + 1))
        assert len(set(returned)) == 30 and max(returned) == total
        # A batch's events stay together and in order.
        by_batch: dict[int, list[int]] = {}
        for seq, event in stored:
            by_batch.setdefault(event["batch"], []).append(seq)
        for batch, seqs in by_batch.items():
            assert seqs == list(range(seqs[0], seqs[0] + batch % 3 + 1))
    finally:
        for replica in replicas:
            await replica.close()


CHILD = """
import sys, anyio
from rlm.service.store import open_store

async def main():
    store = open_store(sys.argv[1])
    await store.open()
    for i in range(100):
        await store.append_events("r1", [{"from": "child", "i": i}])
    await store.close()

anyio.run(main)
"""


async def test_another_process_appending_at_once_keeps_seqs_gapless(
    store: Store, database_url: str
) -> None:
    await store.create_run(run("r1"))
    mine = 0
    child_done = anyio.Event()
    codes: list[int] = []

    async def child() -> None:
        done = await anyio.run_process(
            [sys.executable, "-c", CHILD, database_url], cwd=REPO, check=False
        )
        codes.append(done.returncode)
        assert done.returncode == 0, done.stderr.decode()
        child_done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(child)
        while not child_done.is_set() or mine < 20:
            await store.append_events("r1", [{"from": "parent", "i": mine}])
            mine += 1
    stored = await store.events("r1", limit=10_000)
    assert codes == [0]
    assert [seq for seq, _ in stored] == list(range(1, mine + 101))
    assert [e["i"] for _, e in stored if e["from"] == "child"] == list(range(100))
    assert [e["i"] for _, e in stored if e["from"] == "parent"] == list(range(mine))


async def test_a_cancelled_append_leaves_the_store_whole_and_usable(store: Store) -> None:
    await store.create_run(run("r1"))
    with anyio.move_on_after(0.01):
        async with anyio.create_task_group() as tg:
            for n in range(50):
                tg.start_soon(store.append_events, "r1", [{"n": n}, {"n": n}])
    last = await store.append_events("r1", [{"n": "after"}])
    stored = await store.events("r1", limit=10_000)
    assert [seq for seq, _ in stored] == list(range(1, last + 1))
    assert stored[-1][1] == {"n": "after"}


async def test_mark_interrupted_ends_only_that_owners_unfinished_runs(store: Store) -> None:
    await store.create_run(run("queued"))
    await store.create_run(run("running", status="running", started_at=1.0))
    await store.create_run(run("done", status="succeeded", finished_at=2.0))
    await store.create_run(run("theirs", status="running", owner="replica-b"))
    await store.create_run(run("other-tenant", tenant="globex", status="running"))
    before = time.time()

    ended = await store.mark_interrupted("replica-a", "the server restarted")
    assert ended == ["other-tenant", "queued", "running"]
    for tenant, run_id in [("acme", "queued"), ("acme", "running"), ("globex", "other-tenant")]:
        got = await store.get_run(tenant, run_id)
        assert got is not None
        assert (got.status, got.error) == ("interrupted", "the server restarted")
        assert got.finished_at is not None and got.finished_at >= before
    done = await store.get_run("acme", "done")
    theirs = await store.get_run("acme", "theirs")
    assert done is not None and (done.status, done.finished_at, done.error) == (
        "succeeded",
        2.0,
        None,
    )
    assert theirs is not None and (theirs.status, theirs.error) == ("running", None)
    assert await store.mark_interrupted("replica-a", "again") == []


async def test_silent_owners_are_the_replicas_with_runs_in_flight_and_no_recent_beat(
    store: Store,
) -> None:
    await store.create_run(run("a1", status="running", owner="alive"))
    await store.create_run(run("s1", status="running", owner="silent"))
    await store.create_run(run("s2", status="queued", owner="silent"))
    await store.create_run(run("n1", status="running", owner="never-beat"))
    await store.create_run(run("f1", status="succeeded", owner="finished-only"))
    await store.heartbeat("alive", 100.0)
    await store.heartbeat("silent", 10.0)
    await store.heartbeat("finished-only", 10.0)
    await store.heartbeat("alive", 200.0)  # a later beat replaces the first
    assert await store.silent_owners(150.0) == ["never-beat", "silent"]
    assert await store.silent_owners(250.0) == ["alive", "never-beat", "silent"]
    await store.mark_interrupted("silent", "gone")
    assert await store.silent_owners(150.0) == ["never-beat"]


async def test_others_load_counts_the_tenants_runs_of_other_owners(store: Store) -> None:
    now = time.time()
    await store.create_run(run("mine", status="running", owner="me", created_at=now))
    await store.create_run(run("t1", status="running", owner="them", created_at=now - 500))
    await store.create_run(run("t2", status="queued", owner="them", created_at=now - 30))
    await store.create_run(run("t3", status="succeeded", owner="them", created_at=now - 20))
    await store.create_run(run("t4", status="failed", owner="them", created_at=now - 90))
    await store.create_run(run("g1", tenant="globex", status="running", owner="them"))
    load = await store.others_load("acme", now - 60, "me")
    assert (load.in_flight, load.started) == (2, 2)
    assert load.oldest_start == pytest.approx(now - 30)
    empty = await store.others_load("initech", now - 60, "me")
    assert (empty.in_flight, empty.started, empty.oldest_start) == (0, 0, None)


async def test_a_store_opened_after_the_first_closed_reads_everything(database_url: str) -> None:
    first = open_store(database_url)
    await first.open()
    await first.create_run(run("r1", idempotency_key="k"))
    await first.append_events("r1", [{"event": "run_start"}, {"event": "final"}])
    await first.update_run("r1", status="succeeded", answer="yes", usage={"total_tokens": 7})
    await first.create_run(run("r2", status="running"))
    await first.close()

    second = open_store(database_url)
    await second.open()
    try:
        got = await second.get_run("acme", "r1")
        assert got is not None and (got.status, got.answer, got.total_tokens) == (
            "succeeded",
            "yes",
            7,
        )
        assert [e["event"] for _, e in await second.events("r1")] == ["run_start", "final"]
        assert await second.append_events("r1", [{"event": "late"}]) == 3
        assert (await second.create_run(run("r9", idempotency_key="k")))[0].id == "r1"
        assert await second.mark_interrupted("replica-a", "restarted") == ["r2"]
    finally:
        await second.close()


async def test_replicas_starting_together_create_the_schema_once(database_url: str) -> None:
    replicas = [open_store(database_url) for _ in range(4)]
    async with anyio.create_task_group() as tg:
        for replica in replicas:
            tg.start_soon(replica.open)
    try:
        await replicas[0].create_run(run("r1"))
        assert await replicas[3].get_run("acme", "r1") is not None
    finally:
        for replica in replicas:
            await replica.close()


async def test_a_database_from_a_newer_rlm_is_refused(database_url: str) -> None:
    store = open_store(database_url)
    await store.open()
    await store.close()
    if database_url.startswith("postgresql://"):
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("UPDATE rlm_schema SET version = 99")
    else:
        with sqlite3.connect(database_url) as conn:
            conn.execute("UPDATE rlm_schema SET version = 99")
    with pytest.raises(StoreError, match="newer"):
        await open_store(database_url).open()


async def test_tokens_used_sums_the_tenants_runs_finished_since(store: Store) -> None:
    await store.create_run(run("old", status="succeeded", finished_at=100.0, total_tokens=1000))
    await store.create_run(run("new", status="succeeded", finished_at=200.0, total_tokens=30))
    await store.create_run(run("failed", status="failed", finished_at=250.0, total_tokens=5))
    await store.create_run(run("live", status="running", total_tokens=400))
    await store.create_run(
        run("theirs", tenant="globex", status="succeeded", finished_at=300.0, total_tokens=9)
    )
    assert await store.tokens_used("acme", 200.0) == 35
    assert await store.tokens_used("acme", 0.0) == 1035
    assert await store.tokens_used("acme", 1e12) == 0
    assert await store.tokens_used("nobody", 0.0) == 0


async def test_counts_by_status_names_every_status(store: Store) -> None:
    assert await store.counts_by_status() == dict.fromkeys(RUN_STATUSES, 0)
    for n, status in enumerate(["queued", "running", "running", "failed"]):
        await store.create_run(run(f"r{n}", status=status))
    await store.create_run(run("x", tenant="globex", status="running"))
    assert await store.counts_by_status() == {
        **dict.fromkeys(RUN_STATUSES, 0),
        "queued": 1,
        "running": 3,
        "failed": 1,
    }


async def test_sqlite_writes_ahead_and_names_the_file_it_cannot_open(tmp_path: Any) -> None:
    path = tmp_path / "rlm.db"
    async with SQLiteStore(path):
        pass
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError, match=r"dir\.db"):
        await open_store(str(tmp_path / "dir.db")).open()


async def test_a_postgres_failure_never_shows_the_password() -> None:
    store = open_store("postgresql://rlm:hunter2@127.0.0.1:1/rlm", connect_timeout_s=2)
    assert "hunter2" not in repr(store)
    with pytest.raises(StoreError) as caught:
        await store.open()
    assert "hunter2" not in str(caught.value) and "127.0.0.1:1" in str(caught.value)


def test_open_store_picks_the_database_by_its_url() -> None:
    assert isinstance(open_store("rlm.db"), SQLiteStore)
    assert isinstance(open_store("sqlite:///var/rlm.db"), SQLiteStore)
    assert isinstance(open_store("postgresql://u@h/db"), PostgresStore)
    assert isinstance(open_store("postgres://u@h/db"), PostgresStore)
    with pytest.raises(ValueError, match="mysql"):
        open_store("mysql://u@h/db")


async def test_a_store_that_is_not_open_says_so(database_url: str) -> None:
    with pytest.raises(StoreError, match="not open"):
        await open_store(database_url).get_run("acme", "r1")
