"""ZIP archives of a job's images and its manifest (downloader.manifest), streamed.

Product ZIP (`folder_per_product=False`): the product's files + `manifest.csv`.
Master ZIP (`folder_per_product=True`): `{folder}/{file}` for every product + `manifest.csv`,
where `folder` is the product's folder name (downloader.naming: no device names, unique in
the job ignoring case), carried by the rows.

Entries are stored (images are compressed already) and produced by zipstream-ng while the
caller iterates: file bytes are read lazily from the storage in chunks, `rows` is consumed
exactly once (it may be a generator over a database cursor), the manifest is spooled to a
temporary file as the rows go by, and the central directory is spooled too, so memory stays
flat from 10 to 1,000,000 entries. ZIP64 records are written automatically when needed.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import tempfile
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import IO, Any

from zipstream import ZIP_STORED, ZipStream
from zipstream.ng import ZipStreamInfo

from downloader.manifest import (
    CSV_CHUNK_SIZE,
    MANIFEST_COLUMNS,
    MANIFEST_NAME,
    CsvEncoder,
    ManifestRow,
    image_file_name,
)
from downloader.naming import folder_name, safe_segment
from downloader.storage import DEFAULT_CHUNK_SIZE, Storage, iter_stream

log = logging.getLogger(__name__)

# A piece of ZIP output: bytes, or a view of a buffer a file was read into in place.
ZipChunk = bytes | memoryview
_FLAG_DATA_DESCRIPTOR = 0x08  # sizes and CRC follow the data (as zipstream-ng writes them)

MISSING_ERROR = "The downloaded file is missing from storage (storage_missing)"

OUTPUT_CHUNK_SIZE = 64 * 1024  # small ZIP records are merged up to this size
PREFETCH_MAX_BYTES = 4 * 1024 * 1024  # read-ahead only files up to this size
WHOLE_ENTRY_MAX_BYTES = 4 * 1024 * 1024  # files with a known CRC up to this size: one piece
SPOOL_MEMORY = 4 * 1024 * 1024  # spools stay in memory up to this, then go to disk
S3_PREFETCH = 16  # files fetched ahead in threads when the storage is remote

# ZIP format limits as zipstream-ng / zipfile apply them.
_ZIP64_LIMIT = (1 << 31) - 1
_ZIP_FILECOUNT_LIMIT = (1 << 16) - 1
_ZIP64_ESTIMATE_FACTOR = 1.05

# -- names ----------------------------------------------------------------------------------


def _safe_name(text: str, fallback: str) -> str:
    """One path component for inside a ZIP: no separators or reserved characters, no leading
    dots, no Windows device name (defence in depth: the names reaching here are derived
    safely already). Letters of any language are kept: an ASCII-only rule here would merge
    folders such as `Größe` and `Grüße` into one."""
    return safe_segment(text, fallback, 255)


def _entry_names(row: ManifestRow, folder_per_product: bool) -> tuple[str, str]:
    """(file name for the manifest, arcname in the ZIP) of a row that has a file."""
    if row.file:
        file_name = _safe_name(row.file.rsplit("/", 1)[-1], f"{row.position}")
    else:
        ext = (row.key or "").rsplit(".", 1)[-1] if "." in (row.key or "") else "bin"
        folder = row.folder or folder_name(row.product)
        file_name = _safe_name(image_file_name(folder, row.position, ext), f"{row.position}")
    if folder_per_product:
        folder = row.folder or folder_name(row.product)  # stored: unique in the job
        return file_name, f"{_safe_name(folder, 'product')}/{file_name}"
    return file_name, file_name


def _missing(row: ManifestRow) -> ManifestRow:
    log.warning("stored file %s of %s #%s is missing", row.key, row.product, row.position)
    return dataclasses.replace(row, status="failed", file=None, error=MISSING_ERROR)


# -- sources --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Source:
    data: bytes | Iterator[bytes] | None  # None: read whole when its entry is written
    size: int


def _whole_entry_size(row: ManifestRow) -> int | None:
    """The size of a row whose entry can be written in one piece (CRC known, small)."""
    if (
        row.crc32 is None
        or row.entry_bytes is None
        or not 0 < row.entry_bytes <= WHOLE_ENTRY_MAX_BYTES
    ):
        return None
    return row.entry_bytes


def _open_source(storage: Storage, row: ManifestRow, chunk_size: int) -> _Source:
    """Open a row's stored bytes now (FileNotFoundError if gone), read them lazily."""
    assert row.key is not None
    chunks = storage.iter_bytes(row.key, chunk_size)
    try:
        size = row.entry_bytes if row.entry_bytes is not None else storage.size(row.key)
    except BaseException:
        _close(chunks)
        raise
    return _Source(chunks, size)


