"""Controlling jobs: pause, resume, cancel, retry failures, delete.

Each takes the person asking (`person`, downloader.identity.Viewer): for anyone but the job's
owner and admins it raises JobNotFound, exactly as for a job that does not exist. None (the
command line, tests) may control every job.
"""

from __future__ import annotations

import time
from typing import Literal

from sqlalchemy import ColumnElement, delete, func, select, update

from downloader import queue
from downloader.db import Database, rowcount
from downloader.identity import Viewer
from downloader.jobs.access import require_job
from downloader.models import IMAGE, JOB, PRODUCT, REJECTED_ROW, ImageStatus, JobStatus
from downloader.storage import Storage


def pause_job(db: Database, job_id: str, *, person: Viewer | None = None) -> bool:
    require_job(db, job_id, person)
    return _set_status(db, job_id, [JobStatus.QUEUED, JobStatus.RUNNING], JobStatus.PAUSED)


def resume_job(db: Database, job_id: str, *, person: Viewer | None = None) -> bool:
    require_job(db, job_id, person)
    changed = _set_status(db, job_id, [JobStatus.PAUSED], JobStatus.RUNNING)
    if changed:
        queue.settle_job(db, job_id)
    return changed


def cancel_job(db: Database, job_id: str, *, person: Viewer | None = None) -> bool:
    """Stop a job: queued images become skipped; downloads already running finish."""
    require_job(db, job_id, person)
    with db.write() as session:
        changed = rowcount(
            session.execute(
                update(JOB)
                .where(
                    JOB.c.id == job_id,
                    JOB.c.status.in_([JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED]),
                )
                .values(status=JobStatus.CANCELLED, finished_at=time.time())
            )
        )
        session.execute(
            update(IMAGE)
            .where(IMAGE.c.job_id == job_id, IMAGE.c.status == ImageStatus.QUEUED)
            .values(
                status=ImageStatus.SKIPPED, error_code="cancelled", error="The job was cancelled."
            )
        )
    return bool(changed)


# Failures that may pass on a later try: the host was slow, busy, throttling or unreachable.
# Every other failure (404, 410, not_an_image, too_large, a blocked address ...) is permanent:
# the same request would get the same answer. Skipped (cancelled) images count as transient.
TRANSIENT_CODES = (
    "timeout",
    "connection_error",
    "http_408",
    "http_429",
    "throttled",
    "circuit_open",
    "lease_lost",
    "internal_error",
)
RetryKind = Literal["all", "transient", "permanent"]


def _retry_filter(kind: RetryKind) -> ColumnElement[bool]:
    failed = IMAGE.c.status == ImageStatus.FAILED
    transient = IMAGE.c.error_code.in_(TRANSIENT_CODES) | IMAGE.c.error_code.like("http\\_5%", "\\")
    if kind == "transient":
        return (IMAGE.c.status == ImageStatus.SKIPPED) | (failed & transient)
    if kind == "permanent":
        return failed & ~transient
    return IMAGE.c.status.in_([ImageStatus.FAILED, ImageStatus.SKIPPED])


def retry_counts(db: Database, job_id: str) -> tuple[int, int]:
    """(transient, permanent): the images "Retry failed" would queue again, by kind."""
    with db.read() as session:
        return tuple(  # type: ignore[return-value]
            int(
                session.execute(
                    select(func.count())
                    .select_from(IMAGE)
                    .where(IMAGE.c.job_id == job_id, _retry_filter(kind))
                ).scalar_one()
            )
            for kind in ("transient", "permanent")
        )


def retry_failed(
    db: Database, job_id: str, *, person: Viewer | None = None, kind: RetryKind = "all"
) -> int:
    """Queue failed (and skipped) images again and reopen the job at the back of the queue:
    claims go by `queued_at`, so jobs queued since are served first (an old job's creation
    time would put its retries ahead of them). `created_at` stays for display.

    `kind`: "transient" only timeouts, 429s, 5xx, connection errors (and skipped images);
    "permanent" only the rest (404, 410, not_an_image, too_large ...); "all" both."""
    require_job(db, job_id, person)
    with db.write() as session:
        count = rowcount(
            session.execute(
                update(IMAGE)
                .where(IMAGE.c.job_id == job_id, _retry_filter(kind))
                .values(status=ImageStatus.QUEUED, error_code=None, error=None, http_status=None)
            )
        )
        if count:
            session.execute(
                update(JOB)
                .where(JOB.c.id == job_id)
                .values(status=JobStatus.RUNNING, finished_at=None, queued_at=time.time())
            )
    return int(count or 0)


def _set_status(db: Database, job_id: str, from_states: list[JobStatus], to: JobStatus) -> bool:
    with db.write() as session:
        result = session.execute(
            update(JOB).where(JOB.c.id == job_id, JOB.c.status.in_(from_states)).values(status=to)
        )
    return bool(rowcount(result))


def delete_job(
    db: Database, storage: Storage, job_id: str, *, person: Viewer | None = None
) -> None:
    """Remove the job's stored files and every row it owns."""
    require_job(db, job_id, person)
    storage.delete_prefix(f"jobs/{job_id}/")
    with db.write() as session:
        for table in (IMAGE, REJECTED_ROW, PRODUCT):
            session.execute(delete(table).where(table.c.job_id == job_id))
        session.execute(delete(JOB).where(JOB.c.id == job_id))
