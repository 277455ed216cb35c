"""Retention: remove jobs older than JOB_RETENTION_DAYS -- their files and their rows.

Which jobs go: completed and cancelled jobs that finished more than N days ago, and paused
jobs created more than N days ago (left paused that long, they are abandoned). Queued and
running jobs are never touched, and neither is a job with an image still leased to a worker.

Order, per job: files first (`storage.delete_prefix("jobs/<id>/")`), then the rows in short
chunked transactions (images, rejected rows, products), the job row last. A crash anywhere
leaves the job row in place, so the next run finishes the work: nothing is orphaned and
nothing is half-visible for long. Short transactions keep SQLite's single writer and
PostgreSQL's row locks free for the workers while a million-image job is removed.

Workers and the app's embedded engine call `cleanup` about once an hour (see Engine);
`python -m downloader cleanup` calls it at once. On PostgreSQL a session advisory lock lets
one process clean at a time; the others skip that round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, or_, select, text
from sqlmodel import col

from downloader.db import Database
from downloader.models import Image, ImageStatus, Job, JobStatus, Product, RejectedRow
from downloader.storage import Storage

log = logging.getLogger(__name__)

DAY = 86_400.0
ROW_CHUNK = 5_000  # rows deleted per transaction
_PG_CLEANUP_LOCK = 726_473_003  # advisory-lock key: one cleaner at a time


def job_prefixes(job_id: str) -> list[str]:
    """Every storage prefix a job's files live under."""
    return [f"jobs/{job_id}/"]


def _expired(cutoff: float) -> ColumnElement[bool]:
    finished_or_created = func.coalesce(col(Job.finished_at), col(Job.created_at))
    return or_(
        and_(
            col(Job.status).in_([JobStatus.COMPLETED, JobStatus.CANCELLED]),
            finished_or_created < cutoff,
        ),
        and_(col(Job.status) == JobStatus.PAUSED, col(Job.created_at) < cutoff),
    )


def expired_job_ids(db: Database, cutoff: float, limit: int) -> list[str]:
    """Up to `limit` jobs past retention, oldest first."""
    with db.read() as session:
        return list(
            session.execute(
                select(col(Job.id))
                .where(_expired(cutoff))
                .order_by(col(Job.created_at))
                .limit(limit)
            ).scalars()
        )


def _still_expired(db: Database, job_id: str, cutoff: float) -> bool:
    """Re-checked before each step: a job reopened meanwhile (retry) is left alone."""
    with db.read() as session:
        expired = session.execute(
            select(col(Job.id)).where(col(Job.id) == job_id, _expired(cutoff))
        ).first()
        if expired is None:
            return False
        leased = session.execute(
            select(col(Image.id))
            .where(col(Image.job_id) == job_id, col(Image.status) == ImageStatus.DOWNLOADING)
            .limit(1)
        ).first()
    return leased is None


def _delete_rows(db: Database, table: Any, job_id: str, chunk: int) -> int:
    removed = 0
    while True:
        with db.write() as session:
            ids = select(table.id).where(table.job_id == job_id).limit(chunk).scalar_subquery()
            count = session.connection().execute(delete(table).where(table.id.in_(ids))).rowcount
        removed += count
        if count < chunk:
            return removed


def delete_expired_job(
    db: Database, storage: Storage, job_id: str, cutoff: float, *, chunk: int = ROW_CHUNK
) -> bool:
    """Remove one job past retention: files, then rows. False if it no longer qualifies."""
    if not _still_expired(db, job_id, cutoff):
        return False
    files = sum(storage.delete_prefix(prefix) for prefix in job_prefixes(job_id))
    images = _delete_rows(db, Image, job_id, chunk)
    _delete_rows(db, RejectedRow, job_id, chunk)
    _delete_rows(db, Product, job_id, chunk)
    with db.write() as session:
        session.execute(delete(Job).where(col(Job.id) == job_id))
    log.info("retention: removed job %s (%d images, %d files)", job_id, images, files)
    return True


@contextmanager
def _one_cleaner(db: Database) -> Iterator[bool]:
    """PostgreSQL: True for the one process holding the cleanup lock. SQLite: always True
    (concurrent cleaners there only repeat idempotent deletes)."""
    if not db.is_postgres:
        yield True
        return
    with db.engine.connect() as conn:
        got = bool(
            conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _PG_CLEANUP_LOCK}).scalar()
        )
        conn.commit()
        try:
            yield got
        finally:
            if got:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_CLEANUP_LOCK})
                conn.commit()


def cleanup(
    db: Database,
    storage: Storage,
    retention_days: float,
    *,
    now: float | None = None,
    batch_size: int = 100,
    chunk: int = ROW_CHUNK,
) -> int:
    """Remove every job past `retention_days`; return how many went. 0 days = keep all."""
    if retention_days <= 0:
        return 0
    cutoff = (time.time() if now is None else now) - retention_days * DAY
    deleted = 0
    with _one_cleaner(db) as mine:
        if not mine:
            log.info("retention: another process is cleaning up; skipped")
            return 0
        skipped: set[str] = set()
        while True:
            batch = [
                job_id
                for job_id in expired_job_ids(db, cutoff, batch_size + len(skipped))
                if job_id not in skipped
            ]
            if not batch:
                return deleted
            for job_id in batch:
                if delete_expired_job(db, storage, job_id, cutoff, chunk=chunk):
                    deleted += 1
                else:
                    skipped.add(job_id)
