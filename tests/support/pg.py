"""A fresh PostgreSQL database per test, on the server at 127.0.0.1:5432.

Use it from any test module:

    from tests.support.pg import pg_db, pg_url  # noqa: F401  (fixtures)

    pytestmark = pytest.mark.postgres

    def test_something(pg_db):           # a migrated downloader.db.Database
        ...

    def test_other(pg_url):              # a plain postgresql:// URL (for subprocesses)
        ...

Each test gets its own database (`t_<random>`), created from the maintenance database
`test` and dropped afterwards (`WITH (FORCE)`, so a killed worker's open connection does not
keep it alive). When no server answers, the tests are skipped with a visible reason -- unless
REQUIRE_POSTGRES=1 (set by `.ci/run`), in which case they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from functools import cache

import psycopg
import pytest
from psycopg import sql

from downloader.db import Database, open_database

PG_HOST = "127.0.0.1"  # loopback only: never any other address
PG_PORT = 5432
PG_USER = "postgres"
PG_MAINTENANCE_DB = "test"


def admin_conninfo(dbname: str = PG_MAINTENANCE_DB) -> str:
    return f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={dbname} connect_timeout=3"


def database_url(dbname: str) -> str:
    """The plain URL the app accepts in DATABASE_URL."""
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{dbname}"


@cache
def server_problem() -> str | None:
    """None when the server answers; otherwise why not (checked once per test session)."""
    try:
        with psycopg.connect(admin_conninfo(), autocommit=True) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
    return None


def require_server() -> None:
    """Skip (or, with REQUIRE_POSTGRES=1, fail) when no PostgreSQL answers."""
    problem = server_problem()
    if problem is None:
        return
    reason = f"PostgreSQL is not answering on {PG_HOST}:{PG_PORT} ({problem})"
    if os.environ.get("REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{reason}; REQUIRE_POSTGRES=1 forbids skipping", pytrace=False)
    pytest.skip(reason)


def create_database() -> str:
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(admin_conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def drop_database(name: str) -> None:
    with psycopg.connect(admin_conninfo(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A plain postgresql:// URL of a new, empty database, dropped after the test."""
    require_server()
    name = create_database()
    try:
        yield database_url(name)
    finally:
        drop_database(name)


@pytest.fixture
def pg_db(pg_url: str) -> Iterator[Database]:
    """A migrated Database on a new PostgreSQL database."""
    db = open_database(pg_url)
    try:
        yield db
    finally:
        db.dispose()
