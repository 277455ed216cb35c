"""downloader.inputs on pasted text: layouts, column detection, delimiters, column override.

Validation, duplicates, unusable text and limits are in test_inputs_text_validation.py.
"""

from __future__ import annotations

import pandas as pd
import pytest

from downloader.inputs import InputError, parse_text
from tests.support.parsed_input import IMG, reasons, rows

# --- pasted from Excel / Google Sheets ---------------------------------------------------------


def test_excel_paste_with_header_crlf_quotes_and_trailing_blanks() -> None:
    text = (
        "Product Number\tImage URL\t\t\r\n"
        f"SKU-1\t{IMG}/1a.jpg\t\t\r\n"
        # a quoted cell holding two URLs on two lines, and one holding a tab
        f'SKU-2\t"{IMG}/2a.jpg\r\n{IMG}/2b.jpg"\t\t\r\n'
        f'SKU-3\t"{IMG}/3a.jpg\t{IMG}/3b.jpg"\t\t\r\n'
        f"  SKU-1  \t  {IMG}/1b.jpg  \t\t\r\n"  # padded with spaces
        "\t\t\t\r\n"
        "\t\t\t\r\n"
        "\r\n"
    )
    parsed = parse_text(text)
    assert rows(parsed) == [
        ("SKU-1", f"{IMG}/1a.jpg", 1, 2),
        ("SKU-1", f"{IMG}/1b.jpg", 2, 5),
        ("SKU-2", f"{IMG}/2a.jpg", 1, 3),
        ("SKU-2", f"{IMG}/2b.jpg", 2, 3),
        ("SKU-3", f"{IMG}/3a.jpg", 1, 4),
        ("SKU-3", f"{IMG}/3b.jpg", 2, 4),
    ]
    assert parsed.columns == ["Product Number", "Image URL"]  # trailing empty columns dropped
    assert parsed.product_column == "Product Number"
    assert parsed.url_column == "Image URL"
    assert parsed.url_columns == ["Image URL"]
    assert parsed.ambiguous is False
    assert parsed.header is True
    assert parsed.source_rows == 4
    assert (parsed.products, parsed.images) == (3, 6)
    assert parsed.rejected == [] and parsed.duplicates == []


def test_frame_columns_and_types() -> None:
    parsed = parse_text(f"SKU\tImage\nA\t{IMG}/a.jpg\n")
    assert list(parsed.frame.columns) == ["product", "url", "position", "source_row"]
    assert pd.api.types.is_string_dtype(parsed.frame["product"])
    assert pd.api.types.is_string_dtype(parsed.frame["url"])
    assert parsed.frame["position"].dtype == "int64"
    assert parsed.frame["source_row"].dtype == "int64"
    assert isinstance(parsed.frame["product"].iloc[0], str)


def test_google_sheets_paste_without_header_detects_columns() -> None:
    # Sheets puts LF between rows; no header: rows are numbered from 1.
    text = f"{IMG}/a.jpg\tA-1\n{IMG}/b.jpg\tB-2\n{IMG}/c.jpg\tA-1\n"
    parsed = parse_text(text)
    assert parsed.header is False
    assert parsed.columns == ["Column A", "Column B"]
    assert parsed.url_column == "Column A"
    assert parsed.product_column == "Column B"
    assert parsed.ambiguous is False
    assert rows(parsed) == [
        ("A-1", f"{IMG}/a.jpg", 1, 1),
        ("A-1", f"{IMG}/c.jpg", 2, 3),
        ("B-2", f"{IMG}/b.jpg", 1, 2),
    ]


def test_no_header_row_numbers_start_at_one_and_blank_rows_keep_numbering() -> None:
    text = f"A\t{IMG}/a.jpg\n\nB\tnot-a-url\n\t\nC\t{IMG}/c.jpg\n"
    parsed = parse_text(text)
    assert [r[3] for r in rows(parsed)] == [1, 5]
    assert reasons(parsed.rejected) == [(3, "URL must start with http:// or https://")]
    assert parsed.source_rows == 3


def test_headerless_with_extra_text_column_is_ambiguous() -> None:
    text = f"A-1\tred\t{IMG}/a.jpg\nB-2\tblue\t{IMG}/b.jpg\n"
    parsed = parse_text(text)
    assert parsed.product_column == "Column A"  # leftmost product-like column
    assert parsed.url_column == "Column C"
    assert parsed.ambiguous is True
    assert parsed.images == 2


def test_header_without_synonyms_is_detected_by_content_and_flagged() -> None:
    text = f"Code\tPicture\nA-1\t{IMG}/a.jpg\nB-2\t{IMG}/b.jpg\n"
    parsed = parse_text(text)
    assert parsed.header is True
    assert parsed.columns == ["Code", "Picture"]
    assert (parsed.product_column, parsed.url_column) == ("Code", "Picture")
    assert parsed.ambiguous is True
    assert [r[3] for r in rows(parsed)] == [2, 3]


