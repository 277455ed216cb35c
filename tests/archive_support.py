"""Helpers shared by the archive tests: store files, make manifest rows, build and read ZIPs."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import uuid
import zipfile
from collections.abc import Iterable
from typing import Any

from downloader.archive import stream_zip
from downloader.manifest import MANIFEST_COLUMNS, MANIFEST_NAME, ManifestRow, image_file_name
from downloader.storage import Storage, image_key

MIB = 1024 * 1024


def publish(storage: Storage, key: str, data: bytes) -> None:
    temp = storage.temp_dir() / f"{os.getpid()}-{uuid.uuid4().hex}.part"
    temp.write_bytes(data)
    storage.put(temp, key)


def done_row(
    storage: Storage, product: str, position: int, data: bytes, ext: str = "jpg", **extra: Any
) -> ManifestRow:
    """Store `data` as a finished image and return its manifest row."""
    key = image_key("job1", abs(hash(product)) % 10_000, position, ext)
    publish(storage, key, data)
    fields: dict[str, Any] = {
        "product": product,
        "position": position,
        "source_url": f"https://img.example.com/{product}/{position}.{ext}",
        "status": "done",
        "file": image_file_name(product, position, ext),
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "format": ext,
        "width": 640,
        "height": 480,
        "http_status": 200,
        "attempts": 1,
        "key": key,
    }
    fields.update(extra)
    return ManifestRow(**fields)


def build(storage: Storage, rows: Iterable[ManifestRow], **kwargs: Any) -> bytes:
    return b"".join(stream_zip(storage, rows, **kwargs))


def read_manifest(archive: zipfile.ZipFile) -> list[dict[str, str]]:
    text = archive.read(MANIFEST_NAME).decode("utf-8")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    assert header == MANIFEST_COLUMNS
    return [dict(zip(header, line, strict=True)) for line in reader]


def check_entries_match_manifest(archive: zipfile.ZipFile, folder_per_product: bool) -> None:
    assert archive.testzip() is None
    for info in archive.infolist():
        assert info.compress_type == zipfile.ZIP_STORED, info.filename
    manifest = read_manifest(archive)
    names = {info.filename for info in archive.infolist()} - {MANIFEST_NAME}
    expected = set()
    for line in manifest:
        if line["status"] == "done":
            name = f"{line['product']}/{line['file']}" if folder_per_product else line["file"]
            expected.add(name)
            data = archive.read(name)
            assert hashlib.sha256(data).hexdigest() == line["sha256"]
            assert len(data) == int(line["bytes"])
    assert names == expected
