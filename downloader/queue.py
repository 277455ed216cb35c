"""The durable work queue: claiming images under leases and recording results in batches.

Every function takes the Database explicitly and runs one short write transaction. On
SQLite those transactions are serialised by BEGIN IMMEDIATE; on PostgreSQL claims use
FOR UPDATE SKIP LOCKED so concurrent workers never take the same image.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, func, select, text, update
from sqlmodel import Session, col

from downloader.db import Database
from downloader.models import (
    PENDING_IMAGE_STATUSES,
    Image,
    ImageStatus,
    Job,
    JobStatus,
    Worker,
)


@dataclass(frozen=True, slots=True)
class Claim:
    """One image handed to a worker under its lease."""

    image_id: int
    job_id: str
    product_id: int
    position: int
    url: str
    attempts: int


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


def make_worker_id(kind: str) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{kind}:{os.urandom(3).hex()}"


# ---------------------------------------------------------------- workers and leases


def register_worker(db: Database, worker_id: str, kind: str) -> None:
    with db.write() as session:
        session.add(
            Worker(id=worker_id, hostname=socket.gethostname(), pid=os.getpid(), kind=kind)
        )


def unregister_worker(db: Database, worker_id: str) -> None:
    """Release every lease this worker holds and forget it."""
    with db.write() as session:
        _release_leases(session, [worker_id])
        session.exec(delete(Worker).where(Worker.id == worker_id))  # type: ignore[call-overload]


def heartbeat(
    db: Database, worker_id: str, lease_seconds: float, in_flight: int, done_total: int
) -> None:
    """Renew this worker's row and the leases of everything it holds."""
    now = time.time()
    with db.write() as session:
        session.exec(
            update(Worker)  # type: ignore[call-overload]
            .where(Worker.id == worker_id)  # type: ignore[arg-type]
            .values(heartbeat_at=now, in_flight=in_flight, done_total=done_total)
        )
        # Rows another transaction holds (this worker's own result batch, a reaper) are
        # being settled right now: skip them instead of waiting, so no lock cycle can form.
        mine = (
            select(col(Image.id))
            .where(
                col(Image.lease_owner) == worker_id,
                col(Image.status) == ImageStatus.DOWNLOADING,
            )
            .with_for_update(skip_locked=True)
        )
        session.execute(
            update(Image)
            .where(col(Image.id).in_(mine.scalar_subquery()))
            .values(lease_expires=now + lease_seconds)
        )


def live_worker_count(db: Database, stale_after: float, kinds: Sequence[str] = ("worker", "embedded")) -> int:
    """Long-running engines that heartbeated recently (they share the deployment's limits)."""
    with db.read() as session:
        count = session.execute(
            select(func.count())
            .select_from(Worker)
            .where(
                Worker.heartbeat_at > time.time() - stale_after,  # type: ignore[arg-type]
                Worker.kind.in_(kinds),  # type: ignore[attr-defined]
            )
        ).scalar_one()
    return max(1, int(count))


def live_engines(
    db: Database, stale_after: float, kinds: Sequence[str] = ("worker", "embedded")
) -> list[str]:
    """Ids of the long-running engines that heartbeated recently, oldest first."""
    with db.read() as session:
        rows = session.execute(
            select(col(Worker.id))
            .where(
                col(Worker.heartbeat_at) > time.time() - stale_after,
                col(Worker.kind).in_(kinds),
            )
            .order_by(col(Worker.started_at), col(Worker.id))
        ).scalars()
        return list(rows)


def reap_dead_workers(db: Database, stale_after: float) -> int:
    """Return leases of workers that stopped heartbeating or whose local process died.

    A process on this host that no longer exists cannot be holding anything, so its leases
    are returned at once instead of waiting for them to expire.
    """
    now = time.time()
    host = socket.gethostname()
    with db.write() as session:
        workers = session.exec(select(Worker.id, Worker.hostname, Worker.pid, Worker.heartbeat_at)).all()  # type: ignore[call-overload]
        dead = [
            wid
            for wid, hostname, pid, beat in workers
            if beat < now - stale_after or (hostname == host and not _pid_alive(pid))
        ]
        if dead:
            _release_leases(session, dead)
            session.exec(delete(Worker).where(Worker.id.in_(dead)))  # type: ignore[call-overload, attr-defined]
        # Leases whose owner vanished without a worker row (or expired) go back too.
        stale = (
            select(col(Image.id))
            .where(col(Image.status) == ImageStatus.DOWNLOADING, col(Image.lease_expires) < now)
            .with_for_update(skip_locked=True)  # rows being written now: next round
        )
        expired = session.connection().execute(
            update(Image)
            .where(col(Image.id).in_(stale.scalar_subquery()))
            .values(status=ImageStatus.QUEUED, lease_owner=None, lease_expires=None)
        )
    return len(dead) + (expired.rowcount or 0)


