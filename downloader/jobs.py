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

import pandas as pd
from sqlalchemy import case, delete, func, insert, or_, select, update

from downloader import queue
from downloader.archive import (
    ManifestRow,
    csv_rows_chunks,
    image_file_name,
    manifest_csv_chunks,
    stream_zip,
)
from downloader.db import Database
from downloader.inputs import ParsedInput
from downloader.models import (
    PENDING_IMAGE_STATUSES,
    Image,
    ImageStatus,
    Job,
    JobPublic,
    JobStatus,
    Product,
    RejectedRow,
    Worker,
)
from downloader.storage import Storage

INSERT_CHUNK = 20_000
IMAGE_STATES = [s.value for s in ImageStatus]


class JobNotFound(LookupError):
    pass


class RateLimited(RuntimeError):
    pass


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
            .select_from(Job)
            .where(Job.created_by == created_by, Job.created_at > time.time() - 60)  # type: ignore[arg-type]
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
    from sqlmodel import Session

    assert isinstance(session, Session)
    if not len(frame):
        return
    conn = session.connection()
    products = frame.groupby("product", sort=False).size()
    product_rows = [
        {"job_id": job_id, "number": number, "position": i + 1, "image_count": int(count)}
        for i, (number, count) in enumerate(products.items())
    ]
    for start in range(0, len(product_rows), INSERT_CHUNK):
        conn.execute(insert(Product), product_rows[start : start + INSERT_CHUNK])
    ids = dict(
        conn.execute(select(Product.number, Product.id).where(Product.job_id == job_id)).all()  # type: ignore[arg-type]
    )
    hosts = (
        frame["url"].str.extract(r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^/?#]*)")[0].str.lower()
    )
    now = time.time()
    image_frame = pd.DataFrame(
        {
            "job_id": job_id,
            "product_id": frame["product"].map(ids).astype("int64"),
            "position": frame["position"].astype("int64"),
            "url": frame["url"],
            "host": hosts.fillna("").str.slice(0, 300),
            "source_row": frame["source_row"].astype("int64"),
            "status": ImageStatus.QUEUED.value,
            "attempts": 0,
            "updated_at": now,
        }
    )
    columns = list(image_frame.columns)
    for start in range(0, len(image_frame), INSERT_CHUNK):
        chunk = image_frame.iloc[start : start + INSERT_CHUNK]
        records = [
            dict(zip(columns, row, strict=True))
            for row in chunk.itertuples(index=False, name=None)
        ]
        conn.execute(insert(Image), _plain(records))


def _plain(records: list[dict[str, object]]) -> list[dict[str, object]]:
    # numpy scalars -> Python scalars for the DB drivers
    for record in records:
        for key in ("product_id", "position", "source_row", "attempts"):
            record[key] = int(record[key])  # type: ignore[call-overload]
    return records


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
        conn.execute(insert(RejectedRow), rows[start : start + INSERT_CHUNK])


def find_unfinished_job(db: Database, fingerprint: str) -> str | None:
    with db.read() as session:
        row = session.execute(
            select(Job.id)
            .where(
                Job.input_sha256 == fingerprint,  # type: ignore[arg-type]
                Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED]),  # type: ignore[attr-defined]
            )
            .order_by(Job.created_at.desc())  # type: ignore[attr-defined]
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
            select(Image.status, func.count())
            .where(Image.job_id == job_id)  # type: ignore[arg-type]
            .group_by(Image.status)
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
        query = select(Job).order_by(Job.created_at.desc()).limit(limit)  # type: ignore[attr-defined]
        if statuses:
            query = query.where(Job.status.in_(statuses))  # type: ignore[attr-defined]
        if text:
            pattern = f"%{text.strip()}%"
            query = query.where(
                or_(Job.name.ilike(pattern), Job.source.ilike(pattern), Job.id.ilike(pattern))  # type: ignore[attr-defined]
            )
        jobs = [JobPublic.model_validate(j, from_attributes=True) for j in session.execute(query).scalars()]
        if not jobs:
            return []
        rows = session.execute(
            select(Image.job_id, Image.status, func.count())
            .where(Image.job_id.in_([j.id for j in jobs]))  # type: ignore[attr-defined]
            .group_by(Image.job_id, Image.status)
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
    def count_of(*states: ImageStatus) -> object:
        return func.sum(case((Image.status.in_(states), 1), else_=0))  # type: ignore[attr-defined]

    with db.read() as session:
        agg = (
            select(
                Image.product_id,
                func.count().label("images"),
                count_of(ImageStatus.DONE).label("done"),
                count_of(ImageStatus.DUPLICATE).label("duplicate"),
                count_of(ImageStatus.FAILED).label("failed"),
                count_of(ImageStatus.SKIPPED).label("skipped"),
                count_of(*PENDING_IMAGE_STATUSES).label("pending"),
            )
            .where(Image.job_id == job_id)  # type: ignore[arg-type]
            .group_by(Image.product_id)
            .subquery()
        )
        query = (
            select(Product.number.label("product"), agg)  # type: ignore[attr-defined]
            .join(agg, agg.c.product_id == Product.id)
            .where(Product.job_id == job_id)  # type: ignore[arg-type]
            .order_by(Product.position)
        )
        if text:
            query = query.where(Product.number.ilike(f"%{text.strip()}%"))  # type: ignore[attr-defined]
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
                select(Product.number).where(Product.job_id == job_id).order_by(Product.position)  # type: ignore[arg-type]
            ).scalars()
        )


