"""Creating jobs: queue parsed input rows in bulk, and find the job an input already made."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sqlalchemy import func, insert, select
from sqlmodel import Session

from downloader.db import Database, placeholder
from downloader.errors import RateLimited
from downloader.job_options import JobOptions
from downloader.models import JOB, PRODUCT, REJECTED_ROW, ImageStatus, Job, JobPublic, JobStatus
from downloader.naming import unique_folder_names
from downloader.request_headers import RequestHeaders, to_json

if TYPE_CHECKING:
    from downloader.inputs import ParsedInput
    from downloader.job_rows import JobRows

# The parsed input becomes rows in downloader.inputs.to_rows (pandas, pyarrow), imported only
# by the functions that need it: the download processes import the jobs service for counts and
# must not carry pandas (~80 MB) for that.

INSERT_CHUNK = 20_000  # rows per executemany


def check_owner_limits(db: Database, owner: str, *, per_minute: int, max_active: int) -> None:
    """Refuse a new job for `owner` (one person, whatever browser sessions they use) when
    they created `per_minute` jobs in the last minute (JOB_RATE_LIMIT_PER_MINUTE), or have
    `max_active` jobs queued or running (MAX_ACTIVE_JOBS_PER_USER); 0 turns either off."""
    with db.read() as session:
        recent = session.execute(
            select(func.count())
            .select_from(JOB)
            .where(JOB.c.owner == owner, JOB.c.created_at > time.time() - 60)
        ).scalar_one()
        active = session.execute(
            select(func.count())
            .select_from(JOB)
            .where(
                JOB.c.owner == owner,
                JOB.c.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]),
            )
        ).scalar_one()
    if per_minute > 0 and recent >= per_minute:
        raise RateLimited(
            f"You created {recent} jobs in the last minute (limit {per_minute}); wait a moment."
        )
    if max_active > 0 and active >= max_active:
        raise RateLimited(
            f"You have {active} jobs queued or running (limit {max_active} per person); wait "
            "for one to finish, or pause or cancel one, before starting another."
        )


def check_rate_limit(db: Database, created_by: str, per_minute: int) -> None:
    """Refuse a job when this session created `per_minute` jobs in the last minute (by the
    old per-session `created_by`; the app counts per person: check_owner_limits)."""
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
    owner: str | None = None,
    fingerprint: str | None = None,
    request_headers: RequestHeaders | None = None,
    options: JobOptions | None = None,
) -> JobPublic:
    """Queue every valid row of `parsed` as one job, in bulk inserts (`fingerprint`: its
    input_fingerprint, when the caller has it already; `request_headers`: the job's own,
    stored on the job for the engines, downloader.request_headers; `owner`: who the job
    belongs to, downloader.identity)."""
    from downloader.inputs.to_rows import job_rows

    return insert_job(
        db,
        job_rows(parsed, fingerprint),
        name=name,
        source=source,
        created_by=created_by,
        owner=owner,
        request_headers=request_headers,
        options=options,
    )


def insert_job(
    db: Database,
    rows: JobRows,
    *,
    name: str = "",
    source: str = "",
    created_by: str = "",
    owner: str | None = None,
    request_headers: RequestHeaders | None = None,
    options: JobOptions | None = None,
) -> JobPublic:
    """Queue `rows` as one job, in bulk inserts. Consumes `rows`: its image chunks are read
    once, and its product list is emptied once written (peak memory at a million rows).

    `options`: the job's output options (downloader.job_options); its naming template is
    checked against the input's columns first (TemplateError, nothing written), and the
    input's other column names are kept with them (`extra_columns`)."""
    from dataclasses import replace

    from downloader.outputs.profile import validate_output_options
    from downloader.templates import check_template

    options = replace(options or JobOptions(), extra_columns=list(rows.extra_columns))
    check_template(options.naming, options.extra_columns, options.layout)
    validate_output_options(options)  # conversion and checks (OptionError, nothing written)
    job = Job(
        name=name[:200],
        source=source[:300],
        created_by=created_by[:64],
        owner=owner[:320] if owner else None,
        products=len(rows.products),
        images=rows.images,
        rejected_rows=len(rows.rejected),
        duplicates_removed=len(rows.duplicates),
        input_sha256=rows.fingerprint,
        request_headers=to_json(request_headers) if request_headers else None,
        options=None if options.is_default else options.to_json(),
    )
    if not rows.images:
        job.status = JobStatus.COMPLETED
        job.finished_at = time.time()
    with db.write() as session:
        session.add(job)
        session.flush()
        job_id = job.id
        _insert_products_and_images(session, job_id, rows)
        _insert_rejected(session, job_id, rows)
        session.flush()
        public = JobPublic.model_validate(job, from_attributes=True)
    return public


def _insert_products_and_images(session: Session, job_id: str, rows: JobRows) -> None:
    """Bulk-insert the job's products, then its images, chunk by chunk.

    Plain tuples go through the driver's executemany: SQLAlchemy's per-row dictionaries cost
    more time and memory than the inserts themselves at a million rows.
    """
    if not rows.images:
        return
    conn = session.connection()
    mark = placeholder(conn)
    product_sql = (
        "INSERT INTO product (job_id, number, folder, position, image_count)"
        f" VALUES ({mark}, {mark}, {mark}, {mark}, {mark})"
    )
    products, rows.products = rows.products, []  # let go once written: ~10 MB at 100,000
    # Named once, here, in product order: every export of the job uses the same folders.
    folders = unique_folder_names(number for number, _ in products)
    for first in range(0, len(products), INSERT_CHUNK):
        conn.exec_driver_sql(
            product_sql,
            [
                (job_id, number, folders[first + i], first + i + 1, size)
                for i, (number, size) in enumerate(products[first : first + INSERT_CHUNK])
            ],
        )
    del products, folders
    ids = dict(
        conn.execute(select(PRODUCT.c.number, PRODUCT.c.id).where(PRODUCT.c.job_id == job_id)).all()
    )

    columns = (
        "job_id, product_id, position, url, host, source_row, status, attempts, updated_at, extra"
    )
    image_sql = f"INSERT INTO image ({columns}) VALUES ({', '.join([mark] * 10)})"
    queued, now = ImageStatus.QUEUED.value, time.time()
    for chunk in rows.image_chunks:
        conn.exec_driver_sql(
            image_sql,
            [
                (job_id, ids[product], pos, url, host, row, queued, 0, now, extra)
                for product, pos, url, host, row, extra in chunk
            ],
        )


def _insert_rejected(session: Session, job_id: str, job_rows: JobRows) -> None:
    rows = [
        {
            "job_id": job_id,
            "kind": kind,
            "row": row,
            "reason": reason[:300],
            "product": product[:200],
            "url": url[:200],
        }
        for kind, items in (("rejected", job_rows.rejected), ("duplicate", job_rows.duplicates))
        for row, reason, product, url in items
    ]
    conn = session.connection()
    for start in range(0, len(rows), INSERT_CHUNK):
        conn.execute(insert(REJECTED_ROW), rows[start : start + INSERT_CHUNK])


def find_unfinished_job(db: Database, fingerprint: str) -> str | None:
    """The newest job from the same input that is not finished yet, for `run` to resume."""
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
