"""Excel-safe CSV cells, the generic CSV writer and manifest.csv."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import pytest

from downloader.csvsafe import excel_safe
from downloader.manifest import (
    MANIFEST_COLUMNS,
    ManifestRow,
    csv_rows_chunks,
    image_file_name,
    manifest_csv_chunks,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ""),
        ("", ""),
        ("plain", "plain"),
        ("=1+1", "'=1+1"),
        ("+SUM(A1)", "'+SUM(A1)"),
        ("-2", "'-2"),
        ("@cmd", "'@cmd"),
        ("\tTAB", "'\tTAB"),
        ("\rCR", "'\rCR"),
        ("a=b", "a=b"),
        (" =x", " =x"),
        ("'quoted", "'quoted"),
        (0, "0"),
        (42, "42"),
        (-5, "'-5"),
        (1.5, "1.5"),
        (True, "True"),
        ("https://x.example/a?b=c", "https://x.example/a?b=c"),
    ],
)
def test_excel_safe(value: object, expected: str) -> None:
    assert excel_safe(value) == expected


def parse(chunks: list[bytes]) -> list[list[str]]:
    return list(csv.reader(io.StringIO(b"".join(chunks).decode("utf-8"), newline="")))


def test_csv_rows_chunks_round_trip() -> None:
    rows = [
        ["SKU-1", 3, "https://x/a,b.jpg", 'say "hi"', None],
        ["SKU-2", 4, "=cmd()", "line1\nline2", "ünï©ødé"],
    ]
    chunks = list(csv_rows_chunks(["product", "row", "url", "note", "other"], rows))
    data = b"".join(chunks)
    assert data.startswith(b"product,row,url,note,other\r\n")
    assert not data.startswith(b"\xef\xbb\xbf")
    assert parse(chunks) == [
        ["product", "row", "url", "note", "other"],
        ["SKU-1", "3", "https://x/a,b.jpg", 'say "hi"', ""],
        ["SKU-2", "4", "'=cmd()", "line1\nline2", "ünï©ødé"],
    ]


def test_csv_is_produced_lazily_in_bounded_chunks() -> None:
    pulled = 0

    def rows() -> Iterator[list[object]]:
        nonlocal pulled
        for n in range(100_000):
            pulled += 1
            yield [f"SKU-{n}", n, "https://img.example.com/" + "x" * 40]

    chunks = csv_rows_chunks(["product", "row", "url"], rows())
    first = next(chunks)
    assert pulled < 5_000
    sizes = [len(first)] + [len(chunk) for chunk in chunks]
    assert pulled == 100_000
    assert len(sizes) > 50
    assert max(sizes) < 80 * 1024


def test_header_only_when_no_rows() -> None:
    assert b"".join(csv_rows_chunks(["a", "b"], [])) == b"a,b\r\n"
    assert b"".join(manifest_csv_chunks([])) == (",".join(MANIFEST_COLUMNS) + "\r\n").encode()


def test_manifest_csv() -> None:
    rows = [
        ManifestRow(
            "SKU-1",
            1,
            "https://x/1.jpg",
            "done",
            "SKU-1_1.jpg",
            "ab" * 32,
            1234,
            "jpg",
            800,
            600,
            200,
            1,
            None,
            None,
            key="jobs/j/1/1.jpg",
        ),
        ManifestRow(
            "SKU-1", 2, "-https://x/2.jpg", "failed", error="+Refused (blocked_address)", attempts=3
        ),
    ]
    table = parse(list(manifest_csv_chunks(iter(rows))))
    assert table[0] == MANIFEST_COLUMNS
    # the standard columns; the ones added after them are empty here (no conversion, no
    # checks, no details read)
    assert set(table[1][14:]) == set(table[2][14:]) == {""}
    assert table[1][:14] == [
        "SKU-1",
        "1",
        "https://x/1.jpg",
        "done",
        "SKU-1_1.jpg",
        "ab" * 32,
        "1234",
        "jpg",
        "800",
        "600",
        "200",
        "1",
        "",
        "",
    ]
    assert table[2][:14] == [
        "SKU-1",
        "2",
        "'-https://x/2.jpg",
        "failed",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "3",
        "'+Refused (blocked_address)",
        "",
    ]
    assert "key" not in table[0] and "jobs/j/1/1.jpg" not in str(table)


def test_image_file_name() -> None:
    assert image_file_name("SKU-1", 3, "webp") == "SKU-1_3.webp"