def _close(chunks: Iterator[bytes]) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


def _sources(
    storage: Storage, rows: Iterable[ManifestRow], prefetch: int, chunk_size: int
) -> Generator[tuple[ManifestRow, _Source | None], None, None]:
    """Each row with its opened bytes (None when it has no file); missing files are marked.

    With `prefetch` > 0, files up to PREFETCH_MAX_BYTES are read ahead by that many threads,
    in order, so a remote store's latency overlaps (memory <= prefetch * PREFETCH_MAX_BYTES).
    """
    if prefetch <= 0:
        for row in rows:
            if not row.has_file:
                yield (_missing(row) if row.status == "done" else row), None
                continue
            whole = _whole_entry_size(row)
            if whole is not None:
                yield row, _Source(None, whole)
                continue
            try:
                source = _open_source(storage, row, chunk_size)
            except FileNotFoundError:
                yield _missing(row), None
                continue
            yield row, source
        return

    window: collections.deque[tuple[ManifestRow, Future[bytes] | None]] = collections.deque()
    iterator = iter(rows)
    exhausted = False
    with ExitStack() as stack:
        pool = ThreadPoolExecutor(max_workers=prefetch, thread_name_prefix="zip-prefetch")
        stack.callback(pool.shutdown, wait=False, cancel_futures=True)
        while True:
            while not exhausted and len(window) < prefetch:
                try:
                    row = next(iterator)
                except StopIteration:
                    exhausted = True
                    break
                future = None
                if (
                    row.has_file
                    and row.entry_bytes is not None
                    and row.entry_bytes <= PREFETCH_MAX_BYTES
                ):
                    assert row.key is not None
                    future = pool.submit(storage.read_bytes, row.key)
                window.append((row, future))
            if not window:
                return
            row, future = window.popleft()
            if not row.has_file:
                yield (_missing(row) if row.status == "done" else row), None
                continue
            try:
                if future is not None:
                    data = future.result()
                    source = _Source(data, len(data))
                else:
                    source = _open_source(storage, row, chunk_size)
            except FileNotFoundError:
                yield _missing(row), None
                continue
            yield row, source


# -- ZIP ------------------------------------------------------------------------------------


