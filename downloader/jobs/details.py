"""Reading inside one job: per-product progress, single images, failures and rejected rows."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Select, case, func, or_, select

from downloader.db import Database
from downloader.manifest import csv_rows_chunks, image_file_name
from downloader.models import IMAGE, PENDING_IMAGE_STATUSES, PRODUCT, REJECTED_ROW, ImageStatus
from downloader.naming import folder_name
from downloader.row_chunks import image_rows_in_order, rows_in_key_order

if TYPE_CHECKING:
    import pandas as pd

# pandas is imported inside the functions that build tables: the download processes import
# the jobs service for counts and must not carry pandas (~80 MB) for that.

FAILED_COLUMNS = ["product", "position", "url", "error_code", "error", "http_status", "attempts"]
REJECTED_COLUMNS = ["row", "kind", "reason", "product", "url"]
STREAM_BATCH = 2000  # rows per short read of the CSV exports (downloader.row_chunks)


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


def failed_images(
    db: Database,
    job_id: str,
    *,
    error_code: str | None = None,
    text: str | None = None,
    limit: int | None = 1000,
) -> pd.DataFrame:
    return _frame(
        db, _failed_query(job_id, error_code=error_code, text=text), limit, FAILED_COLUMNS
    )


def failed_csv(db: Database, job_id: str) -> Iterator[bytes]:
    """Every failed image as CSV chunks, streamed from the database (ZIPs and the manifest
    live in downloader/exports.py)."""
    # chunk by chunk in short reads: a stalled client holds no connection
    query = _failed_query(job_id, by_product=True).order_by(None)
    return csv_rows_chunks(FAILED_COLUMNS, image_rows_in_order(db, query, chunk=STREAM_BATCH))


def _failed_query(
    job_id: str,
    *,
    error_code: str | None = None,
    text: str | None = None,
    by_product: bool = False,
) -> Select[Any]:
    """`by_product`: find the failures through the job's products, in order (the chunked
    CSV), rather than through image.job_id, which has every chunk sort all the failures."""
    job = PRODUCT.c.job_id == job_id if by_product else IMAGE.c.job_id == job_id
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
        .where(job, IMAGE.c.status == ImageStatus.FAILED)
        .order_by(PRODUCT.c.position, IMAGE.c.position)
    )
    if error_code:
        query = query.where(IMAGE.c.error_code == error_code)
    if text:
        pattern = f"%{text.strip()}%"
        query = query.where(or_(PRODUCT.c.number.ilike(pattern), IMAGE.c.url.ilike(pattern)))
    return query


def _frame(db: Database, query: Select[Any], limit: int | None, columns: list[str]) -> pd.DataFrame:
    """The first `limit` rows of `query` (all with None) as a table for the page."""
    import pandas as pd

    if limit is not None:
        query = query.limit(limit)
    with db.read() as session:
        rows = session.execute(query).all()
    return pd.DataFrame(rows, columns=columns)


def rejected_rows(db: Database, job_id: str, *, limit: int | None = 1000) -> pd.DataFrame:
    """The input rows left out of the job (kind 'rejected' or 'duplicate'), in input order."""
    return _frame(db, _rejected_query(job_id), limit, REJECTED_COLUMNS)


def rejected_csv(db: Database, job_id: str) -> Iterator[bytes]:
    """Every rejected and duplicate input row as CSV chunks, streamed from the database, each
    cell Excel-safe: these cells are the user's raw input, the likeliest place for a formula."""
    # Larger reads here: with no (job_id, row) index each read sorts the job's rejected rows.
    query = _rejected_query(job_id).order_by(None)
    rows = rows_in_key_order(
        db, query, REJECTED_ROW.c.row, REJECTED_ROW.c.id, chunk=STREAM_BATCH * 5
    )
    return csv_rows_chunks(REJECTED_COLUMNS, rows)


def _rejected_query(job_id: str) -> Select[Any]:
    return (
        select(
            REJECTED_ROW.c.row,
            REJECTED_ROW.c.kind,
            REJECTED_ROW.c.reason,
            REJECTED_ROW.c.product,
            REJECTED_ROW.c.url,
        )
        .where(REJECTED_ROW.c.job_id == job_id)
        .order_by(REJECTED_ROW.c.row)
    )


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
    details: str = ""  # colour mode, alpha, frames, ICC profile, orientation, for a caption


#: What an EXIF orientation asks a viewer to do (the stored width and height stay as they are).
ORIENTATIONS = {
    2: "mirrored",
    3: "rotated 180°",
    4: "flipped",
    5: "mirrored, rotated 90°",
    6: "rotated 90°",
    7: "mirrored, rotated 270°",
    8: "rotated 270°",
}


def describe_details(
    mode: str | None,
    alpha: bool | None,
    frames: int | None,
    icc: str | None,
    orientation: int | None,
) -> str:
    """'CMYK · alpha · 3 frames · ICC: sRGB · rotated 90°': what the whole-file check read."""
    parts = [mode or ""]
    if alpha:
        parts.append("alpha")
    if frames and frames > 1:
        parts.append(f"{frames} frames")
    if icc:
        parts.append(f"ICC: {icc}")
    if orientation in ORIENTATIONS:
        parts.append(ORIENTATIONS[orientation])
    return " · ".join(part for part in parts if part)


def product_images(db: Database, job_id: str, product: str, *, limit: int = 200) -> list[ImageInfo]:
    with db.read() as session:
        rows = session.execute(
            select(
                PRODUCT.c.folder,
                IMAGE.c.position,
                IMAGE.c.status,
                IMAGE.c.storage_key,
                IMAGE.c.width,
                IMAGE.c.height,
                IMAGE.c.format,
                IMAGE.c.size_bytes,
                IMAGE.c.error,
                IMAGE.c.color_mode,
                IMAGE.c.has_alpha,
                IMAGE.c.frames,
                IMAGE.c.icc_profile,
                IMAGE.c.orientation,
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
            file=image_file_name(folder or folder_name(product), pos, fmt)
            if fmt and status == ImageStatus.DONE
            else None,
            status=status,
            key=key,
            width=w,
            height=h,
            format=fmt,
            size_bytes=size,
            error=err,
            details=describe_details(*details),
        )
        for folder, pos, status, key, w, h, fmt, size, err, *details in rows
    ]
