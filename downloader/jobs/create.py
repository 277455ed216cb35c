"""Creating jobs: queue parsed input rows in bulk, and find the job an input already made."""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING

from sqlalchemy import func, insert, select

from downloader.db import Database
from downloader.errors import RateLimited
from downloader.models import JOB, PRODUCT, REJECTED_ROW, ImageStatus, Job, JobPublic, JobStatus

if TYPE_CHECKING:
    import pandas as pd

    from downloader.inputs import ParsedInput

# pandas and pyarrow are imported inside the functions that need them: the download processes
# import the jobs service for counts and must not carry pandas (~80 MB) for that.

INSERT_CHUNK = 20_000


def input_fingerprint(parsed: ParsedInput) -> str:
    """A stable hash of the rows to queue, so `run` on the same input resumes its job."""
    import pandas as pd

    frame = parsed.frame
    digest = hashlib.sha256()
    # Row hashes don't depend on other rows, so hashing in slices gives the same digest
    # without a whole-table copy of the strings (tens of MB at 100,000 rows).
    for first in range(0, len(frame), INSERT_CHUNK):
        part = frame.iloc[first : first + INSERT_CHUNK][["product", "url"]]
        digest.update(pd.util.hash_pandas_object(part, index=False).to_numpy().tobytes())
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
    fingerprint: str | None = None,
) -> JobPublic:
    """Queue every valid row of `parsed` as one job, in bulk inserts (`fingerprint`: its
    input_fingerprint, when the caller has it already)."""
    frame = parsed.frame
    job = Job(
        name=name[:200],
        source=source[:300],
        created_by=created_by[:64],
        products=int(frame["product"].nunique()) if len(frame) else 0,
        images=len(frame),
        rejected_rows=len(parsed.rejected),
        duplicates_removed=len(parsed.duplicates),
        input_sha256=fingerprint or input_fingerprint(parsed),
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
