"""The default store: one SQLite file in WAL mode.

One connection per store, used only from worker threads and only one at a time
(a capacity limiter of one queues callers in the event loop without holding a
thread each; a lock guards the connection itself), so the event loop never waits on
the disk. WAL lets readers run beside a writer, also in other processes: a restarted
server, or ``rlm`` tools reading the same file, see everything committed. Every
write takes the write lock up front (BEGIN IMMEDIATE): a read transaction upgraded
to a write would fail at once with SQLITE_BUSY under WAL instead of waiting out the
busy timeout.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

import rlm.service.store.base as base
from rlm.service.store.base import RunRecord, StoreError, UnknownRun

T = TypeVar("T")


def _q(sql: str) -> str:
    return sql.replace("%s", "?")


INSERT_RUN = _q(base.INSERT_RUN)
RUN_BY_ID = _q(base.RUN_BY_ID)
RUN_BY_KEY = _q(base.RUN_BY_KEY)
LIST_RUNS = _q(base.LIST_RUNS)
BUMP_SEQ = _q(base.BUMP_SEQ)
LAST_SEQ = _q(base.LAST_SEQ)
INSERT_EVENT = _q(base.INSERT_EVENT)
READ_EVENTS = _q(base.READ_EVENTS)
INTERRUPT = _q(base.INTERRUPT)
TOKENS_USED = _q(base.TOKENS_USED)
HEARTBEAT = _q(base.HEARTBEAT)
SILENT_OWNERS = _q(base.SILENT_OWNERS)
OTHERS_LOAD = _q(base.OTHERS_LOAD)


class SQLiteStore:
    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._limiter: anyio.CapacityLimiter | None = None

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    async def __aenter__(self) -> SQLiteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- plumbing -------------------------------------------------------------------

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._limiter is None:
            raise StoreError(f"{self!r} is not open")
        return await anyio.to_thread.run_sync(self._locked, fn, limiter=self._limiter)

    def _locked(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._conn is None:
                raise StoreError(f"{self!r} is closed")
            return fn(self._conn)

    @staticmethod
    @contextmanager
    def _write(conn: sqlite3.Connection) -> Iterator[None]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # --- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        if self._limiter is not None:
            return
        self._limiter = anyio.CapacityLimiter(1)
        try:
            await anyio.to_thread.run_sync(self._open_sync, limiter=self._limiter)
        except BaseException:
            self._limiter = None
            raise

    def _open_sync(self) -> None:
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # isolation_level=None: transactions are exactly the BEGIN/COMMIT
                # written here, not the sqlite3 module's implicit ones.
                conn = sqlite3.connect(
                    self.path,
                    timeout=self._busy_timeout_s,
                    isolation_level=None,
                    check_same_thread=False,
                )
            except (OSError, sqlite3.Error) as exc:
                raise StoreError(f"cannot open the SQLite database {self.path}: {exc}") from exc
            try:
                self._configure(conn)
                self._migrate(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn

    def _configure(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
        mode = self._enter_wal(conn)
        if str(mode).lower() != "wal":
            raise StoreError(
                f"{self.path}: SQLite would not use WAL mode (got {mode!r}); "
                "put the database on a local filesystem"
            )
        # NORMAL under WAL: a commit survives a crash of the process; only a power
        # loss may take the last transactions, and never corrupts the file.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")

    def _enter_wal(self, conn: sqlite3.Connection) -> str:
        # Switching a new file to WAL needs it to itself, and SQLite reports a
        # concurrent opener's lock at once instead of waiting out busy_timeout: two
        # servers starting on one new file would otherwise fail one of them.
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise StoreError(f"cannot put {self.path} in WAL mode: {exc}") from exc
                time.sleep(0.02)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        with self._write(conn):
            conn.execute(base.VERSION_TABLE)
            row = conn.execute("SELECT version FROM rlm_schema").fetchone()
            if row is None:
                conn.execute("INSERT INTO rlm_schema (version) VALUES (0)")
                version = 0
            else:
                version = int(row[0])
            base.check_version(version, str(self.path))
            for statements in base.MIGRATIONS[version:]:
                for statement in statements:
                    conn.execute(statement)
            if version < base.SCHEMA_VERSION:
                conn.execute("UPDATE rlm_schema SET version = ?", (base.SCHEMA_VERSION,))

    async def close(self) -> None:
        if self._limiter is None:
            return

        def close(conn: sqlite3.Connection) -> None:
            self._conn = None
            conn.close()

        try:
            await self._call(close)
        finally:
            self._limiter = None

    # --- runs -----------------------------------------------------------------------

    async def create_run(self, record: RunRecord) -> tuple[RunRecord, bool]:
        params = base.insert_params(record)

        def create(conn: sqlite3.Connection) -> tuple[RunRecord, bool]:
            with self._write(conn):
                if conn.execute(INSERT_RUN, params).fetchall():
                    return dataclasses.replace(record), True
                row = conn.execute(RUN_BY_KEY, (record.tenant, record.idempotency_key)).fetchone()
            if row is None:  # pragma: no cover - DO NOTHING only skips a key conflict
                raise StoreError(f"run {record.id} was neither created nor found")
            return base.record_from_row(row), False

        return await self._call(create)

    async def get_run(self, tenant: str, run_id: str) -> RunRecord | None:
        def get(conn: sqlite3.Connection) -> RunRecord | None:
            row = conn.execute(RUN_BY_ID, (run_id, tenant)).fetchone()
            return None if row is None else base.record_from_row(row)

        return await self._call(get)

    async def list_runs(self, tenant: str, limit: int = 50) -> list[RunRecord]:
        def list_(conn: sqlite3.Connection) -> list[RunRecord]:
            rows = conn.execute(LIST_RUNS, (tenant, max(0, limit))).fetchall()
            return [base.record_from_row(row) for row in rows]

        return await self._call(list_)

    async def update_run(self, run_id: str, **fields: Any) -> None:
        sql, params = base.update_statement(run_id, fields)
        sql = _q(sql)

        def update(conn: sqlite3.Connection) -> None:
            with self._write(conn):
                found = conn.execute(sql, params).fetchall()
            if not found:
                raise UnknownRun(f"no run {run_id!r} to update")

        await self._call(update)

    # --- events ---------------------------------------------------------------------

    async def append_events(self, run_id: str, events: Sequence[dict[str, Any]]) -> int:
        encoded = [base.encode_event(event) for event in events]

        def append(conn: sqlite3.Connection) -> int:
            if not encoded:
                row = conn.execute(LAST_SEQ, (run_id,)).fetchone()
                if row is None:
                    raise UnknownRun(f"no run {run_id!r} to append events to")
                return int(row[0])
            with self._write(conn):
                row = conn.execute(BUMP_SEQ, (len(encoded), run_id)).fetchone()
                if row is None:
                    raise UnknownRun(f"no run {run_id!r} to append events to")
                last = int(row[0])
                first = last - len(encoded) + 1
                conn.executemany(
                    INSERT_EVENT,
                    [(run_id, first + i, data) for i, data in enumerate(encoded)],
                )
            return last

        return await self._call(append)

    async def events(
        self, run_id: str, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, dict[str, Any]]]:
        def read(conn: sqlite3.Connection) -> list[tuple[int, str]]:
            return conn.execute(READ_EVENTS, (run_id, after, max(0, limit))).fetchall()

        rows = await self._call(read)
        return [(int(seq), base.decode_event(data)) for seq, data in rows]

    # --- the whole store ------------------------------------------------------------

    async def mark_interrupted(self, owner: str, reason: str) -> list[str]:
        def interrupt(conn: sqlite3.Connection) -> list[str]:
            with self._write(conn):
                rows = conn.execute(INTERRUPT, (reason, time.time(), owner)).fetchall()
            return sorted(str(row[0]) for row in rows)

        return await self._call(interrupt)

    async def heartbeat(self, replica: str, now: float) -> None:
        def beat(conn: sqlite3.Connection) -> None:
            with self._write(conn):
                conn.execute(HEARTBEAT, (replica, now))

        await self._call(beat)

    async def silent_owners(self, before: float) -> list[str]:
        def silent(conn: sqlite3.Connection) -> list[str]:
            return sorted(str(row[0]) for row in conn.execute(SILENT_OWNERS, (before,)))

        return await self._call(silent)

    async def others_load(self, tenant: str, since: float, owner: str) -> base.TenantLoad:
        params = base.others_load_params(tenant, since, owner)

        def load(conn: sqlite3.Connection) -> base.TenantLoad:
            return base.tenant_load(conn.execute(OTHERS_LOAD, params).fetchone())

        return await self._call(load)

    async def tokens_used(self, tenant: str, since: float) -> int:
        def used(conn: sqlite3.Connection) -> int:
            return int(conn.execute(TOKENS_USED, (tenant, since)).fetchone()[0])

        return await self._call(used)

    async def counts_by_status(self) -> dict[str, int]:
        def counts(conn: sqlite3.Connection) -> list[tuple[str, int]]:
            return conn.execute(base.COUNTS).fetchall()

        return base.status_counts(await self._call(counts))
