"""Reading jobs as a whole: one job, its counts by image state, its rate, and the job list.

Counts come from aggregate SQL over indexed columns, never from loading every image row, so a
job of a million images reads as fast as one of ten. The workers doing the work are here too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sqlalchemy import Exists, exists, func, or_, select

from downloader.claims import use_job_status_index
from downloader.db import Database
from downloader.errors import JobNotFound
from downloader.identity import Viewer
from downloader.models import IMAGE, JOB, WORKER, ImageStatus, Job, JobPublic, JobStatus, Worker

IMAGE_STATES = [s.value for s in ImageStatus]
NO_OWNER = ""  # list_jobs(owner=NO_OWNER): the jobs made before owners were recorded


@dataclass
class JobCounts:
    queued: int = 0
    downloading: int = 0
    done: int = 0
    duplicate: int = 0
    failed: int = 0
    skipped: int = 0

    @property
    def total(self) -> int:
        return self.pending + self.finished

    @property
    def pending(self) -> int:
        return self.queued + self.downloading

    @property
    def finished(self) -> int:
        return self.done + self.duplicate + self.failed + self.skipped

    def as_dict(self) -> dict[str, int]:
        return {state: getattr(self, state) for state in IMAGE_STATES}


@dataclass
class JobSummary:
    job: JobPublic
    counts: JobCounts
    images_per_second: float | None = None
    eta_seconds: float | None = None

    @property
    def progress(self) -> float:
        total = self.counts.total
        return self.counts.finished / total if total else 1.0

    @property
    def is_active(self) -> bool:
        return self.job.status in (JobStatus.QUEUED, JobStatus.RUNNING)


@dataclass
class JobListItem:
    job: JobPublic
    counts: JobCounts = field(default_factory=JobCounts)


def get_job(db: Database, job_id: str) -> JobPublic:
    with db.read() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise JobNotFound(f"No job with id {job_id!r}.")
        return JobPublic.model_validate(job, from_attributes=True)


def job_counts(db: Database, job_id: str) -> JobCounts:
    with db.read() as session:
        rows = session.execute(
            select(IMAGE.c.status, func.count())
            .where(IMAGE.c.job_id == job_id)
            .group_by(IMAGE.c.status)
        ).all()
    counts = JobCounts()
    for status, count in rows:
        if status in IMAGE_STATES:
            setattr(counts, status, int(count))
    return counts


def job_summary(db: Database, job_id: str) -> JobSummary:
    job = get_job(db, job_id)
    counts = job_counts(db, job_id)
    summary = JobSummary(job=job, counts=counts)
    if job.started_at:
        end = job.finished_at or time.time()
        elapsed = max(end - job.started_at, 1e-3)
        rate = counts.finished / elapsed
        summary.images_per_second = rate
        if summary.is_active and rate > 0:
            summary.eta_seconds = counts.pending / rate
    return summary


WAITING = "waiting"
DOWNLOADING = "downloading"
PLACE_LABELS = {
    WAITING: "Waiting for a free slot: other jobs are using the download slots.",
    DOWNLOADING: "Downloading.",
}


def job_place(db: Database, job_id: str) -> str | None:
    """An active job's place (fair share): `DOWNLOADING` when an engine holds some of its
    images, `WAITING` when images are queued and none is held; None for a job that is not
    queued or running, or has nothing pending.

    Two EXISTS probes on the (job_id, status) index: as cheap for a million images as for ten.
    """

    def having(status: ImageStatus) -> Exists:
        return exists().where(IMAGE.c.job_id == job_id, IMAGE.c.status == status)

    leased, queued = having(ImageStatus.DOWNLOADING), having(ImageStatus.QUEUED)
    with db.read() as session:
        use_job_status_index(db, session)
        row = session.execute(
            select(JOB.c.status, leased, queued).where(JOB.c.id == job_id)
        ).first()
    if row is None or row[0] not in (JobStatus.QUEUED, JobStatus.RUNNING):
        return None
    if row[1]:
        return DOWNLOADING
    return WAITING if row[2] else None


def list_jobs(
    db: Database,
    *,
    statuses: list[str] | None = None,
    text: str | None = None,
    limit: int = 100,
    visible_to: Viewer | None = None,
    owner: str | None = None,
) -> list[JobListItem]:
    """The newest jobs, with their counts. `visible_to`: only the jobs that person may see
    (downloader.identity: their own; every job for admins and in single-user mode);
    `owner`: only that owner's jobs (NO_OWNER: the jobs made before owners)."""
    with db.read() as session:
        query = select(Job).order_by(JOB.c.created_at.desc()).limit(limit)
        if visible_to is not None and not visible_to.sees_everything:
            query = query.where(JOB.c.owner == visible_to.email)
        if owner is not None:
            mine = JOB.c.owner.is_(None) if owner == NO_OWNER else JOB.c.owner == owner
            query = query.where(mine)
        if statuses:
            query = query.where(JOB.c.status.in_(statuses))
        if text:
            pattern = f"%{text.strip()}%"
            query = query.where(
                or_(JOB.c.name.ilike(pattern), JOB.c.source.ilike(pattern), JOB.c.id.ilike(pattern))
            )
        jobs = [
            JobPublic.model_validate(j, from_attributes=True)
            for j in session.execute(query).scalars()
        ]
        if not jobs:
            return []
        rows = session.execute(
            select(IMAGE.c.job_id, IMAGE.c.status, func.count())
            .where(IMAGE.c.job_id.in_([j.id for j in jobs]))
            .group_by(IMAGE.c.job_id, IMAGE.c.status)
        ).all()
    counts: dict[str, JobCounts] = {j.id: JobCounts() for j in jobs}
    for job_id, status, count in rows:
        if status in IMAGE_STATES:
            setattr(counts[job_id], status, int(count))
    return [JobListItem(job=j, counts=counts[j.id]) for j in jobs]


def live_workers(db: Database, stale_after: float = 90) -> list[Worker]:
    with db.read() as session:
        rows = session.execute(
            select(Worker)
            .where(WORKER.c.heartbeat_at > time.time() - stale_after)
            .order_by(WORKER.c.started_at)
        ).scalars()
        return [Worker.model_validate(w, from_attributes=True) for w in rows]
