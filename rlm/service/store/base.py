"""What every store keeps and promises: the run record, the store's interface, and the
schema both databases share.

The store never receives a secret: tenants arrive as names (their bearer tokens are
checked and dropped in rlm.service.auth), and the provider's key lives in the
session stack. So there is nothing secret-shaped here to redact or to test for.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, get_args

RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
RUN_STATUSES: Final[tuple[RunStatus, ...]] = get_args(RunStatus)
#: A run in one of these may still change; mark_interrupted ends them.
UNFINISHED: Final[tuple[RunStatus, ...]] = ("queued", "running")


@dataclass
class RunRecord:
    id: str
    tenant: str
    profile: str
    status: RunStatus
    query: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    answer: str | None = None
    usage: dict[str, Any] | None = None
    error: str | None = None
    owner: str | None = None
    idempotency_key: str | None = None
    context_bytes: int = 0
    total_tokens: int = 0


@dataclass(frozen=True)
class TenantLoad:
    """A tenant's runs on the other replicas, as the quotas count them."""

    in_flight: int = 0
    #: Runs created since the time asked about, and the first of them.
    started: int = 0
    oldest_start: float | None = None


class Store(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def create_run(self, record: RunRecord) -> tuple[RunRecord, bool]: ...
    async def get_run(self, tenant: str, run_id: str) -> RunRecord | None: ...
    async def list_runs(self, tenant: str, limit: int = 50) -> list[RunRecord]: ...
    async def update_run(self, run_id: str, **fields: Any) -> None: ...
    async def append_events(self, run_id: str, events: Sequence[dict[str, Any]]) -> int: ...
    async def events(
        self, run_id: str, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, dict[str, Any]]]: ...
    async def mark_interrupted(self, owner: str, reason: str) -> list[str]: ...
    async def heartbeat(self, replica: str, now: float) -> None: ...
    async def silent_owners(self, before: float) -> list[str]: ...
    async def others_load(self, tenant: str, since: float, owner: str) -> TenantLoad: ...
    async def tokens_used(self, tenant: str, since: float) -> int: ...
    async def counts_by_status(self) -> dict[str, int]: ...


class StoreError(Exception):
    """The database cannot be used as it is (a newer schema, a run that is not there)."""


class UnknownRun(StoreError, LookupError):
    pass


# Column order of rlm_runs as the queries read it back; the same in both databases.
COLUMNS: Final = tuple(field.name for field in dataclasses.fields(RunRecord))
#: Fields update_run may change: who the run belongs to and what it asked are fixed.
UPDATABLE: Final = frozenset(COLUMNS) - {
    "id",
    "tenant",
    "profile",
    "query",
    "created_at",
    "idempotency_key",
}

