"""downloader.inputs on pasted text: validation, duplicates, row numbers, unusable text, limits.

Layouts and column detection are in test_inputs_text.py.
"""

from __future__ import annotations

import pytest

from downloader.inputs import InputError, parse_text, sample_csv
from downloader.inputs.model import MAX_PRODUCT_CHARS
from tests.support.parsed_input import IMG, reasons, rows

# --- validation --------------------------------------------------------------------------------


def test_every_rejection_reason_with_row_numbers() -> None:
    long_product = "P" * (MAX_PRODUCT_CHARS + 1)
    long_url = f"{IMG}/" + "a" * 2048
    text = (
        "Product Number,Image URL\n"
        f"GOOD-1,{IMG}/ok.jpg\n"  # 2
        f",{IMG}/no-product.jpg\n"  # 3
        f"{long_product},{IMG}/long-product.jpg\n"  # 4
        f"AB/12.5 x,{IMG}/space.jpg\n"  # 5: valid (any product number, issue 23)
        f"bad\x01sku,{IMG}/control.jpg\n"  # 6: a control character
        "GOOD-2,ftp://files.example.invalid/x.jpg\n"  # 7
        "GOOD-3,images.example.invalid/no-scheme.jpg\n"  # 8
        "GOOD-4,https://\n"  # 9
        f"GOOD-5,{long_url}\n"  # 10
        "GOOD-6,\n"  # 11
        "GOOD-7,https:///path-only.jpg\n"  # 12
        "GOOD-8,http://[::1]:8080/ipv6.jpg\n"  # 13: valid
        "GOOD-9,HTTPS://IMAGES.EXAMPLE.INVALID/UPPER.JPG\n"  # 14: valid
        'GOOD-10,"https://img.example.invalid/a\x07b.jpg"\n'  # 15: control character
        "GOOD-11,https://user:pw@img.example.invalid:8443/p.jpg?x=1#f\n"  # 16: valid
    )
    parsed = parse_text(text)
    assert reasons(parsed.rejected) == [
        (3, "Product number is empty"),
        (4, f"Product number is longer than {MAX_PRODUCT_CHARS} characters"),
        (6, "Product number contains control characters (tabs, line breaks …)"),
        (7, "URL must start with http:// or https://"),
        (8, "URL must start with http:// or https://"),
        (9, "URL has no valid host name"),
        (10, "URL is longer than 2048 characters"),
        (11, "No image URL for this product"),
        (12, "URL has no valid host name"),
        (15, "URL contains spaces or control characters"),
    ]
    assert [r[0] for r in rows(parsed)] == ["GOOD-1", "AB/12.5 x", "GOOD-8", "GOOD-9", "GOOD-11"]
    by_row = {entry.row: entry for entry in parsed.rejected}
    assert by_row[4].product == long_product
    assert by_row[10].url == long_url[:200]  # raw text kept, cut to 200 characters
    assert by_row[6].url == f"{IMG}/control.jpg"
    assert by_row[11].url == ""


def test_product_of_the_longest_length_and_url_of_exactly_2048_are_valid() -> None:
    product = "Ä" * MAX_PRODUCT_CHARS
    url = f"{IMG}/" + "b" * (2048 - len(IMG) - 1)
    assert len(url) == 2048
    parsed = parse_text(f"SKU,Image URL\n{product},{url}\n")
    assert rows(parsed) == [(product, url, 1, 2)]


def test_a_bad_url_in_a_multi_url_cell_rejects_only_that_url() -> None:
    parsed = parse_text(f'SKU,Image URL\nA,"{IMG}/1.jpg www.example.invalid/2.jpg {IMG}/3.jpg"\n')
    assert [r[1] for r in rows(parsed)] == [f"{IMG}/1.jpg", f"{IMG}/3.jpg"]
    assert [(e.row, e.reason, e.url) for e in parsed.rejected] == [
        (2, "URL must start with http:// or https://", "www.example.invalid/2.jpg")
    ]


def test_rows_without_url_are_rejected_only_when_the_product_has_no_image() -> None:
    text = f"SKU,Image URL\nA,{IMG}/a.jpg\nA,\nB,\nB,\nC,{IMG}/c.jpg\n"
    parsed = parse_text(text)
    assert reasons(parsed.rejected) == [(4, "No image URL for this product")]
    assert parsed.source_rows == 5


