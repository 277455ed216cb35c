"""The Excel report of a job: one row per image with its thumbnail in a cell, and a summary
row per product (`python -m downloader report JOB_ID --out FILE.xlsx`, the job page's
"Report (Excel)").

Written by XlsxWriter in constant_memory mode: each row goes to a temporary file as soon as
it is written, so a million-image job costs the memory of one row (embed_image works in that
mode; each picture's bytes are kept until the workbook closes, hence the THUMBNAILS_MAX cap,
with a note in the cells and on the About sheet beyond it). Rows come from the same chunked
reader as the manifest (downloader.exports.manifest_rows: each chunk read in its own short
session), so no database connection is held while the workbook is written. The products'
summary is counted on the same pass (rows arrive in product order) and written to its own
sheet. Every string cell is written as a string (never a formula) and made safe like the CSV
exports (a leading = + - @ gets a quote), so a re-saved CSV stays safe too.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from PIL import Image

from downloader.csvsafe import excel_safe
from downloader.db import Database
from downloader.export_names import job_options
from downloader.exports import manifest_rows
from downloader.fetch.sniff import pillow_image
from downloader.manifest import ManifestRow
from downloader.outputs.convert import MAX_PIXELS, worker_count
from downloader.storage import Storage

log = logging.getLogger(__name__)

THUMBNAILS_MAX = 10_000  # pictures embedded; rows beyond get a note instead
THUMBNAIL_SIDE = 96  # px, the longest side of an embedded thumbnail
THUMBNAIL_SOURCE_MAX = 64 * 1024 * 1024  # bytes: larger files get no thumbnail
ROW_HEIGHT = 60  # points: the thumbnail's cell
IMAGE_COLUMNS = [
    "Thumbnail",
    "Product",
    "Position",
    "File",
    "Status",
    "Width",
    "Height",
    "Bytes",
    "Format",
    "Output bytes",
    "Output format",
    "Warnings",
    "Error",
    "Source URL",
]
PRODUCT_COLUMNS = ["Product", "Folder", "Images", "Done", "Duplicate", "Failed", "Other"]
PRODUCT_COLUMNS += ["Bytes", "With warnings", "First error"]
NOTE_BEYOND = f"(no thumbnail: the report embeds the first {THUMBNAILS_MAX:,})"


@dataclass
class ReportStats:
    images: int = 0
    products: int = 0
    thumbnails: int = 0
    without_thumbnail: int = 0


@dataclass
class _ProductSummary:
    number: str
    folder: str
    counts: dict[str, int] = field(default_factory=dict)
    images: int = 0
    bytes: int = 0
    warned: int = 0
    first_error: str = ""

    def add(self, row: ManifestRow) -> None:
        self.images += 1
        self.counts[row.status] = self.counts.get(row.status, 0) + 1
        if row.status == "done":
            self.bytes += row.entry_bytes or 0
        if row.warnings:
            self.warned += 1
        if row.error and not self.first_error:
            self.first_error = row.error

    def values(self) -> list[object]:
        done, dup, failed = (self.counts.get(s, 0) for s in ("done", "duplicate", "failed"))
        other = self.images - done - dup - failed
        return [self.number, self.folder, self.images, done, dup, failed, other, self.bytes]
        # (the last two are added by the writer: warnings count and first error)


def thumbnail(data: bytes, side: int = THUMBNAIL_SIDE) -> bytes | None:
    """A small JPEG of an image file, or None for one that cannot be read. The pixel limit
    is checked from the header before decoding; JPEGs decode at a reduced scale."""
    pillow_image()  # AVIF, HEIC/HEIF and JPEG XL, as the download's checks read them
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if opened.width * opened.height > MAX_PIXELS:
                return None
            opened.draft("RGB", (side, side))
            opened.thumbnail((side, side))
            image: Image.Image = opened
            if image.mode not in ("RGB", "L"):
                rgba = image.convert("RGBA")
                image = Image.new("RGB", rgba.size, (255, 255, 255))
                image.paste(rgba, mask=rgba.getchannel("A"))
            out = io.BytesIO()
            image.save(out, "JPEG", quality=70)
            return out.getvalue()
    except Exception:  # a broken file: its row simply has no picture
        return None


def _thumbnail_of(storage: Storage, key: str, size: int | None) -> bytes | None:
    if size is not None and size > THUMBNAIL_SOURCE_MAX:
        return None
    try:
        return thumbnail(storage.read_bytes(key))
    except Exception:  # gone from storage since: no picture
        return None


def _with_thumbnails(
    rows: Iterator[ManifestRow], storage: Storage, limit: int
) -> Iterator[tuple[ManifestRow, Future[bytes | None] | None]]:
    """The rows, each with its thumbnail made in a thread pool (a bounded window ahead)."""
    window: list[tuple[ManifestRow, Future[bytes | None] | None]] = []
    made = 0
    with ThreadPoolExecutor(max(1, worker_count())) as pool:
        for row in rows:
            future = None
            if row.has_file and row.key and made < limit:
                future = pool.submit(_thumbnail_of, storage, row.key, row.entry_bytes)
                made += 1
            window.append((row, future))
            if len(window) >= 64:
                yield from window[:32]
                del window[:32]
        yield from window


def write_report(
    db: Database,
    storage: Storage,
    job_id: str,
    out: str | os.PathLike[str] | IO[bytes],
    *,
    thumbnails_max: int = THUMBNAILS_MAX,
) -> ReportStats:
    """Write the job's report to `out` (a path or a binary file object)."""
    import xlsxwriter  # only when a report is written

    options = job_options(db, job_id)
    extra_columns = list(options.extra_columns)
    target: Any = os.fspath(out) if isinstance(out, str | os.PathLike) else out
    workbook = xlsxwriter.Workbook(
        target,
        {
            "constant_memory": True,
            "strings_to_formulas": False,
            "strings_to_urls": False,
            "strings_to_numbers": False,
        },
    )
    stats = ReportStats()
    try:
        _write_sheets(workbook, db, storage, job_id, options, extra_columns, stats, thumbnails_max)
    finally:
        workbook.close()
    return stats


