"""downloader.ui_queries: the grid's rows through the normal parser, highlights, thumbnails."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from downloader.storage.local import LocalStorage
from downloader.ui_queries import (
    clean_grid_rows,
    grid_fingerprint,
    grid_text,
    parse_grid,
    reason_column,
    thumbnail,
)


def test_clean_grid_rows_keeps_filled_rows_and_ignores_junk() -> None:
    raw = [
        [0, "a", "P-1", "https://x.example.invalid/1.jpg"],
        [1, "b", "", "  "],
        [2, "c", None, "https://x.example.invalid/2.jpg"],
        ["x", "d", "P", "u"],
        "nonsense",
        [3, "e", 12345, None],
    ]
    assert clean_grid_rows(raw) == [
        (0, "a", "P-1", "https://x.example.invalid/1.jpg"),
        (2, "c", "", "https://x.example.invalid/2.jpg"),
        (3, "e", "12345", ""),
    ]
    assert clean_grid_rows(None) == []


def test_grid_text_quotes_and_numbers_rows_like_a_sheet() -> None:
    text, by_number = grid_text([(0, "a", 'say "hi"', "u1\nu2"), (4, "b", "P", "u")])
    assert text.splitlines()[0] == "Product Number\tImage URL"
    assert by_number[2][1] == "a" and by_number[3][1] == "b"


def test_parse_grid_maps_reasons_to_cells_and_rows() -> None:
    rows = [
        (0, "r0", "AB-1", "https://x.example.invalid/1.jpg"),
        (1, "r1", "AB-1", "https://x.example.invalid/1.jpg"),  # duplicate URL
        (2, "r2", "bad\x07sku", "https://x.example.invalid/2.jpg"),  # a control character
        (4, "r4", "CD-2", "ftp://x.example.invalid/3.jpg"),
        (5, "r5", "EF-3", "https://x.example.invalid/4.jpg https://x.example.invalid/5.jpg"),
    ]
    result = parse_grid(rows, max_rows=1000)
    assert result.parsed is not None
    assert result.parsed.products == 2
    assert result.parsed.images == 3
    assert len(result.parsed.duplicates) == 1
    assert set(result.invalid["product"]) == {"r2"}
    assert set(result.invalid["url"]) == {"r4"}
    # parser rows (header = 1) map to the grid's 1-based row numbers, gaps included
    assert [result.row_numbers[r.row] for r in result.parsed.rejected] == [3, 5]


def test_parse_grid_of_nothing_and_of_too_much() -> None:
    assert parse_grid([]).parsed is None
    rows = [(i, f"r{i}", f"P-{i}", f"https://x.example.invalid/{i}.jpg") for i in range(5)]
    result = parse_grid(rows, max_rows=3)
    assert result.parsed is None and result.error and "at most 3" in result.error


def test_fingerprint_changes_with_content() -> None:
    a = [(0, "r0", "P", "u")]
    assert grid_fingerprint(a) == grid_fingerprint(list(a))
    assert grid_fingerprint(a) != grid_fingerprint([(0, "r0", "P", "u2")])


def test_reason_column() -> None:
    assert reason_column("Product number is empty") == "product"
    assert reason_column("URL must start with http:// or https://") == "url"
    assert reason_column("No image URL for this product") == "url"


def test_thumbnail_is_small(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "media")
    source = tmp_path / "big.png"
    Image.new("RGB", (1200, 800), (10, 200, 30)).save(source)
    key = "jobs/abc/1/1.png"
    storage.put(source, key)
    with Image.open(io.BytesIO(thumbnail(storage, key, max_px=200))) as small:
        assert max(small.size) == 200
