"""Database engine, sessions and migrations for SQLite (default) and PostgreSQL.

SQLite runs in WAL mode with a busy timeout; every write transaction starts with
BEGIN IMMEDIATE so two writers queue on the lock instead of deadlocking on an upgrade from
a read lock. Reads use plain deferred transactions and never block the writer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    MetaData,
    PrimaryKeyConstraint,
    Result,
    String,
    Table,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlmodel import Session, SQLModel

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_PG_MIGRATION_LOCK = 726_473_001  # arbitrary advisory-lock key for concurrent starts

# The table Alembic keeps its revision in, declared exactly as Alembic creates it, so that a
# schema built without Alembic (see Database._create_schema_if_empty) is stamped the same way.
_ALEMBIC_VERSION = Table(
    "alembic_version",
    MetaData(),
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)


def normalize_url(url: str) -> URL:
    """Accept plain postgresql:// URLs and use psycopg 3 for them."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


class Database:
    """One engine per process; `read()` and `write()` hand out explicit sessions."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = normalize_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self.is_postgres = self.url.get_backend_name() == "postgresql"
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            self._ensure_sqlite_folder()
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 60}
        else:
            kwargs.update(pool_pre_ping=True, pool_size=5, max_overflow=10)
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.is_sqlite:
            _install_sqlite_pragmas(self.engine)
        self.write_engine: Engine = self.engine.execution_options(bid_write=True)

    def _ensure_sqlite_folder(self) -> None:
        database = self.url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.engine) as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction, committed on success and rolled back on error."""
        with Session(self.write_engine) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def migrate(self, revision: str = "head") -> None:
        """Bring the schema to the newest migration (or `revision`); safe when several
        processes start."""
        if revision == "head":
            if self.schema_is_current():
                return  # the common start: skip importing Alembic (a second of CPU)
            # A brand-new SQLite file: build it from the models, also without Alembic. If
            # another process got there first, its schema is complete (one transaction).
            if self.is_sqlite and (self._create_schema_if_empty() or self.schema_is_current()):
                return
        self._upgrade_with_alembic(revision)

    def _create_schema_if_empty(self) -> bool:
        """Create the head schema from the SQLModel tables and stamp it for Alembic, if the
        SQLite database has no tables at all. Importing Alembic alone costs ~0.5 s of CPU,
        paid by every start on a fresh file; the tests check that the models and the
        migrations build the same schema. True when this call created it."""
        import downloader.models  # noqa: F401  (registers the tables on SQLModel.metadata)

        with self.write_engine.begin() as conn:  # BEGIN IMMEDIATE: one creator at a time
            if not _sqlite_is_empty(conn):
                return False
            SQLModel.metadata.create_all(conn, checkfirst=False)
            _ALEMBIC_VERSION.create(conn)
            conn.execute(_ALEMBIC_VERSION.insert().values(version_num=newest_revision()))
        return True

    def _upgrade_with_alembic(self, revision: str) -> None:
        from alembic import command
        from alembic.config import Config

        with self.write_engine.connect() as conn:
            if self.is_postgres:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            try:
                config = Config()
                config.set_main_option("script_location", str(MIGRATIONS_DIR))
                config.attributes["connection"] = conn
                command.upgrade(config, revision)
                conn.commit()
            finally:
                if self.is_postgres:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
                    conn.commit()

    def schema_is_current(self) -> bool:
        try:
            with self.engine.connect() as conn:
                current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except Exception:
            return False  # no schema yet
        return current == newest_revision()

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


def _install_sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below decide how transactions start.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Deleted rows are overwritten with zeros, not left in free pages: a deleted job's
        # request headers (cookies, tokens) leave the file (most builds have it on already).
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("bid_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _sqlite_is_empty(conn: Connection) -> bool:
    """No table, index, view or trigger besides SQLite's internal sqlite_* ones."""
    found = conn.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE substr(name, 1, 7) <> 'sqlite_' LIMIT 1"
    ).first()
    return found is None


def newest_revision() -> str:
    """The head revision id, read from the migration files' names (NNNN_description.py)."""
    names = sorted(p.name for p in (MIGRATIONS_DIR / "versions").glob("[0-9]*.py"))
    return names[-1].split("_", 1)[0]


def open_database(url: str, *, migrate: bool = True) -> Database:
    database = Database(url)
    if migrate:
        database.migrate()
    return database


def placeholder(conn: Connection) -> str:
    """The driver's positional placeholder for `exec_driver_sql`: ? for sqlite3, %s for
    psycopg."""
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE/DELETE touched (Session.execute is typed as returning a plain Result)."""
    return int(getattr(result, "rowcount", 0) or 0)