def test_duplicates_within_a_product_are_removed_and_reported() -> None:
    text = (
        "SKU,Image URL\n"
        f"A,{IMG}/1.jpg\n"  # 2
        f"A,{IMG}/2.jpg\n"  # 3
        f"A,{IMG}/1.jpg\n"  # 4 duplicate of row 2
        f"B,{IMG}/1.jpg\n"  # 5 same URL, other product: kept
        f"A,{IMG}/3.jpg\n"  # 6
        f"A,{IMG}/2.jpg\n"  # 7 duplicate of row 3
        f"A,{IMG}/1.jpg\n"  # 8 duplicate of row 2
    )
    parsed = parse_text(text)
    assert rows(parsed) == [
        ("A", f"{IMG}/1.jpg", 1, 2),
        ("A", f"{IMG}/2.jpg", 2, 3),
        ("A", f"{IMG}/3.jpg", 3, 6),
        ("B", f"{IMG}/1.jpg", 1, 5),
    ]
    assert reasons(parsed.duplicates) == [
        (4, "Duplicate URL (same as in row 2)"),
        (7, "Duplicate URL (same as in row 3)"),
        (8, "Duplicate URL (same as in row 2)"),
    ]
    assert (parsed.duplicates[0].product, parsed.duplicates[0].url) == ("A", f"{IMG}/1.jpg")
    assert parsed.rejected == []
    assert (parsed.products, parsed.images) == (2, 4)


def test_products_ordered_by_first_appearance_positions_follow_input_order() -> None:
    text = "".join(
        f"{product}\t{IMG}/{product}/{n}.jpg\n"
        for product, n in [("Z", 1), ("A", 1), ("Z", 2), ("M", 1), ("A", 2), ("Z", 3)]
    )
    parsed = parse_text(text)
    assert [(r[0], r[2], r[3]) for r in rows(parsed)] == [
        ("Z", 1, 1),
        ("Z", 2, 3),
        ("Z", 3, 6),
        ("A", 1, 2),
        ("A", 2, 5),
        ("M", 1, 4),
    ]


def test_products_are_case_sensitive() -> None:
    parsed = parse_text(f"SKU,Image URL\nabc,{IMG}/1.jpg\nABC,{IMG}/1.jpg\n")
    assert parsed.products == 2 and parsed.duplicates == []


def test_all_rows_rejected_still_returns_the_report() -> None:
    parsed = parse_text("SKU,Image URL\nbad\x7fsku,https://x.example.invalid/a.jpg\n")
    assert parsed.frame.empty
    assert list(parsed.frame.columns) == ["product", "url", "position", "source_row"]
    assert (parsed.products, parsed.images) == (0, 0)
    assert reasons(parsed.rejected) == [
        (2, "Product number contains control characters (tabs, line breaks …)")
    ]


# --- unusable text, limits ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "The input is empty."),
        (" \r\n\t\r\n\n", "The input is empty."),
        ("SKU,Image URL\r\n\r\n", "The input has a header row but no data rows."),
        ("Name,Price\nShirt,12\nMug,8\n", "No image URL column found"),
        (f"{IMG}/a.jpg\n{IMG}/b.jpg\n", "No product number column found"),
        ('SKU,Image URL\nA,"https://x.example.invalid/a.jpg\nB,c\n', "Row 2 opens a quoted cell"),
    ],
)
def test_unusable_text(text: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_text(text)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_max_rows() -> None:
    text = "SKU,Image URL\n" + "".join(f"P{n},{IMG}/{n}.jpg\n" for n in range(5)) + "\n,\n"
    assert parse_text(text, max_rows=5).images == 5
    with pytest.raises(InputError) as caught:
        parse_text(text, max_rows=4)
    assert str(caught.value) == (
        "The input has 5 rows; one job can take at most 4. Split it into smaller jobs."
    )


def test_max_rows_stops_reading_far_beyond_the_limit() -> None:
    text = "".join(f"P{n},{IMG}/{n}.jpg\n" for n in range(10_050))
    with pytest.raises(InputError) as caught:
        parse_text(text, max_rows=10)
    assert str(caught.value).startswith("The input has more than 10 rows")


def test_max_rows_counts_urls_after_expansion() -> None:
    cell = " ".join(f"{IMG}/{n}.jpg" for n in range(4))
    with pytest.raises(InputError) as caught:
        parse_text(f'SKU,Image URL\nA,"{cell}"\n', max_rows=3)
    assert str(caught.value).startswith("The input holds 4 image URLs; one job can take at most 3")


def test_max_rows_default_comes_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from downloader.settings import get_settings

    monkeypatch.setenv("MAX_ROWS_PER_JOB", "2")
    get_settings.cache_clear()
    try:
        with pytest.raises(InputError, match="at most 2"):
            parse_text("".join(f"P{n}\t{IMG}/{n}.jpg\n" for n in range(3)))
    finally:
        get_settings.cache_clear()


def test_sample_csv_parses_cleanly_with_fake_hosts() -> None:
    text = sample_csv()
    parsed = parse_text(text)
    assert parsed.rejected == [] and parsed.duplicates == []
    assert parsed.products >= 2 and parsed.images >= 4
    assert set(parsed.frame["url"].str.extract(r"//([^/]+)/")[0]) == {"images.example.invalid"}
