"""ZIP + manifest streaming from real files in both storage backends."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import os
import time
import tracemalloc
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from downloader.archive import MISSING_ERROR, stream_zip, zip_size
from downloader.manifest import MANIFEST_NAME, ManifestRow
from downloader.settings import load_settings
from downloader.storage import LocalStorage, Storage, make_storage
from tests.archive_support import (
    MIB,
    build,
    check_entries_match_manifest,
    done_row,
    read_manifest,
)

pytest_plugins = ["tests.support.s3server"]  # fixtures: s3_server, s3_overrides, ...


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return make_storage(load_settings(media_root=str(tmp_path / "media")))
    return make_storage(load_settings(**request.getfixturevalue("s3_overrides")))


@pytest.fixture
def local(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "media")


def sample_rows(storage: Storage) -> list[ManifestRow]:
    """Two products with files, a duplicate, failures, a skipped image, and one failed-only."""
    sku1_1 = done_row(storage, "SKU-1", 1, os.urandom(70_000))
    duplicate = dataclasses.replace(
        sku1_1,
        position=3,
        source_url="https://img.example.com/dup.jpg",
        status="duplicate",
        file=None,
        key=None,
        duplicate_of=sku1_1.file,
    )
    not_found = "The server answered 404 Not Found (http_404)"
    return [
        sku1_1,
        done_row(storage, "SKU-1", 2, os.urandom(1500), "png"),
        duplicate,
        done_row(storage, "SKU-1", 4, b"", "gif"),
        ManifestRow(
            "SKU-1",
            5,
            "https://img.example.com/404.jpg",
            "failed",
            http_status=404,
            attempts=1,
            error=not_found,
        ),
        done_row(storage, "SKU_2", 1, os.urandom(300_000), "webp"),
        ManifestRow("SKU_2", 2, "https://img.example.com/slow.jpg", "skipped"),
        ManifestRow(
            "P3",
            1,
            "https://img.example.com/x",
            "failed",
            attempts=4,
            error="Timed out after 120 s (timeout)",
        ),
    ]


# -- archives from both backends ------------------------------------------------------------


def test_product_zip(storage: Storage) -> None:
    rows = [row for row in sample_rows(storage) if row.product == "SKU-1"]
    data = build(storage, iter(rows), folder_per_product=False)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == ["SKU-1_1.jpg", "SKU-1_2.png", "SKU-1_4.gif", MANIFEST_NAME]
        check_entries_match_manifest(archive, folder_per_product=False)
        manifest = read_manifest(archive)
    assert [(m["position"], m["status"]) for m in manifest] == [
        ("1", "done"),
        ("2", "done"),
        ("3", "duplicate"),
        ("4", "done"),
        ("5", "failed"),
    ]
    duplicate, failed = manifest[2], manifest[4]
    assert duplicate["file"] == "" and duplicate["duplicate_of"] == "SKU-1_1.jpg"
    assert duplicate["sha256"] == manifest[0]["sha256"]
    assert failed["file"] == "" and failed["http_status"] == "404"
    assert failed["error"] == "The server answered 404 Not Found (http_404)"
    assert manifest[0] == {
        "product": "SKU-1",
        "position": "1",
        "source_url": "https://img.example.com/SKU-1/1.jpg",
        "status": "done",
        "file": "SKU-1_1.jpg",
        "sha256": rows[0].sha256,
        "bytes": "70000",
        "format": "jpg",
        "width": "640",
        "height": "480",
        "http_status": "200",
        "attempts": "1",
        "error": "",
        "duplicate_of": "",
        # not converted, no checks (issue 23)
        **dict.fromkeys(
            ["output_format", "output_bytes", "output_width", "output_height", "warnings"], ""
        ),
        # no details read (issue 26)
        **dict.fromkeys(["color_mode", "alpha", "frames", "icc_profile", "orientation"], ""),
    }
    assert len(data) == zip_size(storage, rows, folder_per_product=False)


def test_master_zip(storage: Storage) -> None:
    rows = sample_rows(storage)
    data = build(storage, (row for row in rows), folder_per_product=True)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == [
            "SKU-1/SKU-1_1.jpg",
            "SKU-1/SKU-1_2.png",
            "SKU-1/SKU-1_4.gif",
            "SKU_2/SKU_2_1.webp",
            MANIFEST_NAME,
        ]
        check_entries_match_manifest(archive, folder_per_product=True)
        manifest = read_manifest(archive)
    assert len(manifest) == len(rows)
    assert [m["status"] for m in manifest].count("failed") == 2
    assert next(m for m in manifest if m["product"] == "P3")["error"].endswith("(timeout)")
    assert len(data) == zip_size(storage, rows, folder_per_product=True)


def test_excel_unsafe_values_are_neutralised(storage: Storage) -> None:
    row = done_row(storage, "SKU-9", 1, b"\xff\xd8\xff data", source_url='=HYPERLINK("x")')
    rows = [
        row,
        ManifestRow("SKU-9", 2, "+cmd|' /C calc'!A0", "failed", error="=1+1 (http_400)"),
        ManifestRow("SKU-9", 3, "-2+3", "failed", error="@SUM(A1)"),
        ManifestRow("SKU-9", 4, "\thttps://x", "failed", error="\r=bad"),
    ]
    data = build(storage, rows, folder_per_product=False)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        manifest = read_manifest(archive)
        raw = archive.read(MANIFEST_NAME).decode()
    assert [m["source_url"] for m in manifest] == [
        '\'=HYPERLINK("x")',
        "'+cmd|' /C calc'!A0",
        "'-2+3",
        "'\thttps://x",
    ]
    assert [m["error"] for m in manifest] == ["", "'=1+1 (http_400)", "'@SUM(A1)", "'\r=bad"]
    for line in csv.reader(io.StringIO(raw, newline="")):
        for cell in line:
            assert not cell or cell[0] not in "=+-@\t\r", cell


def test_missing_stored_file_is_listed_not_zipped(storage: Storage) -> None:
    rows = sample_rows(storage)
    assert rows[1].key is not None
    storage.delete(rows[1].key)
    rows.append(ManifestRow("SKU_2", 9, "https://x/9.jpg", "done", "SKU_2_9.jpg", key=None))
    data = build(storage, rows, folder_per_product=True)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert "SKU-1/SKU-1_2.png" not in archive.namelist()
        assert "SKU_2/SKU_2_9.jpg" not in archive.namelist()
        check_entries_match_manifest(archive, folder_per_product=True)
        manifest = read_manifest(archive)
    for line in (manifest[1], manifest[-1]):
        assert line["status"] == "failed" and line["file"] == ""
        assert line["error"] == MISSING_ERROR


def test_prefetch_gives_the_same_archive(storage: Storage) -> None:
    rows = sample_rows(storage) + [
        done_row(storage, "SKU-5", n, os.urandom(5000 * n)) for n in range(1, 40)
    ]
    big = done_row(storage, "SKU-5", 40, os.urandom(5 * MIB))  # above the read-ahead limit
    rows.append(big)
    contents = []
    for prefetch in (0, 3, 16):
        data = build(storage, rows, folder_per_product=True, prefetch=prefetch)
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            check_entries_match_manifest(archive, folder_per_product=True)
            contents.append({name: archive.read(name) for name in archive.namelist()})
        assert len(data) == zip_size(storage, rows, folder_per_product=True)
    assert contents[0] == contents[1] == contents[2]


def test_sizes_missing_from_rows_are_asked_from_storage(storage: Storage) -> None:
    rows = sample_rows(storage)
    for row in rows:
        row.bytes = None
    data = build(storage, rows, folder_per_product=False)
    assert len(data) == zip_size(storage, rows, folder_per_product=False)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None


# -- streaming behaviour (local) ------------------------------------------------------------


class OneShot:
    """An iterable of rows that may be iterated only once, counting what was pulled."""

    def __init__(self, rows: list[ManifestRow]) -> None:
        self._rows = rows
        self.pulled = 0
        self._used = False

    def __iter__(self) -> Iterator[ManifestRow]:
        assert not self._used, "rows were iterated twice"
        self._used = True
        for row in self._rows:
            self.pulled += 1
            yield row


def test_rows_are_consumed_once_and_lazily(local: LocalStorage) -> None:
    rows = [done_row(local, "SKU-1", n, os.urandom(200_000)) for n in range(1, 51)]
    source = OneShot(rows)
    chunks = stream_zip(local, source, folder_per_product=False)
    first = bytes(next(chunks))
    assert first.startswith(b"PK\x03\x04")
    assert source.pulled <= 2, "rows must be pulled as the ZIP is written, not up front"
    rest = b"".join(chunks)
    assert source.pulled == 50
    with zipfile.ZipFile(io.BytesIO(first + rest)) as archive:
        check_entries_match_manifest(archive, folder_per_product=False)


def test_empty_job_gives_a_zip_with_only_the_manifest(local: LocalStorage) -> None:
    data = build(local, [], folder_per_product=True)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == [MANIFEST_NAME]
        assert read_manifest(archive) == []
    assert len(data) == zip_size(local, [], folder_per_product=True)


def test_entry_names_are_sanitised(local: LocalStorage) -> None:
    rows = [
        done_row(local, "../up", 1, b"a", file="../../etc/passwd"),
        done_row(local, "SKU 7", 1, b"b", file="SKU 7_1.jpg"),
        done_row(local, "SKU-8", 1, b"c", file=None),
    ]
    data = build(local, rows, folder_per_product=True)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == [
            "_up/passwd",
            "SKU 7/SKU 7_1.jpg",  # a space is safe in a name (issue 23: any product number)
            "SKU-8/SKU-8_1.jpg",
            MANIFEST_NAME,
        ]
        assert [m["file"] for m in read_manifest(archive)] == [
            "passwd",
            "SKU 7_1.jpg",
            "SKU-8_1.jpg",
        ]
    assert len(data) == zip_size(local, rows, folder_per_product=True)


def test_output_chunks_are_not_tiny(local: LocalStorage) -> None:
    rows = [done_row(local, "SKU-1", n, os.urandom(300)) for n in range(1, 400)]
    chunks = list(stream_zip(local, rows, folder_per_product=False))
    assert all(len(chunk) >= 64 * 1024 for chunk in chunks[:-1])
    assert len(chunks) < 10


def test_memory_stays_flat(local: LocalStorage) -> None:
    """200 x 1 MB files stream through with a peak far below their total size."""
    block = os.urandom(MIB)
    rows = []
    for n in range(1, 201):
        data = n.to_bytes(4, "big") + block[4:]
        rows.append(done_row(local, f"P{n % 7}", n, data))
    total = 0
    digest = hashlib.sha256()
    tracemalloc.start()
    try:
        for chunk in stream_zip(local, iter(rows), folder_per_product=True):
            total += len(chunk)
            digest.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total > 200 * MIB
    assert peak < 12 * MIB, f"peak {peak / MIB:.1f} MiB"


def test_closing_early_releases_open_files(local: LocalStorage) -> None:
    rows = [done_row(local, "SKU-1", n, os.urandom(3 * MIB)) for n in range(1, 5)]
    before = len(os.listdir("/proc/self/fd"))
    chunks = stream_zip(local, rows, folder_per_product=False, chunk_size=64 * 1024)
    next(chunks)
    next(chunks)
    assert len(os.listdir("/proc/self/fd")) > before  # a stored file is open mid-entry
    chunks.close()  # type: ignore[attr-defined]
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_stamped_zip_is_the_same_bytes_whenever_it_is_built(local: LocalStorage) -> None:
    """A finished job's ZIP carries the job's end as its entries' time, so two downloads a few
    seconds apart are identical (byte ranges of two requests fit together); unstamped
    entries carry the time of building (DOS times tick every 2 s)."""
    rows = [done_row(local, "SKU-1", n, os.urandom(300)) for n in range(1, 4)]

    def build(stamp: float | None) -> bytes:
        return b"".join(
            bytes(c) for c in stream_zip(local, rows, folder_per_product=True, stamp=stamp)
        )

    stamped, unstamped = build(1_700_000_000.0), build(None)
    time.sleep(2.1)
    assert build(1_700_000_000.0) == stamped
    assert build(None) != unstamped
