"""The manifest: one row per image of a job, and Excel-safe CSV streamed in chunks.

ZIPs carry it as manifest.csv; the app also serves it (and the failed rows) on its own.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from downloader.csvsafe import excel_safe

MANIFEST_NAME = "manifest.csv"
IMAGE_DETAIL_COLUMNS = ("color_mode", "alpha", "frames", "icc_profile", "orientation")
MANIFEST_COLUMNS = [
    "product",
    "position",
    "source_url",
    "status",
    "file",
    "sha256",
    "bytes",
    "format",
    "width",
    "height",
    "http_status",
    "attempts",
    "error",
    "duplicate_of",
    # the converted file the ZIPs hold (empty when the job keeps the originals) and the
    # marketplace checks' warnings (downloader.outputs)
    "output_format",
    "output_bytes",
    "output_width",
    "output_height",
    "warnings",
    # what the whole-file check read (downloader.fetch.structure): Pillow's mode name, alpha,
    # frames or pages, the ICC profile's description, the EXIF orientation (1-8)
    *IMAGE_DETAIL_COLUMNS,
]
CSV_CHUNK_SIZE = 64 * 1024  # CSV text is handed out in pieces of about this size


@dataclass(slots=True)
class ManifestRow:
    """One image as listed in manifest.csv; `key` is where its bytes are stored."""

    product: str
    position: int
    source_url: str
    status: str
    file: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    http_status: int | None = None
    attempts: int = 0
    error: str | None = None
    duplicate_of: str | None = None
    key: str | None = None  # storage key; not written to the CSV
    crc32: int | None = None  # of the stored bytes, when known; not written to the CSV
    folder: str | None = None  # the product's folder (downloader.naming); not in the CSV
    output_format: str | None = None  # the converted file's (None: the original is the file)
    output_bytes: int | None = None
    output_width: int | None = None
    output_height: int | None = None
    warnings: str | None = None  # the checks' warnings, joined
    color_mode: str | None = None
    alpha: bool | None = None
    frames: int | None = None
    icc_profile: str | None = None
    orientation: int | None = None
    # the input's other columns' values, in the job's extra_columns order (after the others)
    extra: tuple[str, ...] = ()

    def csv_values(self) -> list[object]:
        return [
            self.product,
            self.position,
            self.source_url,
            self.status,
            self.file,
            self.sha256,
            self.bytes,
            self.format,
            self.width,
            self.height,
            self.http_status,
            self.attempts,
            self.error,
            self.duplicate_of,
            self.output_format,
            self.output_bytes,
            self.output_width,
            self.output_height,
            self.warnings,
            self.color_mode,
            None if self.alpha is None else ("yes" if self.alpha else "no"),
            self.frames,
            self.icc_profile,
            self.orientation,
            *self.extra,
        ]

    @property
    def entry_bytes(self) -> int | None:
        """The size of the file in the ZIP (at `key`): the converted output's when there is one."""
        return self.output_bytes if self.output_format else self.bytes

    @property
    def has_file(self) -> bool:
        """True if this row contributes a file entry to a ZIP."""
        return self.status == "done" and bool(self.key)


def manifest_header(extra_columns: Sequence[str] = ()) -> list[str]:
    """The manifest's columns: the standard ones, then the input's other columns as named in
    the input (a name equal to a standard column gets " (input)" so that both stay readable)."""
    taken = set(MANIFEST_COLUMNS)
    return MANIFEST_COLUMNS + [
        f"{name} (input)" if name in taken else name for name in extra_columns
    ]


def image_file_name(folder: str, position: int, ext: str) -> str:
    """The file name of an image inside its product: `{product}_{position}.{ext}`, where the
    product part is the product's folder name (downloader.naming), not the number as typed."""
    return f"{folder}_{position}.{ext}"


class CsvEncoder:
    """Excel-safe CSV rows to UTF-8 bytes, buffered."""

    def __init__(self) -> None:
        self._text = io.StringIO()
        self._writer = csv.writer(self._text, lineterminator="\r\n")

    def write(self, values: Iterable[object]) -> None:
        self._writer.writerow([excel_safe(value) for value in values])

    @property
    def pending(self) -> int:
        return self._text.tell()

    def take(self) -> bytes:
        data = self._text.getvalue().encode("utf-8")
        self._text.seek(0)
        self._text.truncate()
        return data


def csv_rows_chunks(header: list[str], rows: Iterable[Sequence[object]]) -> Iterator[bytes]:
    """A UTF-8 CSV (CRLF, header first) with every cell made Excel-safe, in ~64 KB chunks."""
    encoder = CsvEncoder()
    encoder.write(header)
    for row in rows:
        encoder.write(row)
        if encoder.pending >= CSV_CHUNK_SIZE:
            yield encoder.take()
    tail = encoder.take()
    if tail:
        yield tail


def manifest_csv_chunks(
    rows: Iterable[ManifestRow], header: Sequence[str] = MANIFEST_COLUMNS
) -> Iterator[bytes]:
    """manifest.csv for `rows` (consumed once, lazily); `header`: manifest_header(...)."""
    return csv_rows_chunks(list(header), (row.csv_values() for row in rows))
