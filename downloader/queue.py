"""The durable work queue: claiming images under leases (`downloader.claims`, re-exported
here) and recording results in batches.

Every function takes the Database explicitly and runs one short write transaction. On
SQLite those transactions are serialised by BEGIN IMMEDIATE; on PostgreSQL claims use
FOR UPDATE SKIP LOCKED so concurrent workers never take the same image.

Results are the one way the engine writes what it learned: `record_results` cuts every string
to its column (lengths read from the schema) and, when the database still refuses a batch,
writes it row by row so only the refused row is lost (recorded as `internal_error`).
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from downloader.claims import Claim as Claim  # re-exported: claiming lives there
from downloader.claims import claim as claim
from downloader.db import Database, placeholder, rowcount
from downloader.errors import excerpt
from downloader.models import (
    IMAGE,
    JOB,
    PENDING_IMAGE_STATUSES,
    ImageStatus,
    JobStatus,
)
from downloader.settling import lock_jobs_for_settling, marks, settle_jobs, settle_products

log = logging.getLogger(__name__)


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
    # what the whole-file check read (downloader.fetch.structure.Details)
    color_mode: str | None = None
    has_alpha: bool | None = None
    frames: int | None = None
    icc_profile: str | None = None
    orientation: int | None = None
    # the decoded picture's 64-bit dHash as a signed BIGINT (near_duplicates.signed64);
    # None unless the image was decoded (VERIFY_IMAGES=full)
    dhash: int | None = None
    # the converted output beside the original (downloader.outputs), and check warnings
    output_format: str | None = None
    output_bytes: int | None = None
    output_width: int | None = None
    output_height: int | None = None
    warnings: str | None = None


@dataclass(slots=True)
class FlushReport:
    written: int
    stale: int  # results dropped because this worker no longer held the lease
    completed_jobs: list[str]
    # storage keys of files no image row refers to any more, for the caller to delete: the
    # files of duplicates, and of results the database refused (recorded as internal_error)
    duplicate_keys: list[str]


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
    "color_mode",
    "has_alpha",
    "frames",
    "icc_profile",
    "orientation",
    "dhash",
    "output_format",
    "output_bytes",
    "output_width",
    "output_height",
    "warnings",
)
_result_values = operator.attrgetter(*_RESULT_COLUMNS[1:])  # after the status, in one call

# (position in a result row, column length) of every string column a result writes, read from
# the schema so the cut never drifts from it. Error texts quote URLs and servers' words, and
# PostgreSQL refuses a value longer than its VARCHAR where SQLite would store it.
_STRING_LIMITS = tuple(
    (index, length)
    for index, name in enumerate(_RESULT_COLUMNS)
    if (length := getattr(IMAGE.c[name].type, "length", None))
)

INTERNAL_ERROR = "internal_error"


_string_values = operator.itemgetter(*(index for index, _ in _STRING_LIMITS))


def _fit(value: str, limit: int) -> str:
    """`value` without NUL characters (no PostgreSQL text holds one), cut to `limit`."""
    return excerpt(value.replace("\x00", ""), limit)


def _result_row(result: Result) -> tuple[object, ...]:
    """The values of `_RESULT_COLUMNS` for `result`, every string fitted to its column.

    The usual row, where everything fits, is checked in one pass and not copied: this runs
    once per image."""
    values = (str(result.status), *_result_values(result))
    for value, (_, limit) in zip(_string_values(values), _STRING_LIMITS, strict=True):
        if value is not None and (len(value) > limit or "\x00" in value):
            fitted = list(values)
            for index, length in _STRING_LIMITS:
                if fitted[index] is not None:
                    fitted[index] = _fit(fitted[index], length)
            return tuple(fitted)
    return values


def record_results(db: Database, worker_id: str, results: Sequence[Result]) -> FlushReport:
    """Write a batch of results in one transaction, then settle finished products and jobs.

    Only results for images this worker still leases are written (a lease that expired and
    was taken over belongs to the new owner), so no image is ever recorded twice.

    Strings are cut to their columns. If the database refuses the batch all the same (a
    value no cut covers, e.g. a number out of range), the results are written one by one and
    a refused one is recorded as failed with `internal_error`: the rest of the batch is kept,
    and the engine neither dies nor gets the image back to fail on again. Only an unusable
    database (lost connection, lock timeout, deadlock) is raised, as before.
    """
    if not results:
        return FlushReport(written=0, stale=0, completed_jobs=[], duplicate_keys=[])
    try:
        return _record_batch(db, worker_id, results)
    except Exception as exc:
        if len(results) == 1 and _database_unusable(exc):
            raise
        log.warning(
            "the database refused a batch of %d results (%s); writing them one by one",
            len(results),
            type(exc).__name__,
        )
    report = FlushReport(written=0, stale=0, completed_jobs=[], duplicate_keys=[])
    for result in sorted(results, key=lambda r: r.image_id):
        try:
            part = _record_batch(db, worker_id, [result])
        except Exception as exc:
            if _database_unusable(exc):
                raise
            log.exception("the database refused the result of image %s", result.image_id)
            part = _record_batch(db, worker_id, [_refused(result, exc)])
            if result.storage_key and part.written:
                part.duplicate_keys.append(result.storage_key)  # no row refers to the file
        report.written += part.written
        report.stale += part.stale
        report.completed_jobs.extend(part.completed_jobs)
        report.duplicate_keys.extend(part.duplicate_keys)
    return report


def _database_unusable(exc: BaseException) -> bool:
    """True when `exc` is the database's failure rather than the rows' (a lost connection, a
    lock timeout, a deadlock): branding a result as refused would then lose a good one."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _refused(result: Result, exc: BaseException) -> Result:
    """What is recorded for a result the database would not take: failed, nothing else kept."""
    return Result(
        image_id=result.image_id,
        status=ImageStatus.FAILED,
        attempts=result.attempts,
        error_code=INTERNAL_ERROR,
        error=f"Internal error: the database refused this image's result ({type(exc).__name__}).",
    )


def _record_batch(db: Database, worker_id: str, results: Sequence[Result]) -> FlushReport:
    """record_results' one transaction for `results` (not empty)."""
    report = FlushReport(written=0, stale=0, completed_jobs=[], duplicate_keys=[])
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
                (*_result_row(r), now, r.image_id, worker_id)
                for r in sorted(results, key=lambda r: r.image_id)  # one lock order for all
            ],
        )
        written = rowcount(outcome)
        report.written = written
        report.stale = len(results) - written
        touched = conn.exec_driver_sql(
            f"SELECT DISTINCT job_id, product_id FROM image WHERE id IN {marks(m, len(ids))}",
            tuple(ids),
        ).all()
        product_ids = sorted({product_id for _, product_id in touched})
        job_ids = sorted({job for job, _ in touched})
        if db.is_postgres:
            lock_jobs_for_settling(session, job_ids)
        report.duplicate_keys = settle_products(session, product_ids)
        report.completed_jobs = settle_jobs(session, job_ids, now)
    return report


def settle_job(db: Database, job_id: str) -> bool:
    """Complete a running job with nothing pending (e.g. all its rows were rejected)."""
    with db.write() as session:
        return bool(settle_jobs(session, [job_id], time.time()))


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
