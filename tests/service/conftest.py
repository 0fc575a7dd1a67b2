"""Databases for the service's tests: a real PostgreSQL server and SQLite files.

The server is ``RLM_TEST_POSTGRES_URL`` when set (scripts/test.sh sets it), else a
throwaway cluster that scripts/setup-postgres.sh makes in a temporary folder once
per test session and stops at its end. Nothing skips: a server that cannot be had
fails the tests that need it, saying what went wrong.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "scripts" / "setup-postgres.sh"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a running PostgreSQL server's test database."""
    given = os.environ.get("RLM_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    # Not tmp_path_factory: its folders are closed to the unprivileged user the
    # server runs as; a fresh folder right under the temp dir is not.
    folder = tempfile.mkdtemp(prefix="rlm-test-postgres-")
    try:
        done = subprocess.run(
            ["bash", str(SETUP), "start", folder],
            capture_output=True,
            text=True,
            timeout=600,  # the first run may install the package
        )
        if done.returncode != 0:
            pytest.fail(
                f"no PostgreSQL server for the tests: {SETUP.name} failed:\n{done.stderr}",
                pytrace=False,
            )
        yield done.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(SETUP), "stop", folder], capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A database of this test's own: a fresh schema on the session's server, named
    in the URL's search_path, dropped afterwards. Every connection made with the URL
    (several stores, several server processes) sees the same empty tables."""
    import psycopg

    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    joiner = "&" if "?" in postgres_server else "?"
    try:
        yield f"{postgres_server}{joiner}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each kind of database the service supports, empty: a SQLite path or a
    postgresql:// URL."""
    if request.param == "sqlite":
        return str(tmp_path / "rlm.db")
    url: str = request.getfixturevalue("postgres_url")
    return url
