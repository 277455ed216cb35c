"""ZIP64: archives past 65,535 entries and entries past 4 GiB, streamed and sized exactly."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from downloader.archive import stream_zip, zip_size
from downloader.manifest import ManifestRow
from downloader.storage import LocalStorage, Storage, image_key
from tests.archive_support import MIB, build, publish, read_manifest


@pytest.fixture
def local(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "media")


def shared_file_rows(local: LocalStorage, count: int) -> Iterator[ManifestRow]:
    """`count` rows that all point at one small stored file (names differ)."""
    key = image_key("many", 1, 1, "png")
    publish(local, key, b"\x89PNG tiny")
    digest = hashlib.sha256(b"\x89PNG tiny").hexdigest()
    for n in range(1, count + 1):
        yield ManifestRow(
            f"P{n // 100}",
            n,
            f"https://x/{n}",
            "done",
            f"P{n // 100}_{n}.png",
            sha256=digest,
            bytes=9,
            format="png",
            width=1,
            height=1,
            http_status=200,
            attempts=1,
            key=key,
        )


@pytest.mark.slow
def test_more_than_65535_entries_uses_zip64_records(local: LocalStorage) -> None:
    count = 70_000
    data = build(local, shared_file_rows(local, count), folder_per_product=True)
    assert b"PK\x06\x06" in data[-200:]  # ZIP64 end of central directory record
    assert b"PK\x06\x07" in data[-200:]  # ZIP64 end of central directory locator
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        assert len(infos) == count + 1
        assert archive.read(infos[-2].filename) == b"\x89PNG tiny"
        assert len(read_manifest(archive)) == count
    assert len(data) == zip_size(local, shared_file_rows(local, count), folder_per_product=True)


@pytest.mark.slow
def test_zip_size_at_exactly_65535_entries(local: LocalStorage) -> None:
    rows = list(shared_file_rows(local, 65_534))  # + manifest.csv = 65,535 entries
    data = build(local, rows, folder_per_product=False)
    assert len(data) == zip_size(local, rows, folder_per_product=False)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert len(archive.infolist()) == 65_535


class ZeroStorage:
    """A stand-in store whose one object is `size` zero bytes, generated on the fly."""

    name = "local"

    def __init__(self, size: int) -> None:
        self._size = size

    def iter_bytes(self, key: str, chunk_size: int = MIB) -> Iterator[bytes]:
        zeros = bytes(chunk_size)
        left = self._size
        while left > 0:
            yield zeros if left >= chunk_size else zeros[:left]
            left -= chunk_size

    def size(self, key: str) -> int:
        return self._size


class SparseFile(io.RawIOBase):
    """Seekable view of a huge ZIP kept as head + tail bytes with zeros in between."""

    def __init__(self, head: bytes, tail: bytes, length: int) -> None:
        self._head, self._tail, self._length, self._pos = head, tail, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._length}[whence]
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = max(0, min(len(view), self._length - self._pos))
        start, end = self._pos, self._pos + count
        tail_start = self._length - len(self._tail)
        data = bytearray(count)
        if start < len(self._head):
            part = self._head[start : min(end, len(self._head))]
            data[: len(part)] = part
        if end > tail_start:
            begin = max(start, tail_start)
            data[begin - start :] = self._tail[begin - tail_start : end - tail_start]
        view[:count] = data
        self._pos = end
        return count


@pytest.mark.slow
def test_entry_over_4_gib_is_zip64(tmp_path: Path) -> None:
    size = 4 * 1024 * MIB + 12345
    storage = cast(Storage, ZeroStorage(size))
    rows = [
        ManifestRow(
            "BIG", 1, "https://x/big", "done", "BIG_1.png", None, size, "png", key="jobs/j/1/1.png"
        ),
        ManifestRow("BIG", 2, "https://x/small", "failed", error="Too large (too_large)"),
    ]
    head = bytearray()
    tail = b""
    length = 0
    for chunk in stream_zip(storage, rows, folder_per_product=False):
        if len(head) < 4096:
            head += chunk[: 4096 - len(head)]
        tail = (tail + chunk)[-MIB:] if len(chunk) < MIB else bytes(chunk[-MIB:])
        length += len(chunk)
    assert length == zip_size(storage, rows, folder_per_product=False)
    with zipfile.ZipFile(io.BufferedReader(SparseFile(bytes(head), tail, length))) as archive:
        big, manifest = archive.infolist()
        assert big.filename == "BIG_1.png" and big.file_size == size
        assert big.compress_type == zipfile.ZIP_STORED
        assert manifest.header_offset > 0xFFFFFFFF
        assert b"\x01\x00" in big.extra[:2]  # ZIP64 extended information field
        with archive.open(big) as entry:
            assert entry.read(1000) == bytes(1000)
        lines = read_manifest(archive)
    assert lines[0]["bytes"] == str(size) and lines[1]["status"] == "failed"