def test_title_rows_above_the_header_are_skipped() -> None:
    text = f"Catalogue export\n\nSKU,Image URL\nA,{IMG}/a.jpg\n"
    parsed = parse_text(text)
    assert parsed.header is True
    assert rows(parsed) == [("A", f"{IMG}/a.jpg", 1, 4)]
    assert parsed.source_rows == 1


def test_numeric_product_numbers_keep_leading_zeros() -> None:
    parsed = parse_text(f"SKU\tImage URL\n00123\t{IMG}/a.jpg\n12345\t{IMG}/b.jpg\n")
    assert [r[0] for r in rows(parsed)] == ["00123", "12345"]


def test_unicode_whitespace_and_zero_width_characters_are_trimmed() -> None:
    parsed = parse_text(f"SKU\tImage URL\n\u00a0A-1\u200b\t\ufeff{IMG}/a.jpg\u00a0\n")
    assert rows(parsed) == [("A-1", f"{IMG}/a.jpg", 1, 2)]


# --- headers and synonyms ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("product_header", "url_header"),
    [
        ("Product Number", "Image Src"),
        ("product", "image url"),
        ("ProductID", "ImageURL"),
        ("Product ID", "IMAGE"),
        ("sku", "Url"),
        ("HANDLE", "Variant Image"),
        ("product_number", "image-url"),
    ],
)
def test_header_synonyms_case_insensitive(product_header: str, url_header: str) -> None:
    text = f"Notes,{url_header},{product_header}\nhello,{IMG}/a.jpg,P-1\n"
    parsed = parse_text(text)
    assert parsed.product_column == product_header
    assert parsed.url_column == url_header
    assert parsed.ambiguous is False
    assert rows(parsed) == [("P-1", f"{IMG}/a.jpg", 1, 2)]


def test_two_product_synonyms_pick_by_preference_and_flag_ambiguous() -> None:
    parsed = parse_text(f"SKU,Product Number,Image URL\nS-1,P-1,{IMG}/a.jpg\n")
    assert parsed.product_column == "Product Number"
    assert parsed.ambiguous is True
    assert rows(parsed)[0][0] == "P-1"


def test_image_columns_win_over_a_plain_url_column() -> None:
    parsed = parse_text(f"SKU,URL,Image URL\nS-1,https://shop.example.invalid/p/1,{IMG}/a.jpg\n")
    assert parsed.url_columns == ["Image URL"]
    assert rows(parsed) == [("S-1", f"{IMG}/a.jpg", 1, 2)]


def test_duplicate_header_names_are_made_unique() -> None:
    parsed = parse_text(f"SKU,Image,Image\nS-1,{IMG}/a.jpg,{IMG}/b.jpg\n")
    assert parsed.columns == ["SKU", "Image", "Image (2)"]
    assert parsed.url_columns == ["Image", "Image (2)"]
    assert parsed.url_column == "Image + Image (2)"
    assert parsed.images == 2


# --- wide layouts, several URLs per cell, Shopify ----------------------------------------------


def test_wide_layout_image_1_to_n() -> None:
    text = (
        "SKU,Title,Image 1,Image 2,Image 3\n"
        f"A,Shirt,{IMG}/a1.jpg,{IMG}/a2.jpg,\n"
        f"B,Mug,,{IMG}/b2.jpg,{IMG}/b3.jpg\n"
        "C,Cap,,,\n"
        f"D,Hat,{IMG}/d1.jpg,,{IMG}/d1.jpg\n"
    )
    parsed = parse_text(text)
    assert parsed.url_columns == ["Image 1", "Image 2", "Image 3"]
    assert parsed.url_column == "Image 1 … Image 3"
    assert parsed.product_column == "SKU"
    assert parsed.ambiguous is False
    assert rows(parsed) == [
        ("A", f"{IMG}/a1.jpg", 1, 2),
        ("A", f"{IMG}/a2.jpg", 2, 2),
        ("B", f"{IMG}/b2.jpg", 1, 3),
        ("B", f"{IMG}/b3.jpg", 2, 3),
        ("D", f"{IMG}/d1.jpg", 1, 5),
    ]
    # C has no image anywhere: said once; D's second copy is a duplicate within its row.
    assert reasons(parsed.rejected) == [(4, "No image URL for this product")]
    assert reasons(parsed.duplicates) == [(5, "Duplicate URL (same as earlier in the same row)")]


