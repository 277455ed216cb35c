"""Exports of a job: the manifest rows, product and master ZIPs, the manifest CSV.

Rows stream from the database in product then position order; ZIPs stream from storage
(archive.stream_zip), so neither is ever held whole in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sqlalchemy import select

from downloader.archive import ZipChunk, stream_zip, zip_size
from downloader.db import Database
from downloader.export_names import RawRow, job_options, name_rows
from downloader.job_options import JobOptions
from downloader.manifest import ManifestRow, manifest_csv_chunks, manifest_header
from downloader.models import IMAGE, JOB, PRODUCT, ImageStatus, JobPublic
from downloader.naming import folder_name
from downloader.outputs.checks import all_warnings, joined, placeholder_hashes
from downloader.row_chunks import image_rows_in_order
from downloader.storage import Storage, output_key


def manifest_rows(
    db: Database, job_id: str, *, product: str | None = None, options: JobOptions | None = None
) -> Iterator[ManifestRow]:
    """Stream manifest rows in product then position order, without loading them all; file
    names from the job's naming template and layout (downloader.export_names)."""
    if options is None:
        options = job_options(db, job_id)
    return name_rows(
        _raw_rows(db, job_id, product=None if options.layout == "flat" else product),
        options,
        only_product=product,
    )


def _raw_rows(db: Database, job_id: str, *, product: str | None) -> Iterator[RawRow]:
    original = IMAGE.alias("original")
    query = (
        select(
            PRODUCT.c.number,
            PRODUCT.c.folder,
            IMAGE.c.position,
            IMAGE.c.url,
            IMAGE.c.status,
            IMAGE.c.sha256,
            IMAGE.c.size_bytes,
            IMAGE.c.format,
            IMAGE.c.width,
            IMAGE.c.height,
            IMAGE.c.http_status,
            IMAGE.c.attempts,
            IMAGE.c.error,
            IMAGE.c.error_code,
            IMAGE.c.storage_key,
            IMAGE.c.crc32,
            original.c.position,
            IMAGE.c.extra,
            IMAGE.c.output_format,
            IMAGE.c.output_bytes,
            IMAGE.c.output_width,
            IMAGE.c.output_height,
            IMAGE.c.warnings,
            IMAGE.c.color_mode,
            IMAGE.c.has_alpha,
            IMAGE.c.frames,
            IMAGE.c.icc_profile,
            IMAGE.c.orientation,
        )
        .join(PRODUCT, PRODUCT.c.id == IMAGE.c.product_id)
        .outerjoin(original, original.c.id == IMAGE.c.duplicate_of_id)
        # by product (not image.job_id): each chunk then walks the (job_id, position) index of
        # products and each product's images in the (product_id, position) index, in order
        .where(PRODUCT.c.job_id == job_id)
    )
    if product is not None:
        query = query.where(PRODUCT.c.number == product)
    placeholders = placeholder_hashes(db, job_id)  # files shared by many products (checks)
    # Chunk by chunk, each in its own short read: a stream whose client stalls holds no
    # database connection (see downloader.row_chunks).
    for (
        number,
        folder,
        pos,
        url,
        status,
        sha,
        size,
        fmt,
        w,
        h,
        http,
        attempts,
        err,
        code,
        key,
        crc,
        dup_pos,
        extra,
        output_format,
        output_bytes,
        output_width,
        output_height,
        warnings,
        *details,
    ) in image_rows_in_order(db, query):
        folder = folder or folder_name(number)  # None: a product stored without one
        row = ManifestRow(
            product=number,
            position=pos,
            source_url=url,
            status=status,
            sha256=sha,
            bytes=size,
            format=fmt,
            width=w,
            height=h,
            http_status=http,
            attempts=attempts,
            error=f"{err} ({code})" if err and code else err,
            key=key if status == ImageStatus.DONE else None,
            crc32=crc,
            folder=folder,
        )
        if status == ImageStatus.DONE:
            row.color_mode, row.alpha, row.frames, row.icc_profile, row.orientation = details
            # a converted image: the ZIPs hold its output (its own key, no CRC kept); sha256
            # and bytes stay the original's, what the server sent (downloader.outputs)
            if output_format and key:
                row.key, row.crc32 = output_key(key), None
                row.output_format, row.output_bytes = output_format, output_bytes
                row.output_width, row.output_height = output_width, output_height
            row.warnings = joined(all_warnings(warnings, sha, placeholders)) or None
        # the file's extension: the converted output's format when the job converts
        ext = (output_format or fmt) if status == ImageStatus.DONE else None
        yield row, ext, extra, dup_pos


def product_zip(db: Database, storage: Storage, job_id: str, product: str) -> Iterator[ZipChunk]:
    options = job_options(db, job_id)
    return stream_zip(
        storage,
        manifest_rows(db, job_id, product=product, options=options),
        folder_per_product=False,
        header=manifest_header(options.extra_columns),
        stamp=finished_at(db, job_id),
    )


def product_zip_bytes(db: Database, storage: Storage, job_id: str, product: str) -> bytes:
    """For st.download_button: one product's ZIP is small enough to hand over whole."""
    return b"".join(product_zip(db, storage, job_id, product))


def job_zip(db: Database, storage: Storage, job_id: str) -> Iterator[ZipChunk]:
    """The master ZIP: `{folder}/{name}` per product, or every `{name}` at the root when the
    job's layout is flat (names unique across the job then)."""
    options = job_options(db, job_id)
    return stream_zip(
        storage,
        manifest_rows(db, job_id, options=options),
        folder_per_product=options.layout != "flat",
        header=manifest_header(options.extra_columns),
        stamp=finished_at(db, job_id),
    )


def finished_at(db: Database, job_id: str) -> float | None:
    """When the job ended (None while it runs): a finished job's ZIP entries carry this time."""
    with db.read() as session:
        value = session.execute(select(JOB.c.finished_at).where(JOB.c.id == job_id)).scalar()
    return float(value) if value is not None else None


def job_zip_size(db: Database, storage: Storage, job_id: str) -> int:
    """The exact length of `job_zip` while the job's rows don't change (a finished job)."""
    options = job_options(db, job_id)
    return zip_size(
        storage,
        manifest_rows(db, job_id, options=options),
        folder_per_product=options.layout != "flat",
        header=manifest_header(options.extra_columns),
    )


def manifest_csv(db: Database, job_id: str) -> Iterator[bytes]:
    options = job_options(db, job_id)
    return manifest_csv_chunks(
        manifest_rows(db, job_id, options=options), manifest_header(options.extra_columns)
    )


def zip_file_name(job: JobPublic, product: str | None = None, *, folder: str | None = None) -> str:
    """The download name of the job's ZIP, or of one product's: its folder name (pass the
    stored one from `product_folders`; without it the name is still safe, but a case twin
    is not told apart)."""
    if product is not None:
        return f"{folder or folder_name(product)}.zip"
    return f"job-{job.id}.zip"


def product_folders(db: Database, job_id: str, products: Iterable[str]) -> dict[str, str]:
    """The folder name of each of these products of the job, as every export uses it."""
    wanted = list(dict.fromkeys(products))
    folders: dict[str, str] = {}
    with db.read() as session:
        for start in range(0, len(wanted), 500):
            rows = session.execute(
                select(PRODUCT.c.number, PRODUCT.c.folder).where(
                    PRODUCT.c.job_id == job_id, PRODUCT.c.number.in_(wanted[start : start + 500])
                )
            ).all()
            folders.update({number: folder or folder_name(number) for number, folder in rows})
    return folders