def _write_sheets(
    workbook: Any,
    db: Database,
    storage: Storage,
    job_id: str,
    options: Any,
    extra_columns: list[str],
    stats: ReportStats,
    thumbnails_max: int,
) -> None:
    bold = workbook.add_format({"bold": True})
    images = workbook.add_worksheet("Images")
    products = workbook.add_worksheet("Products")
    about = workbook.add_worksheet("About")
    header = IMAGE_COLUMNS + [f"{name} (input)" for name in extra_columns]
    _header(images, header, bold)
    images.set_column(0, 0, 14)
    images.set_column(1, 4, 18)
    images.set_column(len(IMAGE_COLUMNS) - 3, len(IMAGE_COLUMNS) - 1, 40)
    _header(products, PRODUCT_COLUMNS, bold)
    products.set_column(0, 1, 20)
    products.set_column(len(PRODUCT_COLUMNS) - 1, len(PRODUCT_COLUMNS) - 1, 50)

    summary: _ProductSummary | None = None
    row_index = 0
    for row, future in _with_thumbnails(
        manifest_rows(db, job_id, options=options), storage, thumbnails_max
    ):
        row_index += 1
        stats.images += 1
        if summary is None or summary.number != row.product:
            if summary is not None:
                _product_row(products, stats, summary)
            summary = _ProductSummary(row.product, row.folder or "")
        summary.add(row)
        picture = future.result() if future is not None else None
        images.set_row(row_index, ROW_HEIGHT if picture else None)
        # the row's other cells first: in constant_memory mode the first write to a new row
        # flushes the previous one and clears the table, and embed_image does not trigger
        # that flush itself, so a picture written first would be cleared with it
        _image_cells(images, row_index, row)
        if picture:
            images.embed_image(
                row_index, 0, f"{row_index}.jpg", {"image_data": io.BytesIO(picture)}
            )
            stats.thumbnails += 1
        elif row.has_file and future is None:
            images.write_string(row_index, 0, NOTE_BEYOND)
            stats.without_thumbnail += 1
    if summary is not None:
        _product_row(products, stats, summary)
    last_column = len(header) - 1
    images.freeze_panes(1, 0)
    images.autofilter(0, 0, max(row_index, 1), last_column)
    products.freeze_panes(1, 0)
    products.autofilter(0, 0, max(stats.products, 1), len(PRODUCT_COLUMNS) - 1)
    about.set_column(0, 0, 24)
    about.set_column(1, 1, 80)
    facts = [
        ("Job", job_id),
        ("Images", stats.images),
        ("Products", stats.products),
        ("Thumbnails", stats.thumbnails),
        ("Output", "original files" if options.convert == "original" else options.convert),
    ]
    if stats.without_thumbnail:
        facts.append(("Note", f"Only the first {thumbnails_max:,} images have a thumbnail."))
    for index, (name, value) in enumerate(facts):
        about.write_string(index, 0, name, bold)
        _cell(about, index, 1, value)


def _header(sheet: Any, names: list[str], bold: Any) -> None:
    for column, name in enumerate(names):
        sheet.write_string(0, column, excel_safe(name), bold)


def _cell(sheet: Any, row: int, column: int, value: object) -> None:
    """A number as a number, anything else as a safe string; None stays empty."""
    if value is None or value == "":
        return
    if isinstance(value, int | float) and not isinstance(value, bool):
        sheet.write_number(row, column, value)
    else:
        sheet.write_string(row, column, excel_safe(value)[:32_000])


def _image_cells(sheet: Any, index: int, row: ManifestRow) -> None:
    converted = bool(row.output_format)
    values: list[object] = [
        row.product,
        row.position,
        row.file,
        row.status,
        row.output_width if converted else row.width,
        row.output_height if converted else row.height,
        row.bytes,
        row.format,
        row.output_bytes,
        row.output_format,
        row.warnings,
        row.error,
        row.source_url,
        *row.extra,
    ]
    for column, value in enumerate(values, start=1):
        _cell(sheet, index, column, value)


def _product_row(sheet: Any, stats: ReportStats, summary: _ProductSummary) -> None:
    stats.products += 1
    values = [*summary.values(), summary.warned, summary.first_error]
    for column, value in enumerate(values):
        _cell(sheet, stats.products, column, value)


def report_file_name(job_id: str) -> str:
    return f"job-{job_id}-report.xlsx"


def report_bytes(db: Database, storage: Storage, job_id: str) -> bytes:
    """The report as bytes (the job page's download), built in a temporary file."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "report.xlsx"
        write_report(db, storage, job_id, path)
        return path.read_bytes()
