"""The store for several replicas: one PostgreSQL database, through psycopg 3's async
connections (so asyncio only, which is what uvicorn runs).

A small pool of its own (psycopg_pool is not a dependency): at most ``pool_size``
connections, opened when first needed, each in autocommit with explicit
transactions. Once a store call has its connection it runs shielded from
cancellation: a run cancelled while its events are being written still writes them,
and a connection is never handed back mid-transaction. A connection that failed or
was interrupted is closed, never reused.

Races between replicas are the database's to settle: a create with a used
idempotency key is ON CONFLICT DO NOTHING (which waits for a concurrent insert of
the same key to commit, then reads it), and append_events bumps the run's
``last_seq`` under its row lock in the same transaction as the inserts.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import psycopg

import rlm.service.store.base as base
from rlm.service.store.base import RunRecord, StoreError, UnknownRun

#: Serialises schema creation between replicas starting at once (CREATE TABLE IF NOT
#: EXISTS alone races on the catalog). Any fixed number; this one spells "rlmstore".
_MIGRATION_LOCK = 0x726C6D73746F7265


def safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


class PostgresStore:
    def __init__(self, url: str, *, pool_size: int = 4, connect_timeout_s: float = 10.0) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self._url = url
        self._pool_size = pool_size
        self._connect_timeout_s = connect_timeout_s
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots: anyio.Semaphore | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({safe_url(self._url)!r})"

    async def __aenter__(self) -> PostgresStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- the pool -------------------------------------------------------------------

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        try:
            return await psycopg.AsyncConnection.connect(
                self._url,
                autocommit=True,
                connect_timeout=max(1, round(self._connect_timeout_s)),
            )
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot connect to PostgreSQL at {safe_url(self._url)}: {exc}"
            ) from exc

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._slots is None:
            raise StoreError(f"{self!r} is not open")
        async with self._slots:
            with anyio.CancelScope(shield=True):
                conn = self._idle.pop() if self._idle else await self._connect()
                try:
                    yield conn
                except BaseException:
                    await self._give_back(conn)
                    raise
                await self._give_back(conn)

    async def _give_back(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Back to the pool when it is clean and idle, else closed."""
        idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        if not conn.closed and not conn.broken and idle:
            self._idle.append(conn)
            return
        with suppress(psycopg.Error):
            await conn.close()

    # --- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        if self._slots is not None:
            return
        self._slots = anyio.Semaphore(self._pool_size)
        try:
            async with self._conn() as conn:
                await self._migrate(conn)
        except BaseException:
            await self._close_idle()
            self._slots = None
            raise

    async def _migrate(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await conn.execute(base.VERSION_TABLE)
            cur = await conn.execute("SELECT version FROM rlm_schema")
            row = await cur.fetchone()
            if row is None:
                await conn.execute("INSERT INTO rlm_schema (version) VALUES (0)")
                version = 0
            else:
                version = int(row[0])
            base.check_version(version, safe_url(self._url))
            for statements in base.MIGRATIONS[version:]:
                for statement in statements:
                    await conn.execute(statement)
            if version < base.SCHEMA_VERSION:
                await conn.execute("UPDATE rlm_schema SET version = %s", (base.SCHEMA_VERSION,))

    async def close(self) -> None:
        if self._slots is None:
            return
        slots, self._slots = self._slots, None
        # Wait for calls in flight to hand their connections back, then close them all.
        with anyio.CancelScope(shield=True):
            for _ in range(self._pool_size):
                await slots.acquire()
            await self._close_idle()

    async def _close_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            with suppress(psycopg.Error):
                await conn.close()

    # --- runs -----------------------------------------------------------------------

    async def create_run(self, record: RunRecord) -> tuple[RunRecord, bool]:
        params = base.insert_params(record)
        async with self._conn() as conn:
            cur = await conn.execute(base.INSERT_RUN, params)
            if await cur.fetchone() is not None:
                return dataclasses.replace(record), True
            # The key's first create committed before our insert gave way (READ
            # COMMITTED: this new statement sees it).
            cur = await conn.execute(base.RUN_BY_KEY, (record.tenant, record.idempotency_key))
            row = await cur.fetchone()
        if row is None:
            raise StoreError(f"run {record.id} was neither created nor found")
        return base.record_from_row(row), False

    async def get_run(self, tenant: str, run_id: str) -> RunRecord | None:
        async with self._conn() as conn:
            cur = await conn.execute(base.RUN_BY_ID, (run_id, tenant))
            row = await cur.fetchone()
        return None if row is None else base.record_from_row(row)

    async def list_runs(self, tenant: str, limit: int = 50) -> list[RunRecord]:
        async with self._conn() as conn:
            cur = await conn.execute(base.LIST_RUNS, (tenant, max(0, limit)))
            rows = await cur.fetchall()
        return [base.record_from_row(row) for row in rows]

    async def update_run(self, run_id: str, **fields: Any) -> None:
        sql, params = base.update_statement(run_id, fields)
        async with self._conn() as conn:
            cur = await conn.execute(sql, params)
            found = await cur.fetchone()
        if found is None:
            raise UnknownRun(f"no run {run_id!r} to update")

    # --- events ---------------------------------------------------------------------

    async def append_events(self, run_id: str, events: Sequence[dict[str, Any]]) -> int:
        encoded = [base.encode_event(event) for event in events]
        async with self._conn() as conn:
            if not encoded:
                cur = await conn.execute(base.LAST_SEQ, (run_id,))
                row = await cur.fetchone()
                if row is None:
                    raise UnknownRun(f"no run {run_id!r} to append events to")
                return int(row[0])
            async with conn.transaction():
                cur = await conn.execute(base.BUMP_SEQ, (len(encoded), run_id))
                row = await cur.fetchone()
                if row is None:
                    raise UnknownRun(f"no run {run_id!r} to append events to")
                last = int(row[0])
                first = last - len(encoded) + 1
                async with conn.cursor() as many:
                    await many.executemany(
                        base.INSERT_EVENT,
                        [(run_id, first + i, data) for i, data in enumerate(encoded)],
                    )
        return last

    async def events(
        self, run_id: str, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, dict[str, Any]]]:
        async with self._conn() as conn:
            cur = await conn.execute(base.READ_EVENTS, (run_id, after, max(0, limit)))
            rows = await cur.fetchall()
        return [(int(seq), base.decode_event(data)) for seq, data in rows]

    # --- the whole store ------------------------------------------------------------

    async def mark_interrupted(self, owner: str, reason: str) -> list[str]:
        async with self._conn() as conn:
            cur = await conn.execute(base.INTERRUPT, (reason, time.time(), owner))
            rows = await cur.fetchall()
        return sorted(str(row[0]) for row in rows)

    async def heartbeat(self, replica: str, now: float) -> None:
        async with self._conn() as conn:
            await conn.execute(base.HEARTBEAT, (replica, now))

    async def silent_owners(self, before: float) -> list[str]:
        async with self._conn() as conn:
            cur = await conn.execute(base.SILENT_OWNERS, (before,))
            rows = await cur.fetchall()
        return sorted(str(row[0]) for row in rows)

    async def others_load(self, tenant: str, since: float, owner: str) -> base.TenantLoad:
        params = base.others_load_params(tenant, since, owner)
        async with self._conn() as conn:
            cur = await conn.execute(base.OTHERS_LOAD, params)
            return base.tenant_load(await cur.fetchone())

    async def tokens_used(self, tenant: str, since: float) -> int:
        async with self._conn() as conn:
            cur = await conn.execute(base.TOKENS_USED, (tenant, since))
            row = await cur.fetchone()
        return 0 if row is None else int(row[0])

    async def counts_by_status(self) -> dict[str, int]:
        async with self._conn() as conn:
            cur = await conn.execute(base.COUNTS)
            rows = await cur.fetchall()
        return base.status_counts(rows)
