"""A brand-new SQLite file gets its schema from the models, without Alembic; it must be the
schema the migrations build, stamped so that Alembic takes over from there."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect

from downloader.db import Database, newest_revision, open_database

REPO = Path(__file__).resolve().parents[1]


def schema_of(url: str) -> dict[str, Any]:
    """Everything about the schema that matters, reflected; columns by name, because Alembic
    appends the columns later migrations add while the models list them in place."""
    engine = create_engine(url)
    try:
        insp = inspect(engine)
        tables: dict[str, Any] = {}
        for table in sorted(insp.get_table_names()):
            tables[table] = {
                # (SQLite reflects each column's place in the primary key; the TypedDict
                # does not declare it)
                "columns": sorted(
                    (c["name"], str(c["type"]), c["nullable"], dict(c)["primary_key"], c["default"])
                    for c in insp.get_columns(table)
                ),
                "primary_key": insp.get_pk_constraint(table),
                "indexes": sorted(
                    (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                    for i in insp.get_indexes(table)
                ),
                "unique_constraints": sorted(
                    (u["name"], tuple(u["column_names"]))
                    for u in insp.get_unique_constraints(table)
                ),
                "foreign_keys": sorted(
                    (
                        tuple(fk["constrained_columns"]),
                        fk["referred_table"],
                        tuple(fk["referred_columns"]),
                        fk["options"].get("ondelete"),
                    )
                    for fk in insp.get_foreign_keys(table)
                ),
            }
        with engine.connect() as conn:
            versions = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
        return {"tables": tables, "alembic_version": [tuple(row) for row in versions]}
    finally:
        engine.dispose()


# Migration 0007 widens product.number to VARCHAR(128) only where the length is enforced: a
# SQLite file upgraded by Alembic keeps the declared VARCHAR(64) (and stores 128 characters
# all the same), a new one gets VARCHAR(128) from the models. The one difference allowed.
SQLITE_KEEPS = ("product", "number", "VARCHAR(64)", "VARCHAR(128)")


def as_declared_by_the_models(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` (reflected from a migrated SQLite file) with SQLITE_KEEPS as the models say."""
    table, column, migrated, declared = SQLITE_KEEPS
    columns = schema["tables"][table]["columns"]
    columns[:] = [
        (name, declared, *rest) if (name, type_) == (column, migrated) else (name, type_, *rest)
        for name, type_, *rest in columns
    ]
    return schema


def by_alembic(url: str) -> None:
    db = Database(url)
    try:
        db._upgrade_with_alembic("head")
    finally:
        db.dispose()


def test_a_fresh_file_gets_the_schema_the_migrations_build(tmp_path: Path) -> None:
    fast_url = f"sqlite:///{tmp_path / 'fast.db'}"
    alembic_url = f"sqlite:///{tmp_path / 'alembic.db'}"
    open_database(fast_url).dispose()
    by_alembic(alembic_url)

    fast, migrated = schema_of(fast_url), as_declared_by_the_models(schema_of(alembic_url))
    assert set(fast["tables"]) == {
        "alembic_version",
        "api_token",
        "idempotency_key",
        "image",
        "job",
        "product",
        "rejected_row",
        "worker",
    }
    assert fast == migrated
    assert fast["alembic_version"] == [(newest_revision(),)]
    assert fast["tables"]["alembic_version"]["primary_key"] == {
        "name": "alembic_version_pkc",
        "constrained_columns": ["version_num"],
    }


def test_the_migrations_match_the_models(tmp_path: Path) -> None:
    """Autogenerate finds nothing to add on a database the migrations built (but the length
    SQLite does not enforce, SQLITE_KEEPS)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    url = f"sqlite:///{tmp_path / 'alembic.db'}"
    by_alembic(url)
    db = Database(url)
    try:
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    finally:
        db.dispose()
    table, column, migrated, declared = SQLITE_KEEPS
    kept = [
        d
        for d in diff
        if isinstance(d, list)
        and [(op[0], op[2], op[3], str(op[5]), str(op[6])) for op in d]
        == [("modify_type", table, column, migrated, declared)]
    ]
    assert len(kept) == 1
    assert [d for d in diff if d not in kept] == []


def test_a_fresh_file_does_not_go_through_alembic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_alembic(self: Database, revision: str) -> None:
        raise AssertionError(f"Alembic was asked for {revision}")

    monkeypatch.setattr(Database, "_upgrade_with_alembic", no_alembic)
    db = open_database(f"sqlite:///{tmp_path / 'fresh.db'}")
    assert db.schema_is_current()
    db.dispose()


def test_a_database_with_any_table_is_left_to_alembic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'other.db'}"
    db = Database(url)
    with db.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE unrelated (x INTEGER)")
    calls: list[str] = []
    upgrade = Database._upgrade_with_alembic

    def recording(self: Database, revision: str) -> None:
        calls.append(revision)
        upgrade(self, revision)

    monkeypatch.setattr(Database, "_upgrade_with_alembic", recording)
    db.migrate()
    assert calls == ["head"]
    assert db.schema_is_current()
    assert "unrelated" in inspect(db.engine).get_table_names()
    db.dispose()


def test_alembic_takes_over_a_fresh_schema(tmp_path: Path) -> None:
    from alembic.migration import MigrationContext

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    db = open_database(url)
    with db.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == newest_revision()
    before = schema_of(url)
    db._upgrade_with_alembic("head")  # nothing to do, and no error
    open_database(url).dispose()  # a second start: nothing to do either
    assert db.schema_is_current()
    assert schema_of(url) == before
    db.dispose()


def _open_fresh(url: str, barrier: Any) -> None:
    barrier.wait(60)
    open_database(url).dispose()
    # the race's losers find the winner's schema current and skip Alembic as well
    sys.exit(3 if "alembic" in sys.modules else 0)


def test_many_processes_opening_a_fresh_file_at_once_create_it_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'race.db'}"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_open_fresh, args=(url, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert schema_of(url)["alembic_version"] == [(newest_revision(),)]


def test_opening_a_fresh_file_does_not_import_alembic(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from downloader.db import open_database\n"
        "db = open_database(sys.argv[1])\n"
        "assert db.schema_is_current()\n"
        "assert 'alembic' not in sys.modules, 'alembic was imported'\n"
    )
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    done = subprocess.run(
        [sys.executable, "-c", code, url], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert schema_of(url)["alembic_version"] == [(newest_revision(),)]