def test_wide_layout_image_url_n() -> None:
    text = f"Product,Image URL 1,Image URL 2\nA,{IMG}/1.jpg,{IMG}/2.jpg\n"
    parsed = parse_text(text)
    assert parsed.url_columns == ["Image URL 1", "Image URL 2"]
    assert parsed.url_column == "Image URL 1 + Image URL 2"
    assert parsed.images == 2


@pytest.mark.parametrize("separator", [" ", ",", ", ", ";", " ; ", "|", " | ", "\n", "\t", "  "])
def test_cell_with_several_urls(separator: str) -> None:
    cell = separator.join([f"{IMG}/1.jpg", f"{IMG}/2.jpg", f"{IMG}/3.jpg"])
    text = f'SKU,Image URL\nA,"{cell}"\nB,{IMG}/4.jpg\n'
    parsed = parse_text(text)
    assert rows(parsed) == [
        ("A", f"{IMG}/1.jpg", 1, 2),
        ("A", f"{IMG}/2.jpg", 2, 2),
        ("A", f"{IMG}/3.jpg", 3, 2),
        ("B", f"{IMG}/4.jpg", 1, 3),
    ]


def test_commas_inside_one_url_do_not_split_it() -> None:
    url = f"{IMG}/c_fill,w_100,h_100/a.jpg"
    parsed = parse_text(f'SKU,Image URL\nA,"{url}"\nB,"{url}; {IMG}/b.jpg"\n')
    assert [r[1] for r in rows(parsed)] == [url, url, f"{IMG}/b.jpg"]


def test_trailing_separators_in_a_cell_are_ignored() -> None:
    parsed = parse_text(f'SKU,Image URL\nA,"{IMG}/1.jpg; {IMG}/2.jpg;"\n')
    assert [r[1] for r in rows(parsed)] == [f"{IMG}/1.jpg", f"{IMG}/2.jpg"]


SHOPIFY = (
    "Handle,Title,Body (HTML),Vendor,Option1 Name,Option1 Value,Variant SKU,Variant Price,"
    "Image Src,Image Position,Image Alt Text,Variant Image,Status\n"
    "classic-tee,Classic Tee,<p>Soft</p>,Acme,Size,S,TEE-S,19.00,"
    "https://cdn.example.invalid/tee-front.jpg,1,Front,https://cdn.example.invalid/tee-front.jpg,"
    "active\n"
    "classic-tee,,,,,M,TEE-M,19.00,https://cdn.example.invalid/tee-back.jpg,2,Back,,\n"
    "classic-tee,,,,,L,TEE-L,19.00,,,,https://cdn.example.invalid/tee-l.jpg,\n"
    "classic-tee,,,,,XL,TEE-XL,19.00,,,,,\n"
    "mug,Mug,<p>Big</p>,Acme,Title,Default Title,MUG-1,9.00,"
    "https://cdn.example.invalid/mug.jpg,1,,,active\n"
    "gift-card,Gift Card,,Acme,Title,Default Title,GIFT,25.00,,,,,active\n"
)


def test_shopify_export_as_is() -> None:
    parsed = parse_text(SHOPIFY)
    assert parsed.product_column == "Handle"
    assert parsed.url_columns == ["Image Src", "Variant Image"]
    assert parsed.url_column == "Image Src + Variant Image"
    assert parsed.ambiguous is False
    assert rows(parsed) == [
        ("classic-tee", "https://cdn.example.invalid/tee-front.jpg", 1, 2),
        ("classic-tee", "https://cdn.example.invalid/tee-back.jpg", 2, 3),
        ("classic-tee", "https://cdn.example.invalid/tee-l.jpg", 3, 4),
        ("mug", "https://cdn.example.invalid/mug.jpg", 1, 6),
    ]
    # The variant rows without images (row 5) are normal: nothing rejected for them. The
    # product that has no image at all says so once, on its row.
    assert reasons(parsed.rejected) == [(7, "No image URL for this product")]
    assert reasons(parsed.duplicates) == [(2, "Duplicate URL (same as earlier in the same row)")]
    assert (parsed.products, parsed.images, parsed.source_rows) == (2, 4, 6)


# --- delimiters --------------------------------------------------------------------------------


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_delimiter_detection(delimiter: str) -> None:
    lines = ["SKU", "Title", "Image URL"], ["A-1", "Shirt", f"{IMG}/w_1,h_2/a.jpg"]
    text = "\r\n".join(delimiter.join(f'"{c}"' if "," in c else c for c in line) for line in lines)
    parsed = parse_text(text)
    assert parsed.columns == ["SKU", "Title", "Image URL"]
    assert rows(parsed) == [("A-1", f"{IMG}/w_1,h_2/a.jpg", 1, 2)]


