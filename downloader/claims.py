"""Claiming work fairly: which queued images an engine leases next.

Round robin between owners, then between each owner's jobs, counted in images in flight: the
next image goes to the owner with the fewest images leased now (by any engine, plus what this
claim gave it so far), and within that owner to the job with the fewest. Ties go to the
earlier place in the claim order (`job.queued_at`: creation, or the last "retry failed").
A small job queued behind a big one therefore gets the next claims until it has as many images
in flight as the big one, and two people with big jobs each get half of the claims. Jobs made
before owners were recorded (owner NULL) count as one owner, "".

Within a job, images go first queued first. On SQLite claims are serialised by the write
transaction (BEGIN IMMEDIATE); on PostgreSQL they use FOR UPDATE SKIP LOCKED so concurrent
workers never wait for each other nor take the same image. `downloader.queue` re-exports
`Claim` and `claim`.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlmodel import Session

from downloader.db import Database, placeholder
from downloader.models import IMAGE, JOB, ImageStatus, JobStatus

# Plain strings for the driver-level statements, which bypass SQLAlchemy's type handling.
_QUEUED = ImageStatus.QUEUED.value
_DOWNLOADING = ImageStatus.DOWNLOADING.value
_IN_CHUNK = 500  # job ids per IN (...) list when counting images in flight


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
    owner: str = ""  # the job's owner ("" for jobs made before owners): local fair share
    host: str = ""  # the URL's host as the job stored it: the engine's per-host turns


def claim(
    db: Database,
    worker_id: str,
    limit: int,
    lease_seconds: float,
    *,
    job_id: str | None = None,
    hosts: Collection[str] | None = None,
) -> list[Claim]:
    """Lease up to `limit` queued images of active jobs, shared fairly between them.

    `hosts`: only images of these stored hosts (the engine's part, `downloader.host_partition`);
    None = any host.

    Round robin between owners, then between each owner's jobs, counted in images in flight
    (see the module docstring); each job's images go first queued first. Cost per claim: one
    read of the active jobs, one count of the leased images of those jobs (index only, at
    most what every engine holds), and one indexed UPDATE per job served; never a scan of a
    job's queued images.
    """
    if limit <= 0 or (hosts is not None and not hosts):
        return []
    host_list = None if hosts is None else sorted(hosts)
    now = time.time()
    expires = now + lease_seconds
    claims: list[Claim] = []
    with db.write() as session:
        use_job_status_index(db, session)
        job_query = select(JOB.c.id, JOB.c.status, JOB.c.owner).where(
            JOB.c.status.in_([JobStatus.QUEUED, JobStatus.RUNNING])
        )
        if job_id is not None:
            job_query = job_query.where(JOB.c.id == job_id)
        # queued_at: creation, or the last "retry failed" (then the job waits its turn again)
        queued = func.coalesce(JOB.c.queued_at, JOB.c.created_at)
        rows = session.execute(job_query.order_by(queued, JOB.c.created_at)).all()
        if not rows:
            return []
        active = [ActiveJob(row.id, row.owner or "") for row in rows]
        owners = {job.id: job.owner for job in active}
        in_flight = _leased_per_job(session, list(owners))
        started: set[str] = set()
        while len(claims) < limit and active:
            plan = plan_claims(active, in_flight, limit - len(claims))
            exhausted: set[str] = set()
            for planned_job, wanted in plan.items():
                got = _claim_from_job(
                    db,
                    session,
                    planned_job,
                    owners[planned_job],
                    worker_id,
                    wanted,
                    expires,
                    host_list,
                )
                if len(got) < wanted:
                    exhausted.add(planned_job)  # nothing more queued (or all locked)
                if got:
                    started.add(planned_job)
                    in_flight[planned_job] = in_flight.get(planned_job, 0) + len(got)
                claims.extend(got)
            active = remaining(active, exhausted)
            if not exhausted:
                break
        for row in rows:  # in claim order: concurrent claims lock job rows in one order
            if row.id in started and row.status == JobStatus.QUEUED:
                session.execute(
                    update(JOB)
                    .where(JOB.c.id == row.id, JOB.c.status == JobStatus.QUEUED)
                    .values(status=JobStatus.RUNNING, started_at=now)
                )
    claims.sort(key=lambda c: c.image_id)
    return claims


def _leased_per_job(session: Session, job_ids: list[str]) -> dict[str, int]:
    """Images in flight (leased by any engine) per job, from the (job_id, status) index."""
    in_flight: dict[str, int] = {}
    for start in range(0, len(job_ids), _IN_CHUNK):
        chunk = job_ids[start : start + _IN_CHUNK]
        counted = session.execute(
            select(IMAGE.c.job_id, func.count())
            .where(IMAGE.c.job_id.in_(chunk), IMAGE.c.status == ImageStatus.DOWNLOADING)
            .group_by(IMAGE.c.job_id)
        ).all()
        in_flight.update({job: int(count) for job, count in counted})
    return in_flight


def _claim_from_job(
    db: Database,
    session: Session,
    job_id: str,
    owner: str,
    worker_id: str,
    limit: int,
    expires: float,
    hosts: list[str] | None = None,
) -> list[Claim]:
    """Lease the job's first `limit` queued images (of `hosts`, if given) and read them back,
    in one statement.

    Driver-level SQL (as every per-batch statement here): built by SQLAlchemy, the three
    statements this replaced cost more CPU than SQLite took to run them (bench_queue.py)."""
    conn = session.connection()
    m = placeholder(conn)
    # SQLite: the (job_id, status) index holds the rowid (id) in order, so ORDER BY id is
    # free. PostgreSQL: the index holds equal keys in heap order (first inserted first), and
    # ORDER BY id would make the planner walk the primary key past every finished image of
    # the job (use_job_status_index).
    order, lock = ("", " FOR UPDATE SKIP LOCKED") if db.is_postgres else (" ORDER BY id", "")
    # An engine's hosts: the (job_id, status) index walks the job's queued images and skips
    # those of other engines' hosts (about (engines - 1) of every engines images).
    only = f" AND host IN ({', '.join([m] * len(hosts))})" if hosts is not None else ""
    rows = conn.exec_driver_sql(
        f"UPDATE image SET status = {m}, lease_owner = {m}, lease_expires = {m}"
        f" WHERE id IN (SELECT id FROM image WHERE job_id = {m} AND status = {m}{only}{order}"
        f" LIMIT {m}{lock})"
        " RETURNING id, job_id, product_id, position, url, attempts, host",
        (_DOWNLOADING, worker_id, expires, job_id, _QUEUED, *(hosts or ()), limit),
    )
    return [
        Claim(image_id, job, product_id, position, url, attempts, expires, owner, host or "")
        for image_id, job, product_id, position, url, attempts, host in rows
    ]


def use_job_status_index(db: Database, session: Session) -> None:
    """On PostgreSQL, have the rest of this transaction find a job's images of one state
    through the (job_id, status) index.

    Its statistics cannot see that a job's finished images sit together: for "the first
    queued images of this job" the planner expects a match within a few rows of a sequential
    or primary-key scan, and then walks past every finished image of the job, on every claim
    (docs/scaling.md has the EXPLAIN). Through the index a claim of n reads about n entries.
    SET LOCAL ends with the transaction. SQLite already uses the index.
    """
    if db.is_postgres:
        conn = session.connection()
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        conn.exec_driver_sql("SET LOCAL enable_bitmapscan = off")


# ---------------------------------------------------------------- the fair plan


@dataclass(frozen=True, slots=True)
class ActiveJob:
    """A queued or running job, in claim order."""

    id: str
    owner: str


def plan_claims(
    jobs: Sequence[ActiveJob], in_flight: Mapping[str, int], limit: int
) -> dict[str, int]:
    """How many of `limit` images each job should get, `jobs` in claim order.

    `in_flight` counts each job's leased images. The result holds only jobs that get some, in
    claim order. Cost: O(limit * log(jobs)), whatever the jobs' sizes.
    """
    if limit <= 0 or not jobs:
        return {}
    owners: dict[str, list[tuple[int, int, str]]] = {}  # owner -> heap of (load, order, job)
    owner_load: dict[str, int] = {}
    owner_order: dict[str, int] = {}
    for order, job in enumerate(jobs):
        load = in_flight.get(job.id, 0)
        owners.setdefault(job.owner, []).append((load, order, job.id))
        owner_load[job.owner] = owner_load.get(job.owner, 0) + load
        owner_order.setdefault(job.owner, order)
    for heap in owners.values():
        heapq.heapify(heap)
    turns = [(owner_load[owner], owner_order[owner], owner) for owner in owners]
    heapq.heapify(turns)
    plan: dict[str, int] = {}
    for _ in range(limit):
        load, order, owner = heapq.heappop(turns)
        job_load, job_order, job_id = heapq.heappop(owners[owner])
        plan[job_id] = plan.get(job_id, 0) + 1
        heapq.heappush(owners[owner], (job_load + 1, job_order, job_id))
        heapq.heappush(turns, (load + 1, order, owner))
    position = {job.id: order for order, job in enumerate(jobs)}
    return dict(sorted(plan.items(), key=lambda item: position[item[0]]))


def remaining(jobs: Iterable[ActiveJob], exhausted: set[str]) -> list[ActiveJob]:
    """The jobs that may still have queued images for this claim."""
    return [job for job in jobs if job.id not in exhausted]
