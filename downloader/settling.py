"""Settling what recorded results finish: duplicate images within a finished product, and
jobs with nothing pending. Runs inside the transaction that records the results (queue.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import select, text, update
from sqlmodel import Session

from downloader import near_duplicates
from downloader.db import placeholder, rowcount
from downloader.models import IMAGE, JOB, PENDING_IMAGE_STATUSES, ImageStatus, JobStatus

_DONE = ImageStatus.DONE.value
_DUPLICATE = ImageStatus.DUPLICATE.value
_PENDING = tuple(status.value for status in PENDING_IMAGE_STATUSES)


def marks(mark: str, count: int) -> str:
    """A parenthesised list of `count` placeholders, for IN."""
    return "(" + ", ".join([mark] * count) + ")"


_PG_SETTLE_LOCK = 726_473_002  # advisory-lock class for settling one job's products


def lock_jobs_for_settling(session: Session, job_ids: Sequence[str]) -> None:
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


def settle_products(session: Session, product_ids: Sequence[int]) -> list[str]:
    """Mark same-bytes images as duplicates once every image of their product is final, then
    near-copies of one picture among the rest (decoded images only: near_duplicates.py).

    Waiting for the whole product makes "the later image is the duplicate" follow input
    order, not the order downloads happened to finish in. Returns the storage keys of the
    duplicates' files, for the caller to delete.
    """
    if not product_ids:
        return []
    conn = session.connection()
    m = placeholder(conn)
    # Products with nothing pending, and the images already downloaded in them.
    rows = conn.exec_driver_sql(
        f"SELECT id, product_id, sha256, storage_key, position, width, height, dhash"
        f" FROM image WHERE status = {m}"
        f" AND product_id IN (SELECT product_id FROM image WHERE product_id IN"
        f" {marks(m, len(product_ids))} GROUP BY product_id"
        f" HAVING SUM(CASE WHEN status IN {marks(m, len(_PENDING))}"
        " THEN 1 ELSE 0 END) = 0) ORDER BY product_id, position",
        (_DONE, *product_ids, *_PENDING),
    ).all()
    first_by_hash: dict[tuple[int, str], int] = {}
    duplicates: list[tuple[str, int, str | None, int]] = []
    keys: list[str] = []
    key_of: dict[int, str | None] = {}
    candidates: dict[int, list[near_duplicates.Candidate]] = {}
    for image_id, product_id, sha, key, position, width, height, dhash in rows:
        original = first_by_hash.setdefault((product_id, sha), image_id)
        if original != image_id:
            duplicates.append((_DUPLICATE, original, None, image_id))
            if key:
                keys.append(key)
        elif dhash is not None and width and height:
            key_of[image_id] = key
            candidates.setdefault(product_id, []).append(
                near_duplicates.Candidate(image_id, position, width, height, dhash)
            )
    for images in candidates.values():
        if len(images) > 1:
            for image_id, original, reason in near_duplicates.find(images):
                duplicates.append((_DUPLICATE, original, reason, image_id))
                if key := key_of[image_id]:
                    keys.append(key)
    if duplicates:
        conn.exec_driver_sql(
            f"UPDATE image SET status = {m}, duplicate_of_id = {m}, error = {m},"
            f" storage_key = NULL WHERE id = {m}",
            duplicates,
        )
    return keys


def settle_jobs(session: Session, job_ids: Iterable[str], now: float) -> list[str]:
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
