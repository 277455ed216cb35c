"""The jobs service: the one API the UI and the command line call.

Everything here takes the Database (and Storage where files are involved) explicitly.
Counts and progress come from aggregate SQL over indexed columns, never from loading
every image row, so a job of a million images reads as fast as one of ten.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, case, delete, func, insert, or_, select, update

from downloader import queue
from downloader.archive import (
    csv_rows_chunks,
    image_file_name,
)
from downloader.db import Database, rowcount

# re-exported: callers of the service API catch them as jobs.JobNotFound / jobs.RateLimited
from downloader.errors import JobNotFound as JobNotFound
from downloader.errors import RateLimited as RateLimited
from downloader.exports import job_zip as job_zip
from downloader.exports import manifest_csv as manifest_csv
from downloader.exports import manifest_rows as manifest_rows
from downloader.exports import product_zip as product_zip
from downloader.exports import product_zip_bytes as product_zip_bytes
from downloader.exports import zip_file_name as zip_file_name
from downloader.models import (
    IMAGE,
    JOB,
    PENDING_IMAGE_STATUSES,
    PRODUCT,
    REJECTED_ROW,
    WORKER,
    ImageStatus,
    Job,
    JobPublic,
    JobStatus,
    Worker,
)
from downloader.storage import Storage

if TYPE_CHECKING:
    import pandas as pd

    from downloader.inputs import ParsedInput

# pandas is imported inside the functions that build tables: the download processes call
# this module for counts and must not carry pandas (~80 MB) for that.

INSERT_CHUNK = 20_000
IMAGE_STATES = [s.value for s in ImageStatus]


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


# ---------------------------------------------------------------- creating


def input_fingerprint(parsed: ParsedInput) -> str:
    """A stable hash of the rows to queue, so `run` on the same input resumes its job."""
    import pandas as pd

    frame = parsed.frame
    digest = hashlib.sha256()
    if len(frame):
        hashed = pd.util.hash_pandas_object(frame[["product", "url"]], index=False)
        digest.update(hashed.to_numpy().tobytes())
    return digest.hexdigest()


def check_rate_limit(db: Database, created_by: str, per_minute: int) -> None:
    """Refuse a job when this session created `per_minute` jobs in the last minute."""
    if per_minute <= 0 or not created_by:
        return
    with db.read() as session:
        recent = session.execute(
            select(func.count())
            .select_from(JOB)
            .where(JOB.c.created_by == created_by, JOB.c.created_at > time.time() - 60)
        ).scalar_one()
    if recent >= per_minute:
        raise RateLimited(
            f"You created {recent} jobs in the last minute (limit {per_minute}); wait a moment."
        )


def create_job(
    db: Database,
    parsed: ParsedInput,
    *,
    name: str = "",
    source: str = "",
    created_by: str = "",
) -> JobPublic:
    """Queue every valid row of `parsed` as one job, in bulk inserts."""
    frame = parsed.frame
    job = Job(
        name=name[:200],
        source=source[:300],
        created_by=created_by[:64],
        products=int(frame["product"].nunique()) if len(frame) else 0,
        images=len(frame),
        rejected_rows=len(parsed.rejected),
        duplicates_removed=len(parsed.duplicates),
        input_sha256=input_fingerprint(parsed),
    )
    if not len(frame):
        job.status = JobStatus.COMPLETED
        job.finished_at = time.time()
    with db.write() as session:
        session.add(job)
        session.flush()
        job_id = job.id
        _insert_products_and_images(session, job_id, frame)
        _insert_rejected(session, job_id, parsed)
        session.flush()
        public = JobPublic.model_validate(job, from_attributes=True)
    return public


def _insert_products_and_images(session: object, job_id: str, frame: pd.DataFrame) -> None:
    """Bulk-insert the job's products, then its images, chunk by chunk.

    Plain tuples go through the driver's executemany: SQLAlchemy's per-row dictionaries cost
    more time and memory than the inserts themselves at a million rows.
    """
    from sqlmodel import Session

    assert isinstance(session, Session)
    if not len(frame):
        return
    conn = session.connection()
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"

    counts = frame.groupby("product", sort=False).size()
    numbers = counts.index.tolist()
    sizes = counts.astype("int64").tolist()
    product_sql = (
        "INSERT INTO product (job_id, number, position, image_count)"
        f" VALUES ({mark}, {mark}, {mark}, {mark})"
    )
    for first in range(0, len(numbers), INSERT_CHUNK):
        conn.exec_driver_sql(
            product_sql,
            [
                (job_id, number, first + i + 1, size)
                for i, (number, size) in enumerate(
                    zip(
                        numbers[first : first + INSERT_CHUNK],
                        sizes[first : first + INSERT_CHUNK],
                        strict=True,
                    )
                )
            ],
        )
    del numbers, sizes, counts
    ids = dict(
        conn.execute(select(PRODUCT.c.number, PRODUCT.c.id).where(PRODUCT.c.job_id == job_id)).all()
    )

    columns = "job_id, product_id, position, url, host, source_row, status, attempts, updated_at"
    image_sql = f"INSERT INTO image ({columns}) VALUES ({', '.join([mark] * 9)})"
    queued, now = ImageStatus.QUEUED.value, time.time()
    for first in range(0, len(frame), INSERT_CHUNK):
        chunk = frame.iloc[first : first + INSERT_CHUNK]
        rows = [
            (job_id, ids[product], pos, url, host, row, queued, 0, now)
            for product, pos, url, host, row in zip(
                chunk["product"].tolist(),
                chunk["position"].astype("int64").tolist(),
                chunk["url"].tolist(),
                _hosts(chunk["url"]),
                chunk["source_row"].astype("int64").tolist(),
                strict=True,
            )
        ]
        conn.exec_driver_sql(image_sql, rows)


def _hosts(urls: pd.Series) -> list[str]:
    """The lower-cased host[:port] of each URL, by pyarrow's vectorised RE2 (no row loop)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    found = pc.extract_regex(
        pa.array(urls.astype(str).tolist(), type=pa.string()),
        r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(?P<host>[^/?#]*)",
    )
    hosts = pc.utf8_lower(pc.struct_field(found, "host")).fill_null("")
    return [host[:300] for host in hosts.to_pylist()]


def _insert_rejected(session: object, job_id: str, parsed: ParsedInput) -> None:
    from sqlmodel import Session

    assert isinstance(session, Session)
    rows = [
        {
            "job_id": job_id,
            "kind": kind,
            "row": r.row,
            "reason": r.reason[:300],
            "product": r.product[:200],
            "url": r.url[:200],
        }
        for kind, items in (("rejected", parsed.rejected), ("duplicate", parsed.duplicates))
        for r in items
    ]
    conn = session.connection()
    for start in range(0, len(rows), INSERT_CHUNK):
        conn.execute(insert(REJECTED_ROW), rows[start : start + INSERT_CHUNK])


def find_unfinished_job(db: Database, fingerprint: str) -> str | None:
    with db.read() as session:
        row = session.execute(
            select(JOB.c.id)
            .where(
                JOB.c.input_sha256 == fingerprint,
                JOB.c.status.in_([JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED]),
            )
            .order_by(JOB.c.created_at.desc())
            .limit(1)
        ).first()
    return row[0] if row else None


# ---------------------------------------------------------------- reading


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


def list_jobs(
    db: Database,
    *,
    statuses: list[str] | None = None,
    text: str | None = None,
    limit: int = 100,
) -> list[JobListItem]:
    with db.read() as session:
        query = select(Job).order_by(JOB.c.created_at.desc()).limit(limit)
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


def product_progress(
    db: Database,
    job_id: str,
    *,
    text: str | None = None,
    only_problems: bool = False,
    limit: int | None = None,
    offset: int = 0,
) -> pd.DataFrame:
    """One row per product: images, counts by state, progress 0..1, and a status word."""
    import pandas as pd

    def count_of(*states: ImageStatus) -> ColumnElement[Any]:
        return func.sum(case((IMAGE.c.status.in_(states), 1), else_=0))

    with db.read() as session:
        agg = (
            select(
                IMAGE.c.product_id,
                func.count().label("images"),
                count_of(ImageStatus.DONE).label("done"),
                count_of(ImageStatus.DUPLICATE).label("duplicate"),
                count_of(ImageStatus.FAILED).label("failed"),
                count_of(ImageStatus.SKIPPED).label("skipped"),
                count_of(*PENDING_IMAGE_STATUSES).label("pending"),
            )
            .where(IMAGE.c.job_id == job_id)
            .group_by(IMAGE.c.product_id)
            .subquery()
        )
        query = (
            select(PRODUCT.c.number.label("product"), agg)
            .join(agg, agg.c.product_id == PRODUCT.c.id)
            .where(PRODUCT.c.job_id == job_id)
            .order_by(PRODUCT.c.position)
        )
        if text:
            query = query.where(PRODUCT.c.number.ilike(f"%{text.strip()}%"))
        if only_problems:
            query = query.where(agg.c.failed > 0)
        if limit is not None:
            query = query.limit(limit).offset(offset)
        frame = pd.DataFrame(session.execute(query).mappings().all())
    columns = ["product", "images", "done", "duplicate", "failed", "skipped", "pending"]
    if frame.empty:
        return pd.DataFrame(columns=[*columns, "progress", "status"])
    frame = frame[columns]
    finished = frame["images"] - frame["pending"]
    frame["progress"] = (finished / frame["images"]).fillna(1.0)
    frame["status"] = "done"
    frame.loc[frame["failed"] > 0, "status"] = "has failures"
    frame.loc[frame["pending"] > 0, "status"] = "downloading"
    return frame


def product_numbers(db: Database, job_id: str) -> list[str]:
    with db.read() as session:
        return list(
            session.execute(
                select(PRODUCT.c.number)
                .where(PRODUCT.c.job_id == job_id)
                .order_by(PRODUCT.c.position)
            ).scalars()
        )


def error_summary(db: Database, job_id: str) -> dict[str, int]:
    with db.read() as session:
        rows = session.execute(
            select(IMAGE.c.error_code, func.count())
            .where(IMAGE.c.job_id == job_id, IMAGE.c.status == ImageStatus.FAILED)
            .group_by(IMAGE.c.error_code)
            .order_by(func.count().desc())
        ).all()
    return {code or "unknown": int(count) for code, count in rows}


FAILED_COLUMNS = ["product", "position", "url", "error_code", "error", "http_status", "attempts"]


def failed_images(
    db: Database,
    job_id: str,
    *,
    error_code: str | None = None,
    text: str | None = None,
    limit: int | None = 1000,
) -> pd.DataFrame:
    import pandas as pd

    with db.read() as session:
        query = (
            select(
                PRODUCT.c.number.label("product"),
                IMAGE.c.position,
                IMAGE.c.url,
                IMAGE.c.error_code,
                IMAGE.c.error,
                IMAGE.c.http_status,
                IMAGE.c.attempts,
            )
            .join(PRODUCT, PRODUCT.c.id == IMAGE.c.product_id)
            .where(IMAGE.c.job_id == job_id, IMAGE.c.status == ImageStatus.FAILED)
            .order_by(PRODUCT.c.position, IMAGE.c.position)
        )
        if error_code:
            query = query.where(IMAGE.c.error_code == error_code)
        if text:
            pattern = f"%{text.strip()}%"
            query = query.where(or_(PRODUCT.c.number.ilike(pattern), IMAGE.c.url.ilike(pattern)))
        if limit is not None:
            query = query.limit(limit)
        rows = session.execute(query).all()
    return pd.DataFrame(rows, columns=FAILED_COLUMNS)


def rejected_rows(
    db: Database, job_id: str, *, kind: str | None = None, limit: int = 1000
) -> pd.DataFrame:
    import pandas as pd

    with db.read() as session:
        query = (
            select(
                REJECTED_ROW.c.row,
                REJECTED_ROW.c.kind,
                REJECTED_ROW.c.reason,
                REJECTED_ROW.c.product,
                REJECTED_ROW.c.url,
            )
            .where(REJECTED_ROW.c.job_id == job_id)
            .order_by(REJECTED_ROW.c.row)
            .limit(limit)
        )
        if kind:
            query = query.where(REJECTED_ROW.c.kind == kind)
        rows = session.execute(query).all()
    return pd.DataFrame(rows, columns=["row", "kind", "reason", "product", "url"])


@dataclass
class ImageInfo:
    product: str
    position: int
    file: str | None
    status: str
    key: str | None
    width: int | None
    height: int | None
    format: str | None
    size_bytes: int | None
    error: str | None


def product_images(db: Database, job_id: str, product: str, *, limit: int = 200) -> list[ImageInfo]:
    with db.read() as session:
        rows = session.execute(
            select(
                IMAGE.c.position,
                IMAGE.c.status,
                IMAGE.c.storage_key,
                IMAGE.c.width,
                IMAGE.c.height,
                IMAGE.c.format,
                IMAGE.c.size_bytes,
                IMAGE.c.error,
            )
            .join(PRODUCT, PRODUCT.c.id == IMAGE.c.product_id)
            .where(PRODUCT.c.job_id == job_id, PRODUCT.c.number == product)
            .order_by(IMAGE.c.position)
            .limit(limit)
        ).all()
    return [
        ImageInfo(
            product=product,
            position=pos,
            file=image_file_name(product, pos, fmt) if fmt and status == ImageStatus.DONE else None,
            status=status,
            key=key,
            width=w,
            height=h,
            format=fmt,
            size_bytes=size,
            error=err,
        )
        for pos, status, key, w, h, fmt, size, err in rows
    ]


def live_workers(db: Database, stale_after: float = 90) -> list[Worker]:
    with db.read() as session:
        rows = session.execute(
            select(Worker)
            .where(WORKER.c.heartbeat_at > time.time() - stale_after)
            .order_by(WORKER.c.started_at)
        ).scalars()
        return [Worker.model_validate(w, from_attributes=True) for w in rows]


# ---------------------------------------------------------------- controlling


def pause_job(db: Database, job_id: str) -> bool:
    return _set_status(db, job_id, [JobStatus.QUEUED, JobStatus.RUNNING], JobStatus.PAUSED)


def resume_job(db: Database, job_id: str) -> bool:
    changed = _set_status(db, job_id, [JobStatus.PAUSED], JobStatus.RUNNING)
    if changed:
        queue.settle_job(db, job_id)
    return changed


def cancel_job(db: Database, job_id: str) -> bool:
    """Stop a job: queued images become skipped; downloads already running finish."""
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


def retry_failed(db: Database, job_id: str) -> int:
    """Queue failed (and skipped) images again and reopen the job."""
    with db.write() as session:
        count = rowcount(
            session.execute(
                update(IMAGE)
                .where(
                    IMAGE.c.job_id == job_id,
                    IMAGE.c.status.in_([ImageStatus.FAILED, ImageStatus.SKIPPED]),
                )
                .values(status=ImageStatus.QUEUED, error_code=None, error=None, http_status=None)
            )
        )
        if count:
            session.execute(
                update(JOB)
                .where(JOB.c.id == job_id)
                .values(status=JobStatus.RUNNING, finished_at=None)
            )
    return int(count or 0)


def _set_status(db: Database, job_id: str, from_states: list[JobStatus], to: JobStatus) -> bool:
    with db.write() as session:
        result = session.execute(
            update(JOB).where(JOB.c.id == job_id, JOB.c.status.in_(from_states)).values(status=to)
        )
    return bool(rowcount(result))


def delete_job(db: Database, storage: Storage, job_id: str) -> None:
    storage.delete_prefix(f"jobs/{job_id}/")
    with db.write() as session:
        for table in (IMAGE, REJECTED_ROW, PRODUCT):
            session.execute(delete(table).where(table.c.job_id == job_id))
        session.execute(delete(JOB).where(JOB.c.id == job_id))


# ---------------------------------------------------------------- exports
# ZIPs and the manifest live in downloader/exports.py (re-exported above).


def failed_csv(db: Database, job_id: str) -> Iterator[bytes]:
    frame = failed_images(db, job_id, limit=None)
    return csv_rows_chunks(FAILED_COLUMNS, frame.itertuples(index=False, name=None))