def _release_leases(session: Session, worker_ids: Sequence[str]) -> None:
    session.exec(
        update(Image)  # type: ignore[call-overload]
        .where(
            Image.lease_owner.in_(worker_ids),  # type: ignore[union-attr]
            Image.status == ImageStatus.DOWNLOADING,  # type: ignore[arg-type]
        )
        .values(status=ImageStatus.QUEUED, lease_owner=None, lease_expires=None)
    )


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        job_query = select(Job.id, Job.status).where(
            Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING])  # type: ignore[attr-defined]
        )
        if job_id is not None:
            job_query = job_query.where(Job.id == job_id)
        jobs = session.exec(job_query.order_by(Job.created_at)).all()  # type: ignore[call-overload, arg-type]
        for active_job_id, status in jobs:
            wanted = limit - len(claims)
            if wanted <= 0:
                break
            rows = _claim_from_job(db, session, active_job_id, worker_id, wanted, now + lease_seconds)
            if rows and status == JobStatus.QUEUED:
                session.exec(
                    update(Job)  # type: ignore[call-overload]
                    .where(Job.id == active_job_id, Job.status == JobStatus.QUEUED)  # type: ignore[arg-type]
                    .values(status=JobStatus.RUNNING, started_at=now)
                )
            claims.extend(rows)
    claims.sort(key=lambda c: c.image_id)
    return claims


def _claim_from_job(
    db: Database, session: Session, job_id: str, worker_id: str, limit: int, expires: float
) -> list[Claim]:
    lock = " FOR UPDATE SKIP LOCKED" if db.is_postgres else ""
    ids = [
        row[0]
        for row in session.execute(
            text(
                "SELECT id FROM image WHERE job_id = :job AND status = 'queued'"
                f" ORDER BY id LIMIT :n{lock}"
            ),
            {"job": job_id, "n": limit},
        )
    ]
    if not ids:
        return []
    session.execute(
        update(Image)
        .where(Image.id.in_(ids))  # type: ignore[union-attr]
        .values(status=ImageStatus.DOWNLOADING, lease_owner=worker_id, lease_expires=expires)
    )
    rows = session.execute(
        select(
            Image.id, Image.job_id, Image.product_id, Image.position, Image.url, Image.attempts
        ).where(Image.id.in_(ids))  # type: ignore[union-attr]
    )
    return [Claim(*row) for row in rows]


# ---------------------------------------------------------------- results


_RESULT_COLUMNS = (
    "status",
    "attempts",
    "error_code",
    "error",
    "http_status",
    "sha256",
    "size_bytes",
    "format",
    "width",
    "height",
    "storage_key",
)