def error_summary(db: Database, job_id: str) -> dict[str, int]:
    with db.read() as session:
        rows = session.execute(
            select(Image.error_code, func.count())
            .where(Image.job_id == job_id, Image.status == ImageStatus.FAILED)  # type: ignore[arg-type]
            .group_by(Image.error_code)
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
    with db.read() as session:
        query = (
            select(
                Product.number.label("product"),  # type: ignore[attr-defined]
                Image.position,
                Image.url,
                Image.error_code,
                Image.error,
                Image.http_status,
                Image.attempts,
            )
            .join(Product, Product.id == Image.product_id)  # type: ignore[arg-type]
            .where(Image.job_id == job_id, Image.status == ImageStatus.FAILED)  # type: ignore[arg-type]
            .order_by(Product.position, Image.position)
        )
        if error_code:
            query = query.where(Image.error_code == error_code)  # type: ignore[arg-type]
        if text:
            pattern = f"%{text.strip()}%"
            query = query.where(or_(Product.number.ilike(pattern), Image.url.ilike(pattern)))  # type: ignore[attr-defined]
        if limit is not None:
            query = query.limit(limit)
        rows = session.execute(query).all()
    return pd.DataFrame(rows, columns=FAILED_COLUMNS)


def rejected_rows(db: Database, job_id: str, *, kind: str | None = None, limit: int = 1000) -> pd.DataFrame:
    with db.read() as session:
        query = (
            select(RejectedRow.row, RejectedRow.kind, RejectedRow.reason, RejectedRow.product, RejectedRow.url)
            .where(RejectedRow.job_id == job_id)  # type: ignore[arg-type]
            .order_by(RejectedRow.row)
            .limit(limit)
        )
        if kind:
            query = query.where(RejectedRow.kind == kind)  # type: ignore[arg-type]
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
                Image.position,
                Image.status,
                Image.storage_key,
                Image.width,
                Image.height,
                Image.format,
                Image.size_bytes,
                Image.error,
            )
            .join(Product, Product.id == Image.product_id)  # type: ignore[arg-type]
            .where(Product.job_id == job_id, Product.number == product)  # type: ignore[arg-type]
            .order_by(Image.position)
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
            .where(Worker.heartbeat_at > time.time() - stale_after)  # type: ignore[arg-type]
            .order_by(Worker.started_at)
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
        changed = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED]))  # type: ignore[arg-type, attr-defined]
            .values(status=JobStatus.CANCELLED, finished_at=time.time())
        ).rowcount
        session.execute(
            update(Image)
            .where(Image.job_id == job_id, Image.status == ImageStatus.QUEUED)  # type: ignore[arg-type]
            .values(status=ImageStatus.SKIPPED, error_code="cancelled", error="The job was cancelled.")
        )
    return bool(changed)


