"""ZIP entries written in one piece from the CRC-32 recorded at download time."""

from __future__ import annotations

import dataclasses
import io
import os
import zipfile
import zlib
from pathlib import Path

import pytest

from downloader import archive as archive_module
from downloader.archive import stream_zip, zip_size
from downloader.manifest import ManifestRow
from downloader.storage import LocalStorage, Storage
from tests.archive_support import build, check_entries_match_manifest, done_row, read_manifest


@pytest.fixture
def local(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "media")


def with_crc(storage: Storage, product: str, position: int, data: bytes) -> ManifestRow:
    return done_row(storage, product, position, data, crc32=zlib.crc32(data))


def contents(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None  # every entry's CRC matches its bytes
        return {name: archive.read(name) for name in archive.namelist()}


def test_known_crc_entries_match_computed_ones_byte_for_byte_in_content(
    local: LocalStorage,
) -> None:
    payloads = [os.urandom(n) for n in (1, 1000, 200_000, 70_000)]
    known = [with_crc(local, f"SKU-{i % 2}", i + 1, p) for i, p in enumerate(payloads)]
    unknown = [dataclasses.replace(row, crc32=None) for row in known]
    fast = build(local, known, folder_per_product=True)
    slow = build(local, unknown, folder_per_product=True)
    assert len(fast) == len(slow) == zip_size(local, known, folder_per_product=True)
    assert contents(fast) == contents(slow)
    with zipfile.ZipFile(io.BytesIO(fast)) as archive:
        check_entries_match_manifest(archive, folder_per_product=True)
        assert [i.CRC for i in archive.infolist()[:4]] == [zlib.crc32(p) for p in payloads]


def test_known_and_unknown_crc_rows_mix_in_order(local: LocalStorage) -> None:
    rows = [
        with_crc(local, "A", 1, b"first" * 100),
        done_row(local, "A", 2, b"second" * 100),
        with_crc(local, "A", 3, b"third" * 100),
    ]
    data = build(local, rows, folder_per_product=False)
    assert len(data) == zip_size(local, rows, folder_per_product=False)
    got = contents(data)
    assert [got[r.file or ""] for r in rows] == [b"first" * 100, b"second" * 100, b"third" * 100]


@pytest.mark.parametrize("change", [b"", b"more bytes"])
def test_a_file_whose_size_changed_is_zipped_as_it_is_now(
    local: LocalStorage, change: bytes
) -> None:
    row = with_crc(local, "A", 1, b"original")
    assert row.key is not None
    now = b"origin" if not change else b"original" + change
    local.path(row.key).write_bytes(now)
    got = contents(build(local, [row], folder_per_product=False))
    assert got[row.file or ""] == now


def test_a_file_gone_since_is_listed_as_failed(local: LocalStorage) -> None:
    row = with_crc(local, "A", 1, b"soon gone")
    assert row.key is not None
    local.delete(row.key)
    data = build(local, [row], folder_per_product=False)
    assert list(contents(data)) == ["manifest.csv"]
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        (listed,) = read_manifest(archive)
    assert listed["status"] == "failed" and "storage_missing" in listed["error"]


def test_a_wrong_recorded_crc_is_caught_by_the_unzipper(local: LocalStorage) -> None:
    """The recorded CRC is trusted, not recomputed: bytes that rotted on disk since the
    download fail the unzipper's check instead of being passed off as good."""
    row = with_crc(local, "A", 1, b"payload")
    assert row.key is not None
    local.path(row.key).write_bytes(b"paylaod")  # same size, different bytes
    with zipfile.ZipFile(io.BytesIO(build(local, [row], folder_per_product=False))) as zipped:
        assert zipped.testzip() == row.file


def test_big_files_stream_in_pieces_even_with_a_known_crc(
    local: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive_module, "WHOLE_ENTRY_MAX_BYTES", 1000)
    payload = os.urandom(300_000)
    row = with_crc(local, "A", 1, payload)
    chunks = list(stream_zip(local, [row], folder_per_product=False, chunk_size=8192))
    assert max(len(chunk) for chunk in chunks) < 100_000  # not one piece
    assert contents(b"".join(chunks))[row.file or ""] == payload