def test_semicolon_csv_with_unquoted_commas_in_urls() -> None:
    text = f"SKU;Image URL\nA;{IMG}/w_100,h_100/a.jpg\nB;{IMG}/w_100,h_100/b.jpg\n"
    parsed = parse_text(text)
    assert parsed.columns == ["SKU", "Image URL"]
    assert parsed.images == 2


def test_rows_of_different_lengths() -> None:
    text = f"SKU,Image URL\nA,{IMG}/a.jpg,extra,cells\nB\nC,{IMG}/c.jpg\n"
    parsed = parse_text(text)
    # Cells past the header get letter names; they are listed but not used.
    assert parsed.columns == ["SKU", "Image URL", "Column C", "Column D"]
    assert [r[0] for r in rows(parsed)] == ["A", "C"]
    assert reasons(parsed.rejected) == [(3, "No image URL for this product")]


# --- column override ---------------------------------------------------------------------------


def test_override_columns_by_name() -> None:
    text = f"Code,Link,Picture\nA,https://shop.example.invalid/a,{IMG}/a.jpg\n"
    detected = parse_text(text)
    assert detected.ambiguous is True
    assert detected.url_columns == ["Link", "Picture"]
    chosen = parse_text(text, product_column="Code", url_column="Picture")
    assert (chosen.product_column, chosen.url_column) == ("Code", "Picture")
    assert chosen.ambiguous is False
    assert rows(chosen) == [("A", f"{IMG}/a.jpg", 1, 2)]


def test_override_is_case_insensitive_and_accepts_the_wide_label() -> None:
    text = f"Name,SKU,Image 1,Image 2\nShirt,A,{IMG}/1.jpg,{IMG}/2.jpg\n"
    parsed = parse_text(text, product_column="name", url_column="Image 1 + Image 2")
    assert parsed.product_column == "Name"
    assert parsed.url_columns == ["Image 1", "Image 2"]
    assert rows(parsed)[0][0] == "Shirt"


def test_override_without_header_uses_column_letters() -> None:
    text = f"A-1\t{IMG}/a.jpg\t{IMG}/b.jpg\n"
    parsed = parse_text(text, url_column="Column C")
    assert parsed.url_columns == ["Column C"]
    assert [r[1] for r in rows(parsed)] == [f"{IMG}/b.jpg"]


def test_override_product_only_removes_it_from_detected_url_columns() -> None:
    text = f"Code,Image 1,Image 2\nA,{IMG}/1.jpg,B-7\n"
    parsed = parse_text(text, product_column="Image 2")
    assert parsed.url_columns == ["Image 1"]
    assert rows(parsed) == [("B-7", f"{IMG}/1.jpg", 1, 2)]


@pytest.mark.parametrize(
    ("product_column", "url_column", "message"),
    [
        ("Nope", None, "There is no column named 'Nope'; the columns are: SKU, Image URL."),
        (None, "Nope", "There is no column named 'Nope'; the columns are: SKU, Image URL."),
        ("SKU", "SKU", "The product column and the image URL column must be different."),
    ],
)
def test_bad_override(product_column: str | None, url_column: str | None, message: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_text(
            f"SKU,Image URL\nA,{IMG}/a.jpg\n", product_column=product_column, url_column=url_column
        )
    assert str(caught.value) == message


# --- columns named one way, holding another; quotes inside cells ----------------------------------


def test_named_image_column_without_urls_gives_way_to_a_column_of_urls() -> None:
    text = f"SKU,Image,Link\nA,front.jpg,{IMG}/a.jpg\nB,back.jpg,{IMG}/b.jpg\n"
    parsed = parse_text(text)
    assert parsed.url_columns == ["Link"]
    assert parsed.ambiguous is True
    assert parsed.images == 2


def test_named_url_column_of_bare_host_names_is_kept_and_each_row_says_why() -> None:
    parsed = parse_text("SKU,Image URL\nA,images.example.invalid/a.jpg\nB,www.example.invalid/b\n")
    assert parsed.url_columns == ["Image URL"]
    assert reasons(parsed.rejected) == [
        (2, "URL must start with http:// or https://"),
        (3, "URL must start with http:// or https://"),
    ]


def test_inch_mark_inside_a_cell_is_just_a_character() -> None:
    # An odd number of quotes sends the text to the stricter parser; a quote in the middle
    # of a cell is still read as a character there.
    parsed = parse_text(f'SKU,Notes,Image URL\nA,12" frame,{IMG}/a.jpg\nB,plain,{IMG}/b.jpg\n')
    assert parsed.images == 2
    assert parsed.columns == ["SKU", "Notes", "Image URL"]


# --- the package ----------------------------------------------------------------------------------


def test_the_package_never_imports_streamlit() -> None:
    import subprocess
    import sys

    code = "import sys, downloader.inputs; print('streamlit' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