class _Record:
    """Looks like a ZipInfo to ZipStream's footer writer but carries ready-made bytes."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    def _central_directory_header_data(self) -> bytes:
        return self._data


class _SpooledCentralDirectory:
    """Replaces ZipStream's in-memory list of ZipInfo objects (about 500 bytes per entry).

    Each finished entry's central directory record is encoded at once and appended to a
    temporary file; the footer reads them back in 1 MB pieces.
    """

    def __init__(self, spool: IO[bytes], date_time: tuple[int, ...]) -> None:
        self._spool = spool
        self._count = 0
        self._date_time = date_time

    def append(self, zinfo: Any) -> None:
        zinfo.date_time = self._date_time  # one time for every entry (see _dated)
        self._spool.write(zinfo._central_directory_header_data())
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[_Record]:
        self._spool.seek(0)
        while chunk := self._spool.read(DEFAULT_CHUNK_SIZE):
            yield _Record(chunk)


def _coalesce(chunks: Iterable[ZipChunk], min_size: int = OUTPUT_CHUNK_SIZE) -> Iterator[ZipChunk]:
    """Merge the many tiny ZIP headers with their neighbours; big chunks pass unchanged."""
    parts: list[ZipChunk] = []
    pending = 0
    try:
        for chunk in chunks:
            if not chunk:
                continue
            parts.append(chunk)
            pending += len(chunk)
            if pending >= min_size:
                yield parts[0] if len(parts) == 1 else b"".join(parts)
                parts = []
                pending = 0
        if parts:
            yield b"".join(parts)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # closing the output closes the ZIP writer (files, threads, spools)


def stream_zip(
    storage: Storage,
    rows: Iterable[ManifestRow],
    *,
    folder_per_product: bool,
    prefetch: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    header: Sequence[str] = MANIFEST_COLUMNS,
    stamp: float | None = None,
) -> Iterator[ZipChunk]:
    """Yield a stored ZIP of the rows' files plus manifest.csv (all rows), as it is built.

    Rows with status "done" and a key become file entries; the manifest lists every row.
    A "done" row whose stored file has disappeared is listed as failed (storage_missing).
    `prefetch` = files read ahead in threads (default: 16 for S3, none for local).
    `header`: the manifest's columns (manifest.manifest_header: with the input's own columns).
    `stamp`: the entries' modification time (a finished job's end, so that every download of
    it is the same bytes and byte ranges of two requests fit together); None = now.
    Closing the generator early (client went away) releases files, threads and spools.
    """
    if prefetch is None:
        prefetch = S3_PREFETCH if storage.name == "s3" else 0
    return _coalesce(
        _zip_chunks(storage, rows, folder_per_product, prefetch, chunk_size, header, stamp)
    )


def _zip_chunks(
    storage: Storage,
    rows: Iterable[ManifestRow],
    folder_per_product: bool,
    prefetch: int,
    chunk_size: int,
    header: Sequence[str] = MANIFEST_COLUMNS,
    stamp: float | None = None,
) -> Iterator[ZipChunk]:
    with ExitStack() as stack:
        manifest_spool = stack.enter_context(tempfile.SpooledTemporaryFile(SPOOL_MEMORY))
        directory_spool = stack.enter_context(tempfile.SpooledTemporaryFile(SPOOL_MEMORY))
        archive = ZipStream(compress_type=ZIP_STORED, sized=False)
        date_time = time.localtime(stamp)[0:6]
        archive._filelist = _SpooledCentralDirectory(directory_spool, date_time)

        manifest = CsvEncoder()
        manifest.write(header)
        sources = _sources(storage, rows, prefetch, chunk_size)
        stack.callback(sources.close)
        for row, source in sources:
            if source is not None and source.data is None:
                file_name, arcname = _entry_names(row, folder_per_product)
                try:
                    entry = _whole_entry(storage, row, arcname, archive, date_time)
                except FileNotFoundError:
                    row, source = _missing(row), None
                else:
                    if entry is not None:
                        if file_name != row.file:
                            row = dataclasses.replace(row, file=file_name)
                        yield entry
                        source = None
                    else:  # the file's size changed: take it as it is now
                        try:
                            source = _open_source(storage, row, chunk_size)
                        except FileNotFoundError:
                            row, source = _missing(row), None
            if source is not None:
                file_name, arcname = _entry_names(row, folder_per_product)
                if file_name != row.file:
                    row = dataclasses.replace(row, file=file_name)
                assert source.data is not None
                archive.add(source.data, arcname, size=source.size)
                try:
                    yield from _dated(archive.all_files(), date_time)
                finally:
                    if not isinstance(source.data, bytes):
                        _close(source.data)
            manifest.write(row.csv_values())
            if manifest.pending >= CSV_CHUNK_SIZE:
                manifest_spool.write(manifest.take())
        manifest_spool.write(manifest.take())

        manifest_size = manifest_spool.tell()
        manifest_spool.seek(0)
        archive.add(iter_stream(manifest_spool, chunk_size), MANIFEST_NAME, size=manifest_size)
        yield from _dated(archive.all_files(), date_time)
        yield from archive.finalize()


def _dated(chunks: Iterator[bytes], date_time: tuple[int, ...]) -> Iterator[bytes]:
    """One queued entry's chunks with its local header dated `date_time`.

    zipstream-ng dates entries added as data with the moment they are generated; a finished
    job's ZIP must be the same bytes in every download (byte ranges of two requests are
    joined), so the header's DOS time and date (bytes 10-13) are set to the ZIP's one time.
    The first chunk of an entry is its whole local header (checked: signature and length).
    """
    first = next(chunks, None)
    if first is not None:
        header = bytes(first)
        names = int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
        if header[:4] != b"PK\x03\x04" or len(header) != 30 + names:
            raise RuntimeError("zipstream-ng no longer yields the local header on its own")
        year, month, day, hour, minute, second = date_time
        dos_time = hour << 11 | minute << 5 | second // 2
        dos_date = (year - 1980) << 9 | month << 5 | day
        stamp = dos_time.to_bytes(2, "little") + dos_date.to_bytes(2, "little")
        yield header[:10] + stamp + header[14:]
    yield from chunks


def _whole_entry(
    storage: Storage,
    row: ManifestRow,
    arcname: str,
    archive: ZipStream,
    date_time: tuple[int, ...],
) -> memoryview | None:
    """A stored entry in one buffer: local header, the file read straight into place, data
    descriptor. The CRC comes from the download, so the bytes are not scanned again and not
    copied again; the layout is zipstream-ng's own (sizes in the descriptor), so zip_size
    holds. None when the file's size is no longer the recorded one. The entry is then
    registered with `archive` (its central directory record and position).
    """
    assert row.key is not None and row.entry_bytes is not None and row.crc32 is not None
    size = row.entry_bytes
    info = ZipStreamInfo(arcname, date_time=date_time)
    info.external_attr = 0o600 << 16  # as zipstream-ng sets it for added data
    info.compress_type = ZIP_STORED
    info.flag_bits |= _FLAG_DATA_DESCRIPTOR
    info.header_offset = archive._pos
    header = info.FileHeader(False)
    info.CRC, info.file_size, info.compress_size = row.crc32, size, size
    descriptor = info.DataDescriptor(False)
    start, end = len(header), len(header) + size
    buffer = bytearray(end + len(descriptor))
    buffer[:start] = header
    view = memoryview(buffer)
    with storage.open(row.key) as handle:
        readinto = handle.readinto  # type: ignore[attr-defined]  # BinaryIO omits it
        # one byte more than expected fits in the descriptor's place: a longer file shows
        got = 0
        while got <= size and (n := readinto(view[start + got : end + 1])):
            got += n
    if got != size:
        return None
    buffer[end:] = descriptor
    archive._pos += len(buffer)
    archive._filelist.append(info)
    return view


def zip_size(
    storage: Storage,
    rows: Iterable[ManifestRow],
    *,
    folder_per_product: bool,
    header: Sequence[str] = MANIFEST_COLUMNS,
) -> int:
    """The exact byte length `stream_zip` will produce for the same rows (Content-Length).

    Needs its own pass over the rows (pass a fresh iterable). Uses `row.entry_bytes` for file
    sizes (asks the storage only when it is None). Exact as long as the rows and stored
    files do not change in between; if one does (a file went missing), the stream's length
    differs and an HTTP server enforcing Content-Length fails the download visibly.
    """
    manifest = CsvEncoder()
    manifest.write(header)
    manifest_bytes = 0
    count = files_size = directory_size = 0

    def add_entry(arcname: str, size: int) -> None:
        nonlocal count, files_size, directory_size
        name_length = len(arcname.encode("utf-8"))
        zip64_header = size * _ZIP64_ESTIMATE_FACTOR > _ZIP64_LIMIT
        extras = (1 if files_size > _ZIP64_LIMIT else 0) + (2 if size > _ZIP64_LIMIT else 0)
        files_size += 30 + name_length + size + (20 + 24 if zip64_header else 16)
        directory_size += 46 + name_length + (4 + 8 * extras if extras else 0)
        count += 1

    for row in rows:
        if row.has_file:
            assert row.key is not None
            size = row.entry_bytes if row.entry_bytes is not None else storage.size(row.key)
            file_name, arcname = _entry_names(row, folder_per_product)
            if file_name != row.file:
                row = dataclasses.replace(row, file=file_name)
            add_entry(arcname, size)
        elif row.status == "done":
            row = _missing(row)
        manifest.write(row.csv_values())
        if manifest.pending >= CSV_CHUNK_SIZE:
            manifest_bytes += len(manifest.take())
    manifest_bytes += len(manifest.take())
    add_entry(MANIFEST_NAME, manifest_bytes)

    end_size = 22
    if count >= _ZIP_FILECOUNT_LIMIT or files_size > _ZIP64_LIMIT or directory_size > _ZIP64_LIMIT:
        end_size += 56 + 20  # ZIP64 end of central directory record + locator
    return files_size + directory_size + end_size