def record_results(db: Database, worker_id: str, results: Sequence[Result]) -> FlushReport:
    """Write a batch of results in one transaction, then settle finished products and jobs.

    Only results for images this worker still leases are written (a lease that expired and
    was taken over belongs to the new owner), so no image is ever recorded twice.
    """
    report = FlushReport(written=0, stale=0, completed_jobs=[], duplicate_keys=[])
    if not results:
        return report
    now = time.time()
    params = [
        {
            "b_id": r.image_id,
            "b_owner": worker_id,
            **{f"b_{name}": getattr(r, name) for name in _RESULT_COLUMNS},
            "b_now": now,
        }
        for r in sorted(results, key=lambda r: r.image_id)  # one lock order for every writer
    ]
    statement = (
        update(Image.__table__)  # type: ignore[attr-defined]
        .where(
            Image.__table__.c.id == bindparam("b_id"),  # type: ignore[attr-defined]
            Image.__table__.c.lease_owner == bindparam("b_owner"),  # type: ignore[attr-defined]
        )
        .values(
            **{name: bindparam(f"b_{name}") for name in _RESULT_COLUMNS},
            lease_owner=None,
            lease_expires=None,
            updated_at=bindparam("b_now"),
        )
    )
    ids = [r.image_id for r in results]
    with db.write() as session:
        # executemany: the driver reports the summed rowcount
        outcome = session.connection().execute(statement, params)
        written = outcome.rowcount if outcome.rowcount is not None else len(results)
        report.written = written
        report.stale = len(results) - written
        touched = session.execute(
            select(Image.job_id, Image.product_id).where(Image.id.in_(ids)).distinct()  # type: ignore[union-attr]
        ).all()
        product_ids = sorted({product_id for _, product_id in touched})
        job_ids = sorted({job for job, _ in touched})
        if db.is_postgres:
            _lock_jobs_for_settling(session, job_ids)
        report.duplicate_keys = _settle_products(session, product_ids)
        report.completed_jobs = _settle_jobs(session, job_ids, now)
    return report


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
    finished = _finished_products(session, product_ids)
    if not finished:
        return []
    rows = session.execute(
        select(Image.id, Image.product_id, Image.sha256, Image.storage_key)
        .where(
            Image.product_id.in_(finished),  # type: ignore[attr-defined]
            Image.status == ImageStatus.DONE,  # type: ignore[arg-type]
        )
        .order_by(Image.product_id, Image.position)  # type: ignore[arg-type]
    ).all()
    first_by_hash: dict[tuple[int, str], int] = {}
    duplicates: list[dict[str, object]] = []
    keys: list[str] = []
    for image_id, product_id, sha, key in rows:
        original = first_by_hash.setdefault((product_id, sha), image_id)
        if original != image_id:
            duplicates.append({"b_id": image_id, "b_of": original})
            if key:
                keys.append(key)
    if duplicates:
        table = Image.__table__  # type: ignore[attr-defined]
        session.connection().execute(
            update(table)
            .where(table.c.id == bindparam("b_id"))
            .values(status=ImageStatus.DUPLICATE, duplicate_of_id=bindparam("b_of"), storage_key=None),
            duplicates,
        )
    return keys


def _finished_products(session: Session, product_ids: Sequence[int]) -> list[int]:
    if not product_ids:
        return []
    pending = func.sum(
        func.cast(Image.status.in_(PENDING_IMAGE_STATUSES), type_=Image.__table__.c.attempts.type)  # type: ignore[attr-defined]
    )
    rows = session.execute(
        select(Image.product_id)
        .where(Image.product_id.in_(product_ids))  # type: ignore[attr-defined]
        .group_by(Image.product_id)
        .having(pending == 0)
    ).all()
    return [row[0] for row in rows]


def _settle_jobs(session: Session, job_ids: Iterable[str], now: float) -> list[str]:
    completed: list[str] = []
    for job_id in job_ids:
        pending = session.execute(
            select(Image.id)
            .where(
                Image.job_id == job_id,  # type: ignore[arg-type]
                Image.status.in_(PENDING_IMAGE_STATUSES),  # type: ignore[attr-defined]
            )
            .limit(1)
        ).first()
        if pending is None:
            done = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.RUNNING)  # type: ignore[arg-type]
                .values(status=JobStatus.COMPLETED, finished_at=now)
            )
            if done.rowcount:
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
            update(Image)
            .where(
                Image.id.in_(image_ids),  # type: ignore[union-attr]
                Image.lease_owner == worker_id,  # type: ignore[arg-type]
                Image.status == ImageStatus.DOWNLOADING,  # type: ignore[arg-type]
            )
            .values(status=ImageStatus.QUEUED, lease_owner=None, lease_expires=None)
        )


def job_is_active(db: Database, job_id: str) -> bool:
    with db.read() as session:
        status = session.execute(select(Job.status).where(Job.id == job_id)).scalar_one_or_none()  # type: ignore[arg-type]
    return status in (JobStatus.QUEUED, JobStatus.RUNNING)


def pending_count(db: Database, job_id: str) -> int:
    with db.read() as session:
        value = session.execute(
            select(func.count())
            .select_from(Image)
            .where(
                Image.job_id == job_id,  # type: ignore[arg-type]
                Image.status.in_(PENDING_IMAGE_STATUSES),  # type: ignore[attr-defined]
            )
        ).scalar_one()
    return int(value)


def has_claimable_work(db: Database, job_id: str | None = None) -> bool:
    with db.read() as session:
        query = (
            select(Image.id)
            .join(Job, Job.id == Image.job_id)  # type: ignore[arg-type]
            .where(
                Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]),  # type: ignore[attr-defined]
                Image.status == ImageStatus.QUEUED,  # type: ignore[arg-type]
            )
        )
        if job_id is not None:
            query = query.where(Image.job_id == job_id)  # type: ignore[arg-type]
        return session.execute(query.limit(1)).first() is not None