def retry_failed(db: Database, job_id: str) -> int:
    """Queue failed (and skipped) images again and reopen the job."""
    with db.write() as session:
        count = session.execute(
            update(Image)
            .where(Image.job_id == job_id, Image.status.in_([ImageStatus.FAILED, ImageStatus.SKIPPED]))  # type: ignore[arg-type, attr-defined]
            .values(status=ImageStatus.QUEUED, error_code=None, error=None, http_status=None)
        ).rowcount
        if count:
            session.execute(
                update(Job)
                .where(Job.id == job_id)  # type: ignore[arg-type]
                .values(status=JobStatus.RUNNING, finished_at=None)
            )
    return int(count or 0)


def _set_status(db: Database, job_id: str, from_states: list[JobStatus], to: JobStatus) -> bool:
    with db.write() as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_(from_states))  # type: ignore[arg-type, attr-defined]
            .values(status=to)
        )
    return bool(result.rowcount)


def delete_job(db: Database, storage: Storage, job_id: str) -> None:
    storage.delete_prefix(f"jobs/{job_id}/")
    with db.write() as session:
        for table in (Image, RejectedRow, Product):
            session.execute(delete(table).where(table.job_id == job_id))  # type: ignore[attr-defined]
        session.execute(delete(Job).where(Job.id == job_id))  # type: ignore[arg-type]


# ---------------------------------------------------------------- exports


def manifest_rows(db: Database, job_id: str, *, product: str | None = None) -> Iterator[ManifestRow]:
    """Stream manifest rows in product then position order, without loading them all."""
    original = Image.__table__.alias("original")  # type: ignore[attr-defined]
    query = (
        select(
            Product.number,
            Image.position,
            Image.url,
            Image.status,
            Image.sha256,
            Image.size_bytes,
            Image.format,
            Image.width,
            Image.height,
            Image.http_status,
            Image.attempts,
            Image.error,
            Image.error_code,
            Image.storage_key,
            original.c.position,
            original.c.format,
        )
        .join(Product, Product.id == Image.product_id)  # type: ignore[arg-type]
        .outerjoin(original, original.c.id == Image.duplicate_of_id)
        .where(Image.job_id == job_id)  # type: ignore[arg-type]
        .order_by(Product.position, Image.position)
    )
    if product is not None:
        query = query.where(Product.number == product)  # type: ignore[arg-type]
    with db.read() as session:
        result = session.execute(query.execution_options(yield_per=2000))
        for (
            number, pos, url, status, sha, size, fmt, w, h, http, attempts, err, code, key,
            dup_pos, dup_fmt,
        ) in result:
            yield ManifestRow(
                product=number,
                position=pos,
                source_url=url,
                status=status,
                file=image_file_name(number, pos, fmt) if status == ImageStatus.DONE and fmt else None,
                sha256=sha,
                bytes=size,
                format=fmt,
                width=w,
                height=h,
                http_status=http,
                attempts=attempts,
                error=f"{err} ({code})" if err and code else err,
                duplicate_of=image_file_name(number, dup_pos, dup_fmt) if dup_pos and dup_fmt else None,
                key=key if status == ImageStatus.DONE else None,
            )


def product_zip(db: Database, storage: Storage, job_id: str, product: str) -> Iterator[bytes]:
    return stream_zip(storage, manifest_rows(db, job_id, product=product), folder_per_product=False)


def product_zip_bytes(db: Database, storage: Storage, job_id: str, product: str) -> bytes:
    """For st.download_button: one product's ZIP is small enough to hand over whole."""
    return b"".join(product_zip(db, storage, job_id, product))


def job_zip(db: Database, storage: Storage, job_id: str) -> Iterator[bytes]:
    return stream_zip(storage, manifest_rows(db, job_id), folder_per_product=True)


def manifest_csv(db: Database, job_id: str) -> Iterator[bytes]:
    return manifest_csv_chunks(manifest_rows(db, job_id))


def failed_csv(db: Database, job_id: str) -> Iterator[bytes]:
    frame = failed_images(db, job_id, limit=None)
    return csv_rows_chunks(FAILED_COLUMNS, frame.itertuples(index=False, name=None))


def zip_file_name(job: JobPublic, product: str | None = None) -> str:
    if product is not None:
        return f"{product}.zip"
    return f"job-{job.id}.zip"
