"""Retention: JOB_RETENTION_DAYS removes old jobs' rows and files (SQLite + local folder,
PostgreSQL + S3), from `python -m downloader cleanup` and from a running worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import func, select
from sqlmodel import col

from downloader import retention
from downloader.db import Database, open_database
from downloader.engine import Engine
from downloader.models import Image, ImageStatus, Job, JobStatus, Product, RejectedRow
from downloader.settings import load_settings
from downloader.storage import LocalStorage, Storage, image_key, make_storage

DAY = 86_400.0
NOW = 2_000_000_000.0  # a fixed "now" for the tests


def make_job(
    db: Database,
    storage: Storage,
    tmp: Path,
    *,
    status: str,
    age_days: float,
    images: int = 3,
    finished_age_days: float | None = None,
    leased: bool = False,
) -> str:
    """A job created `age_days` before NOW with `images` done images stored as files."""
    created = NOW - age_days * DAY
    finished = None
    if status in (JobStatus.COMPLETED, JobStatus.CANCELLED):
        finished = NOW - (age_days if finished_age_days is None else finished_age_days) * DAY
    with db.write() as session:
        job = Job(status=status, created_at=created, finished_at=finished, images=images)
        session.add(job)
        session.flush()
        job_id = job.id
        product = Product(job_id=job_id, number="P1", position=1, image_count=images)
        session.add(product)
        session.flush()
        assert product.id is not None
        product_id = product.id
        session.add(RejectedRow(job_id=job_id, row=2, reason="bad url"))
        for pos in range(1, images + 1):
            key = image_key(job_id, product_id, pos, "jpg")
            session.add(
                Image(
                    job_id=job_id,
                    product_id=product_id,
                    position=pos,
                    url=f"http://127.0.0.2/{pos}.jpg",
                    status=ImageStatus.DOWNLOADING if leased and pos == 1 else ImageStatus.DONE,
                    storage_key=key,
                    lease_owner="w" if leased and pos == 1 else None,
                )
            )
    for pos in range(1, images + 1):
        part = tmp / f"{os.getpid()}-{job_id}-{pos}.part"
        part.write_bytes(b"\xff\xd8\xff" + f"{job_id}/{pos}".encode())
        storage.put(part, image_key(job_id, product_id, pos, "jpg"))
    return job_id


def row_counts(db: Database, job_id: str) -> dict[str, int]:
    counts = {}
    tables: list[Any] = [Image, Product, RejectedRow]
    with db.read() as session:
        for table in tables:
            counts[table.__name__] = session.execute(
                select(func.count()).select_from(table).where(table.job_id == job_id)
            ).scalar_one()
        counts["Job"] = 1 if session.get(Job, job_id) else 0
    return counts


def job_keys(db: Database, job_id: str) -> list[str]:
    with db.read() as session:
        return [
            k
            for k in session.execute(
                select(col(Image.storage_key)).where(col(Image.job_id) == job_id)
            ).scalars()
            if k
        ]


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Database:
    return open_database(f"sqlite:///{tmp_path / 'app.db'}")


@pytest.fixture
def local(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "media")


def scenario(db: Database, storage: Storage, tmp: Path) -> dict[str, str]:
    return {
        "old_completed": make_job(db, storage, tmp, status=JobStatus.COMPLETED, age_days=40),
        "old_cancelled": make_job(db, storage, tmp, status=JobStatus.CANCELLED, age_days=31),
        "old_paused": make_job(db, storage, tmp, status=JobStatus.PAUSED, age_days=45),
        # created long ago but finished recently (a retried job): kept
        "recent_finish": make_job(
            db, storage, tmp, status=JobStatus.COMPLETED, age_days=60, finished_age_days=2
        ),
        "new_completed": make_job(db, storage, tmp, status=JobStatus.COMPLETED, age_days=1),
        # never removed while work may still happen
        "old_running": make_job(db, storage, tmp, status=JobStatus.RUNNING, age_days=90),
        "old_queued": make_job(db, storage, tmp, status=JobStatus.QUEUED, age_days=90),
        "old_leased": make_job(
            db, storage, tmp, status=JobStatus.COMPLETED, age_days=90, leased=True
        ),
    }


GONE = {"old_completed", "old_cancelled", "old_paused"}


def check_scenario(db: Database, storage: Storage, ids: dict[str, str]) -> None:
    for name, job_id in ids.items():
        counts = row_counts(db, job_id)
        if name in GONE:
            assert counts == {"Image": 0, "Product": 0, "RejectedRow": 0, "Job": 0}, name
        else:
            assert counts == {"Image": 3, "Product": 1, "RejectedRow": 1, "Job": 1}, name
            assert all(storage.exists(k) for k in job_keys(db, job_id)), name


def test_old_finished_jobs_lose_rows_and_files_others_stay(
    sqlite_db: Database, local: LocalStorage, tmp_path: Path
) -> None:
    ids = scenario(sqlite_db, local, tmp_path)
    gone_keys = {name: job_keys(sqlite_db, ids[name]) for name in GONE}
    assert retention.cleanup(sqlite_db, local, 30, now=NOW) == 3
    check_scenario(sqlite_db, local, ids)
    for keys in gone_keys.values():
        assert keys and not any(local.exists(k) for k in keys)
        assert not (tmp_path / "media" / "jobs" / keys[0].split("/")[1]).exists()
    assert retention.cleanup(sqlite_db, local, 30, now=NOW) == 0  # idempotent


def test_zero_days_keeps_everything(
    sqlite_db: Database, local: LocalStorage, tmp_path: Path
) -> None:
    job_id = make_job(sqlite_db, local, tmp_path, status=JobStatus.COMPLETED, age_days=3650)
    assert retention.cleanup(sqlite_db, local, 0, now=NOW) == 0
    assert row_counts(sqlite_db, job_id)["Job"] == 1


def test_big_job_is_removed_in_short_chunks(
    sqlite_db: Database, local: LocalStorage, tmp_path: Path
) -> None:
    job_id = make_job(
        sqlite_db, local, tmp_path, status=JobStatus.COMPLETED, age_days=40, images=57
    )
    assert retention.cleanup(sqlite_db, local, 30, now=NOW, chunk=10, batch_size=1) == 1
    assert row_counts(sqlite_db, job_id)["Job"] == 0


class FailingStorage(LocalStorage):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.fail = True

    def delete_prefix(self, prefix: str) -> int:
        if self.fail:
            raise OSError("storage unreachable")
        return super().delete_prefix(prefix)


def test_a_failure_midway_leaves_the_job_for_the_next_run(
    sqlite_db: Database, tmp_path: Path
) -> None:
    storage = FailingStorage(tmp_path / "media")
    job_id = make_job(sqlite_db, storage, tmp_path, status=JobStatus.COMPLETED, age_days=40)
    with pytest.raises(OSError):
        retention.cleanup(sqlite_db, storage, 30, now=NOW)
    assert row_counts(sqlite_db, job_id)["Image"] == 3  # rows intact, job still listed
    storage.fail = False
    assert retention.cleanup(sqlite_db, storage, 30, now=NOW) == 1
    assert row_counts(sqlite_db, job_id)["Job"] == 0


@pytest.mark.postgres
def test_postgres_and_s3(pg_db: Database, s3_overrides: dict[str, Any], tmp_path: Path) -> None:
    settings = load_settings(**s3_overrides, database_url="sqlite://")
    storage = make_storage(settings)
    ids = scenario(pg_db, storage, tmp_path)
    assert retention.cleanup(pg_db, storage, 30, now=NOW) == 3
    check_scenario(pg_db, storage, ids)
    assert not list(tmp_path.glob("*.part"))  # uploaded without local copies


@pytest.mark.postgres
def test_postgres_one_cleaner_at_a_time(
    pg_db: Database, local: LocalStorage, tmp_path: Path
) -> None:
    make_job(pg_db, local, tmp_path, status=JobStatus.COMPLETED, age_days=40)
    with pg_db.engine.connect() as other:
        other.exec_driver_sql(f"SELECT pg_advisory_lock({retention._PG_CLEANUP_LOCK})")
        assert retention.cleanup(pg_db, local, 30, now=NOW) == 0  # someone else is on it
        other.exec_driver_sql(f"SELECT pg_advisory_unlock({retention._PG_CLEANUP_LOCK})")
    assert retention.cleanup(pg_db, local, 30, now=NOW) == 1


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "downloader", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cleanup_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    db = open_database(url)
    storage = LocalStorage(tmp_path / "media")
    now = time.time()
    old = make_job(
        db, storage, tmp_path, status=JobStatus.COMPLETED, age_days=(NOW - now) / DAY + 10
    )
    new = make_job(
        db, storage, tmp_path, status=JobStatus.COMPLETED, age_days=(NOW - now) / DAY + 2
    )
    env = {"DATABASE_URL": url, "MEDIA_ROOT": str(tmp_path / "media"), "JOB_RETENTION_DAYS": "30"}

    kept = cli(["cleanup"], env)  # 30 days: both are younger
    assert kept.returncode == 0, kept.stderr
    assert json.loads(kept.stdout.strip().splitlines()[-1]) == {"deleted_jobs": 0}

    done = cli(["cleanup", "--days", "5"], env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"deleted_jobs": 1}
    assert row_counts(db, old)["Job"] == 0 and row_counts(db, new)["Job"] == 1


def test_a_running_worker_removes_old_jobs_periodically(tmp_path: Path) -> None:
    settings = load_settings(
        database_url=f"sqlite:///{tmp_path / 'app.db'}",
        media_root=str(tmp_path / "media"),
        job_retention_days=30,
        worker_lease_seconds=3,
    )
    db = open_database(settings.database_url)
    storage = make_storage(settings)
    now = time.time()
    old = make_job(
        db, storage, tmp_path, status=JobStatus.COMPLETED, age_days=(NOW - now) / DAY + 31
    )
    engine = Engine(db, storage, settings, kind="worker")
    engine.retention_delay = 0.2
    engine.retention_interval = 0.5

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.run)
            with anyio.fail_after(20):
                while row_counts(db, old)["Job"]:
                    await anyio.sleep(0.1)
            engine.stop()

    anyio.run(main)
    assert row_counts(db, old) == {"Image": 0, "Product": 0, "RejectedRow": 0, "Job": 0}
