"""The durable work queue: claiming images under leases and recording results in batches.

Every function takes the Database explicitly and runs one short write transaction. On
SQLite those transactions are serialised by BEGIN IMMEDIATE; on PostgreSQL claims use
FOR UPDATE SKIP LOCKED so concurrent workers never take the same image.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select, text, update
from sqlmodel import Session

from downloader.db import Database, placeholder, rowcount
from downloader.models import (
    IMAGE,
    JOB,
    PENDING_IMAGE_STATUSES,
    ImageStatus,
    JobStatus,
)

# Plain strings for the driver-level statements, which bypass SQLAlchemy's type handling.
_QUEUED = ImageStatus.QUEUED.value
_DOWNLOADING = ImageStatus.DOWNLOADING.value
_DONE = ImageStatus.DONE.value
_DUPLICATE = ImageStatus.DUPLICATE.value
_PENDING = tuple(status.value for status in PENDING_IMAGE_STATUSES)


@dataclass(frozen=True, slots=True)
class Claim:
    """One image handed to a worker under its lease."""

    image_id: int
    job_id: str
    product_id: int
    position: int
    url: str
    attempts: int
    leased_until: float = 0.0  # the lease's end as the claim wrote it (leases.LeaseBook)


@dataclass(slots=True)
class Result:
    """What a worker learned about one image; written back in batches."""

    image_id: int
    status: str
    attempts: int
    error_code: str | None = None
    error: str | None = None
    http_status: int | None = None
    sha256: str | None = None
    crc32: int | None = None
    size_bytes: int | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    storage_key: str | None = None


@dataclass(slots=True)
class FlushReport:
    written: int
    stale: int  # results dropped because this worker no longer held the lease
    completed_jobs: list[str]
    duplicate_keys: list[str]  # storage keys of files that turned out duplicates


# ---------------------------------------------------------------- claiming


def claim(
    db: Database,
    worker_id: str,
    limit: int,
    lease_seconds: float,
    *,
    job_id: str | None = None,
) -> list[Claim]:
    """Lease up to `limit` queued images of the oldest active jobs to this worker."""
    if limit <= 0:
        return []
    now = time.time()
    claims: list[Claim] = []
    with db.write() as session:
        job_query = select(JOB.c.id, JOB.c.status).where(
            JOB.c.status.in_([JobStatus.QUEUED, JobStatus.RUNNING])
        )
        if job_id is not None:
            job_query = job_query.where(JOB.c.id == job_id)
        jobs = session.execute(job_query.order_by(JOB.c.created_at)).all()
        for active_job_id, status in jobs:
            wanted = limit - len(claims)
            if wanted <= 0:
                break
            rows = _claim_from_job(
                db, session, active_job_id, worker_id, wanted, now + lease_seconds
            )
            if rows and status == JobStatus.QUEUED:
                session.execute(
                    update(JOB)
                    .where(JOB.c.id == active_job_id, JOB.c.status == JobStatus.QUEUED)
                    .values(status=JobStatus.RUNNING, started_at=now)
                )
            claims.extend(rows)
    claims.sort(key=lambda c: c.image_id)
    return claims


def _claim_from_job(
    db: Database, session: Session, job_id: str, worker_id: str, limit: int, expires: float
) -> list[Claim]:
    """Lease the job's first `limit` queued images and read them back, in one statement.

    Driver-level SQL (as every per-batch statement here): built by SQLAlchemy, the three
    statements this replaced cost more CPU than SQLite took to run them (bench_queue.py)."""
    conn = session.connection()
    m = placeholder(conn)
    lock = " FOR UPDATE SKIP LOCKED" if db.is_postgres else ""
    rows = conn.exec_driver_sql(
        f"UPDATE image SET status = {m}, lease_owner = {m}, lease_expires = {m}"
        f" WHERE id IN (SELECT id FROM image WHERE job_id = {m} AND status = {m}"
        f" ORDER BY id LIMIT {m}{lock})"
        " RETURNING id, job_id, product_id, position, url, attempts",
        (_DOWNLOADING, worker_id, expires, job_id, _QUEUED, limit),
    )
    return [
        Claim(image_id, job, product_id, position, url, attempts, leased_until=expires)
        for image_id, job, product_id, position, url, attempts in rows
    ]


def renew_lease(db: Database, worker_id: str, image_id: int, lease_seconds: float) -> bool:
    """Extend this worker's lease on one image; False when the image is no longer its own
    (taken over after the lease expired, or already settled)."""
    with db.write() as session:
        renewed = session.execute(
            update(IMAGE)
            .where(
                IMAGE.c.id == image_id,
                IMAGE.c.lease_owner == worker_id,
                IMAGE.c.status == ImageStatus.DOWNLOADING,
            )
            .values(lease_expires=time.time() + lease_seconds)
        )
        return rowcount(renewed) == 1


# ---------------------------------------------------------------- results


_RESULT_COLUMNS = (
    "status",
    "attempts",
    "error_code",
    "error",
    "http_status",
    "sha256",
    "crc32",
    "size_bytes",
    "format",
    "width",
    "height",
    "storage_key",
)
_result_values = operator.attrgetter(*_RESULT_COLUMNS[1:])  # after the status, in one call


def record_results(db: Database, worker_id: str, results: Sequence[Result]) -> FlushReport:
    """Write a batch of results in one transaction, then settle finished products and jobs.

    Only results for images this worker still leases are written (a lease that expired and
    was taken over belongs to the new owner), so no image is ever recorded twice.
    """
    report = FlushReport(written=0, stale=0, completed_jobs=[], duplicate_keys=[])
    if not results:
        return report
    now = time.time()
    ids = [r.image_id for r in results]
    with db.write() as session:
        conn = session.connection()
        m = placeholder(conn)
        assignments = ", ".join(f"{name} = {m}" for name in _RESULT_COLUMNS)
        # executemany with plain tuples: the driver reports the summed rowcount
        outcome = conn.exec_driver_sql(
            f"UPDATE image SET {assignments}, lease_owner = NULL, lease_expires = NULL,"
            f" updated_at = {m} WHERE id = {m} AND lease_owner = {m}",
            [
                (str(r.status), *_result_values(r), now, r.image_id, worker_id)
                for r in sorted(results, key=lambda r: r.image_id)  # one lock order for all
            ],
        )
        written = rowcount(outcome)
        report.written = written
        report.stale = len(results) - written
        touched = conn.exec_driver_sql(
            f"SELECT DISTINCT job_id, product_id FROM image WHERE id IN {_marks(m, len(ids))}",
            tuple(ids),
        ).all()
        product_ids = sorted({product_id for _, product_id in touched})
        job_ids = sorted({job for job, _ in touched})
        if db.is_postgres:
            _lock_jobs_for_settling(session, job_ids)
        report.duplicate_keys = _settle_products(session, product_ids)
        report.completed_jobs = _settle_jobs(session, job_ids, now)
    return report


def _marks(mark: str, count: int) -> str:
    """A parenthesised list of `count` placeholders, for IN."""
    return "(" + ", ".join([mark] * count) + ")"


_PG_SETTLE_LOCK = 726_473_002  # advisory-lock class for settling one job's products


def _lock_jobs_for_settling(session: Session, job_ids: Sequence[str]) -> None:
    """PostgreSQL: serialise settling per job until commit.

    Under READ COMMITTED two workers recording the last images of one product at the same
    time do not see each other's uncommitted rows, so each would think the other's images
    are still pending and nobody would settle the product or complete the job. Holding a
    transaction-level lock per job (taken in sorted order, so no deadlock) makes the second
    writer's settle queries run after the first one committed.
    """
    for job_id in job_ids:
        session.execute(
            text("SELECT pg_advisory_xact_lock(:cls, hashtext(:job))"),
            {"cls": _PG_SETTLE_LOCK, "job": job_id},
        )


def _settle_products(session: Session, product_ids: Sequence[int]) -> list[str]:
    """Mark same-bytes images as duplicates once every image of their product is final.

    Waiting for the whole product makes "the later image is the duplicate" follow input
    order, not the order downloads happened to finish in.
    """
    if not product_ids:
        return []
    conn = session.connection()
    m = placeholder(conn)
    # Products with nothing pending, and the images already downloaded in them.
    rows = conn.exec_driver_sql(
        f"SELECT id, product_id, sha256, storage_key FROM image WHERE status = {m}"
        f" AND product_id IN (SELECT product_id FROM image WHERE product_id IN"
        f" {_marks(m, len(product_ids))} GROUP BY product_id"
        f" HAVING SUM(CASE WHEN status IN {_marks(m, len(_PENDING))}"
        " THEN 1 ELSE 0 END) = 0) ORDER BY product_id, position",
        (_DONE, *product_ids, *_PENDING),
    ).all()
    first_by_hash: dict[tuple[int, str], int] = {}
    duplicates: list[tuple[str, int, int]] = []
    keys: list[str] = []
    for image_id, product_id, sha, key in rows:
        original = first_by_hash.setdefault((product_id, sha), image_id)
        if original != image_id:
            duplicates.append((_DUPLICATE, original, image_id))
            if key:
                keys.append(key)
    if duplicates:
        conn.exec_driver_sql(
            f"UPDATE image SET status = {m}, duplicate_of_id = {m}, storage_key = NULL"
            f" WHERE id = {m}",
            duplicates,
        )
    return keys


def _settle_jobs(session: Session, job_ids: Iterable[str], now: float) -> list[str]:
    completed: list[str] = []
    for job_id in job_ids:
        pending = session.execute(
            select(IMAGE.c.id)
            .where(
                IMAGE.c.job_id == job_id,
                IMAGE.c.status.in_(PENDING_IMAGE_STATUSES),
            )
            .limit(1)
        ).first()
        if pending is None:
            done = session.execute(
                update(JOB)
                .where(JOB.c.id == job_id, JOB.c.status == JobStatus.RUNNING)
                .values(status=JobStatus.COMPLETED, finished_at=now)
            )
            if rowcount(done):
                completed.append(job_id)
    return completed


def settle_job(db: Database, job_id: str) -> bool:
    """Complete a running job with nothing pending (e.g. all its rows were rejected)."""
    with db.write() as session:
        return bool(_settle_jobs(session, [job_id], time.time()))


def release_claims(db: Database, worker_id: str, image_ids: Sequence[int]) -> None:
    """Give unfinished claims back to the queue (graceful shutdown)."""
    if not image_ids:
        return
    with db.write() as session:
        session.execute(
            update(IMAGE)
            .where(
                IMAGE.c.id.in_(image_ids),
                IMAGE.c.lease_owner == worker_id,
                IMAGE.c.status == ImageStatus.DOWNLOADING,
            )
            .values(status=ImageStatus.QUEUED, lease_owner=None, lease_expires=None)
        )


def job_is_active(db: Database, job_id: str) -> bool:
    with db.read() as session:
        status = session.execute(
            select(JOB.c.status).where(JOB.c.id == job_id)
        ).scalar_one_or_none()
    return status in (JobStatus.QUEUED, JobStatus.RUNNING)


def pending_count(db: Database, job_id: str) -> int:
    with db.read() as session:
        value = session.execute(
            select(func.count())
            .select_from(IMAGE)
            .where(
                IMAGE.c.job_id == job_id,
                IMAGE.c.status.in_(PENDING_IMAGE_STATUSES),
            )
        ).scalar_one()
    return int(value)


def has_claimable_work(db: Database, job_id: str | None = None) -> bool:
    with db.read() as session:
        query = (
            select(IMAGE.c.id)
            .join(JOB, JOB.c.id == IMAGE.c.job_id)
            .where(
                JOB.c.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]),
                IMAGE.c.status == ImageStatus.QUEUED,
            )
        )
        if job_id is not None:
            query = query.where(IMAGE.c.job_id == job_id)
        return session.execute(query.limit(1)).first() is not None