# One statement per entry, applied in order inside one transaction per version. The
# types are spelled so that SQLite and PostgreSQL both take them: DOUBLE PRECISION and
# BIGINT are valid SQLite type names (REAL and INTEGER affinity). Timestamps are epoch
# seconds; usage and events are JSON text so both databases give back what was stored,
# key order included. `last_seq` is the run's event counter: append_events bumps it in
# the same transaction as its inserts, so the row lock (PostgreSQL) or the write lock
# (SQLite) makes seq numbers unique and gapless across processes and replicas.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE rlm_runs (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            profile TEXT NOT NULL,
            status TEXT NOT NULL,
            query TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            started_at DOUBLE PRECISION,
            finished_at DOUBLE PRECISION,
            answer TEXT,
            usage TEXT,
            error TEXT,
            owner TEXT,
            idempotency_key TEXT,
            context_bytes BIGINT NOT NULL DEFAULT 0,
            total_tokens BIGINT NOT NULL DEFAULT 0,
            last_seq BIGINT NOT NULL DEFAULT 0,
            UNIQUE (tenant, idempotency_key)
        )""",
        "CREATE INDEX rlm_runs_by_tenant ON rlm_runs (tenant, created_at)",
        "CREATE INDEX rlm_runs_by_owner ON rlm_runs (owner, status)",
        "CREATE INDEX rlm_runs_by_finish ON rlm_runs (tenant, finished_at)",
        "CREATE INDEX rlm_runs_by_status ON rlm_runs (status)",
        """CREATE TABLE rlm_events (
            run_id TEXT NOT NULL REFERENCES rlm_runs (id) ON DELETE CASCADE,
            seq BIGINT NOT NULL,
            data TEXT NOT NULL,
            PRIMARY KEY (run_id, seq)
        )""",
    ),
    # Replicas say they are alive here, so that one can tell when another (on
    # another host, whose processes it cannot see) has died with runs in flight.
    (
        """CREATE TABLE rlm_replicas (
            id TEXT PRIMARY KEY,
            heartbeat DOUBLE PRECISION NOT NULL
        )""",
    ),
)
#: The schema this code writes. A database at a higher version was written by a newer
#: rlm, which this one refuses rather than misreads.
SCHEMA_VERSION: Final = len(MIGRATIONS)
#: Where the version lives: one row, read and raised in the migrating transaction.
VERSION_TABLE: Final = "CREATE TABLE IF NOT EXISTS rlm_schema (version INTEGER NOT NULL)"

# The queries both stores run, in psycopg's %s style (the SQLite store swaps in ?).
# Column names are only ever spliced in from COLUMNS / UPDATABLE, never from callers.
_COLS: Final = ", ".join(COLUMNS)
INSERT_RUN: Final = (
    f"INSERT INTO rlm_runs ({_COLS}) VALUES ({', '.join('%s' for _ in COLUMNS)}) "
    "ON CONFLICT (tenant, idempotency_key) DO NOTHING RETURNING id"
)
RUN_BY_ID: Final = f"SELECT {_COLS} FROM rlm_runs WHERE id = %s AND tenant = %s"
RUN_BY_KEY: Final = f"SELECT {_COLS} FROM rlm_runs WHERE tenant = %s AND idempotency_key = %s"
LIST_RUNS: Final = (
    f"SELECT {_COLS} FROM rlm_runs WHERE tenant = %s ORDER BY created_at DESC, id DESC LIMIT %s"
)
BUMP_SEQ: Final = "UPDATE rlm_runs SET last_seq = last_seq + %s WHERE id = %s RETURNING last_seq"
LAST_SEQ: Final = "SELECT last_seq FROM rlm_runs WHERE id = %s"
INSERT_EVENT: Final = "INSERT INTO rlm_events (run_id, seq, data) VALUES (%s, %s, %s)"
READ_EVENTS: Final = (
    "SELECT seq, data FROM rlm_events WHERE run_id = %s AND seq > %s ORDER BY seq LIMIT %s"
)
INTERRUPT: Final = (
    "UPDATE rlm_runs SET status = 'interrupted', error = %s, finished_at = %s "
    "WHERE owner = %s AND status IN ('queued', 'running') RETURNING id"
)
HEARTBEAT: Final = (
    "INSERT INTO rlm_replicas (id, heartbeat) VALUES (%s, %s) "
    "ON CONFLICT (id) DO UPDATE SET heartbeat = EXCLUDED.heartbeat"
)
#: Replicas owning runs in flight that have not said they are alive since %s (or
#: never did: the runs of a replica of an older rlm, or of a replica that died
#: before its first heartbeat).
SILENT_OWNERS: Final = (
    "SELECT DISTINCT r.owner FROM rlm_runs r LEFT JOIN rlm_replicas p ON p.id = r.owner "
    "WHERE r.status IN ('queued', 'running') AND r.owner IS NOT NULL "
    "AND (p.heartbeat IS NULL OR p.heartbeat < %s)"
)
#: A tenant's runs of owners other than %s: in flight, created since %s, the first.
OTHERS_LOAD: Final = (
    "SELECT COALESCE(SUM(CASE WHEN status IN ('queued', 'running') THEN 1 ELSE 0 END), 0), "
    "COALESCE(SUM(CASE WHEN created_at >= %s THEN 1 ELSE 0 END), 0), "
    "MIN(CASE WHEN created_at >= %s THEN created_at END) "
    "FROM rlm_runs WHERE tenant = %s AND owner <> %s "
    "AND (status IN ('queued', 'running') OR created_at >= %s)"
)


def others_load_params(tenant: str, since: float, owner: str) -> tuple[Any, ...]:
    return (since, since, tenant, owner, since)


def tenant_load(row: Sequence[Any] | None) -> TenantLoad:
    if row is None:
        return TenantLoad()
    return TenantLoad(int(row[0]), int(row[1]), None if row[2] is None else float(row[2]))


TOKENS_USED: Final = (
    "SELECT COALESCE(SUM(total_tokens), 0) FROM rlm_runs WHERE tenant = %s AND finished_at >= %s"
)
COUNTS: Final = "SELECT status, COUNT(*) FROM rlm_runs GROUP BY status"


def check_version(found: int, where: str) -> None:
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"{where} has schema version {found}, newer than this rlm's {SCHEMA_VERSION}: "
            "it was written by a newer rlm; upgrade rlm or point [server] database elsewhere"
        )


def check_record(record: RunRecord) -> None:
    if record.status not in RUN_STATUSES:
        raise ValueError(f"unknown run status {record.status!r}")


def insert_params(record: RunRecord) -> tuple[Any, ...]:
    check_record(record)
    values = dataclasses.astuple(record)
    index = COLUMNS.index("usage")
    return (*values[:index], _dump_usage(record.usage), *values[index + 1 :])


def record_from_row(row: Sequence[Any]) -> RunRecord:
    values = dict(zip(COLUMNS, row, strict=True))
    if values["usage"] is not None:
        values["usage"] = json.loads(values["usage"])
    return RunRecord(**values)


def update_statement(run_id: str, fields: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """The UPDATE for update_run. A usage with a ``total_tokens`` also sets the
    run's total_tokens unless the caller gave one, so tokens_used sees every run's
    spending without each caller remembering to copy it."""
    unknown = set(fields) - UPDATABLE
    if unknown:
        raise ValueError(f"update_run cannot set {sorted(unknown)}; it may set {sorted(UPDATABLE)}")
    if not fields:
        raise ValueError("update_run needs at least one field")
    values = dict(fields)
    if "status" in values and values["status"] not in RUN_STATUSES:
        raise ValueError(f"unknown run status {values['status']!r}")
    usage = values.get("usage")
    if "total_tokens" not in values and isinstance(usage, Mapping):
        total = usage.get("total_tokens")
        if isinstance(total, int) and not isinstance(total, bool):
            values["total_tokens"] = total
    if "usage" in values:
        values["usage"] = _dump_usage(values["usage"])
    names = sorted(values)
    assignments = ", ".join(f"{name} = %s" for name in names)
    return (
        f"UPDATE rlm_runs SET {assignments} WHERE id = %s RETURNING id",
        (*(values[name] for name in names), run_id),
    )


def encode_event(event: Mapping[str, Any]) -> str:
    # default=str: an event with an odd value (a Path, an exception) is still kept,
    # as its text, rather than failing the run's whole batch of events.
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=str)


def decode_event(data: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(data)
    return event


def _dump_usage(usage: Mapping[str, Any] | None) -> str | None:
    return None if usage is None else json.dumps(usage, separators=(",", ":"), default=str)


def status_counts(rows: Sequence[Sequence[Any]]) -> dict[str, int]:
    """Every status, zero included: a Prometheus series should not vanish when its
    last run moves on."""
    counts: dict[str, int] = dict.fromkeys(RUN_STATUSES, 0)
    for status, count in rows:
        counts[str(status)] = int(count)
    return counts
