"""Any product number of 1-128 characters (issue 23), on the real PostgreSQL server, which
refuses a value longer than its VARCHAR (SQLite would store anything)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from downloader import jobs
from downloader.db import Database
from downloader.inputs import parse_text
from downloader.models import PRODUCT, REJECTED_ROW
from tests.support.pg import pg_db, pg_url  # noqa: F401  (fixtures)

# 128 characters with accents and the characters real SKUs carry (multi-byte in UTF-8:
# PostgreSQL's VARCHAR counts characters, not bytes)
LONGEST = ("Größe 42/É.ü-" * 10)[:127] + "Z"
TOO_LONG = LONGEST + "9"


@pytest.mark.postgres
def test_a_128_character_sku_is_stored_exactly_and_129_is_rejected(
    pg_db: Database,  # noqa: F811
) -> None:
    assert len(LONGEST) == 128 and len(TOO_LONG) == 129
    text = (
        "SKU\tImage URL\r\n"
        f"{LONGEST}\thttps://img.example.invalid/a.jpg\r\n"
        f"{TOO_LONG}\thttps://img.example.invalid/b.jpg\r\n"
    )
    parsed = parse_text(text)
    assert [r.reason for r in parsed.rejected] == ["Product number is longer than 128 characters"]
    assert parsed.rejected[0].row == 3
    job = jobs.create_job(pg_db, parsed)
    with pg_db.read() as session:
        numbers = session.execute(
            select(PRODUCT.c.number).where(PRODUCT.c.job_id == job.id)
        ).scalars()
        reasons = session.execute(
            select(REJECTED_ROW.c.row, REJECTED_ROW.c.reason).where(REJECTED_ROW.c.job_id == job.id)
        ).all()
    assert list(numbers) == [LONGEST]
    assert [tuple(r) for r in reasons] == [(3, "Product number is longer than 128 characters")]


def _upgrade_from_0006_keeps_rows(url: str) -> None:
    """A database at 0006 with a job, a product and an image upgrades to the head: the rows
    stay, a 128-character number fits, and image.dhash is there (empty)."""
    db = Database(url)
    try:
        db._upgrade_with_alembic("0006")
        with db.write() as session:
            conn = session.connection()
            conn.exec_driver_sql(
                "INSERT INTO job (id, status, created_at, products, images, rejected_rows,"
                " duplicates_removed, name, source, created_by, input_sha256)"
                " VALUES ('j1', 'queued', 0, 1, 1, 0, 0, '', '', '', '')"
            )
            conn.exec_driver_sql(
                "INSERT INTO product (id, job_id, number, position, image_count)"
                " VALUES (1, 'j1', 'P-64', 1, 1)"
            )
            conn.exec_driver_sql(
                "INSERT INTO image (job_id, product_id, position, url, host, source_row, status,"
                " attempts, updated_at) VALUES ('j1', 1, 1, 'https://x.invalid/a', '', 2,"
                " 'queued', 0, 0)"
            )
        db._upgrade_with_alembic("head")
        with db.write() as session:
            conn = session.connection()
            conn.exec_driver_sql(
                "INSERT INTO product (id, job_id, number, position, image_count)"
                f" VALUES (2, 'j1', '{LONGEST}', 2, 0)"
            )
        with db.read() as session:
            conn = session.connection()
            numbers = conn.exec_driver_sql("SELECT number FROM product ORDER BY id").scalars()
            assert list(numbers) == ["P-64", LONGEST]
            hashes = conn.exec_driver_sql("SELECT dhash FROM image").scalars()
            assert list(hashes) == [None]
    finally:
        db.dispose()


@pytest.mark.postgres
def test_a_postgres_database_at_0006_upgrades(pg_url: str) -> None:  # noqa: F811
    _upgrade_from_0006_keeps_rows(pg_url)


def test_a_sqlite_file_at_0006_upgrades_with_its_foreign_keys_enforced(tmp_path: Path) -> None:
    _upgrade_from_0006_keeps_rows(f"sqlite:///{tmp_path / 'old.db'}")
