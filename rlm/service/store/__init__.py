"""Where the service keeps its runs and their events: SQLite (WAL) for a file path,
PostgreSQL for a ``postgresql://`` URL, with the same schema and the same promises
(rlm.service.store.base). ``open_store`` only builds the store; ``await
store.open()`` connects and creates or upgrades the schema."""

from __future__ import annotations

from typing import Any

from rlm.service.store.base import (
    RUN_STATUSES,
    RunRecord,
    RunStatus,
    Store,
    StoreError,
    UnknownRun,
)
from rlm.service.store.sqlite import SQLiteStore

__all__ = [
    "RUN_STATUSES",
    "RunRecord",
    "RunStatus",
    "SQLiteStore",
    "Store",
    "StoreError",
    "UnknownRun",
    "open_store",
]

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(url: str, **options: Any) -> Store:
    """A store for ``url``: a ``postgresql://`` (or ``postgres://``) URL, or a SQLite
    file path (``sqlite:///`` in front is accepted too). Options go to the store's
    constructor (SQLite: ``busy_timeout_s``; PostgreSQL: ``pool_size``,
    ``connect_timeout_s``)."""
    if url.startswith(_POSTGRES_SCHEMES):
        # psycopg loads libpq: only a PostgreSQL deployment pays for the import.
        from rlm.service.store.postgres import PostgresStore

        return PostgresStore(url, **options)
    path = url.removeprefix("sqlite:///")
    if "://" in path:
        raise ValueError(
            f"unsupported database URL {url.split('://', 1)[0]}://...: "
            "give a SQLite file path or a postgresql:// URL"
        )
    if not path:
        raise ValueError("the database path is empty")
    return SQLiteStore(path, **options)
