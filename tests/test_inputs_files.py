"""downloader.inputs on uploaded files: encodings, XLSX, bad files, parse_path, sheet_names."""

from __future__ import annotations

import datetime as dt
import io
import random
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from openpyxl import Workbook

from downloader.inputs import (
    InputError,
    ParsedInput,
    parse_bytes,
    parse_path,
    sheet_names,
)
from downloader.inputs import workbook as workbook_module

IMG = "https://images.example.invalid"


def rows(parsed: ParsedInput) -> list[tuple[str, str, int, int]]:
    return list(parsed.frame.itertuples(index=False, name=None))


# --- CSV encodings -----------------------------------------------------------------------------

TABLE = [
    ["Product Number", "Image URL", "Notes"],
    ["CAFÉ-1", f"{IMG}/café.jpg", "accent in the product: kept as typed"],
    ["EURO-2", f"{IMG}/€uro.jpg", "€ sign in the URL path"],
    ["PLAIN-3", f"{IMG}/plain.jpg", "naïve"],
]


def encoded(delimiter: str, encoding: str, newline: str = "\r\n") -> bytes:
    text = newline.join(delimiter.join(row) for row in TABLE) + newline
    return text.encode(encoding)


def check_table(parsed: ParsedInput) -> None:
    assert parsed.columns == ["Product Number", "Image URL", "Notes"]
    # Any product number is kept exactly as typed (issue 23): the accent shows the decoding.
    assert rows(parsed) == [
        ("CAFÉ-1", f"{IMG}/café.jpg", 1, 2),
        ("EURO-2", f"{IMG}/€uro.jpg", 1, 3),
        ("PLAIN-3", f"{IMG}/plain.jpg", 1, 4),
    ]
    assert parsed.rejected == []
    assert parsed.extra_columns == ["Notes"]
    assert parsed.extras is not None and parsed.extras["Notes"].tolist()[-1] == "naïve"


@pytest.mark.parametrize(
    ("encoding", "delimiter", "filename"),
    [
        ("utf-8", ",", "export.csv"),
        ("utf-8-sig", ",", "export.csv"),  # Excel's "CSV UTF-8" starts with a BOM
        ("utf-8", ";", "export.csv"),
        ("utf-8", "\t", "export.tsv"),
        ("cp1252", ";", "export.csv"),  # Excel "CSV" on a European Windows
        ("cp1252", ",", "export.txt"),
        ("utf-16", "\t", "export.txt"),  # Excel "Unicode text": UTF-16 LE with BOM, tabs
        ("utf-16-be", "\t", "export.txt"),  # no BOM, big-endian
        ("utf-16-le", ",", "export.csv"),  # no BOM, little-endian
    ],
)
def test_csv_encodings_and_delimiters(encoding: str, delimiter: str, filename: str) -> None:
    data = encoded(delimiter, encoding)
    if encoding == "utf-16":
        assert data[:2] == b"\xff\xfe"
    check_table(parse_bytes(data, filename))


def test_utf8_with_bom_does_not_leak_into_the_first_header() -> None:
    data = "\ufeffSKU,Image URL\nA,https://img.example.invalid/a.jpg\n".encode()
    parsed = parse_bytes(data, "x.csv")
    assert parsed.columns == ["SKU", "Image URL"]
    assert parsed.ambiguous is False


def test_lone_cr_line_endings() -> None:
    parsed = parse_bytes(encoded(",", "utf-8", newline="\r"), "mac.csv")
    check_table(parsed)


def test_extension_does_not_matter_for_text() -> None:
    check_table(parse_bytes(encoded(",", "utf-8"), "upload"))
    check_table(parse_bytes(encoded("\t", "utf-8"), "stdin.csv"))
    # Some web apps export tab-separated text named .xls; a renamed CSV reads as well.
    check_table(parse_bytes(encoded("\t", "cp1252"), "report.xls"))
    check_table(parse_bytes(encoded(",", "utf-8"), "renamed.xlsx"))


# --- XLSX --------------------------------------------------------------------------------------


@pytest.fixture(params=["calamine", "openpyxl"])
def xlsx_reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the XLSX tests with both readers (python-calamine is optional)."""
    if request.param == "calamine" and workbook_module.python_calamine is None:
        pytest.skip("python-calamine is not installed")
    monkeypatch.setattr(workbook_module, "USE_CALAMINE", request.param == "calamine")
    yield request.param


def set_cached_value(data: bytes, sheet_xml: str, cell: str, value: str) -> bytes:
    """Give a formula cell the cached string value Excel would have saved with it.

    openpyxl writes formulas without computing them (an empty <v/>); Excel stores the last
    result next to the formula, which is what the parser must read.
    """
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            content = source.read(item.filename)
            if item.filename == sheet_xml:
                xml = content.decode()
                pattern = re.compile(rf'<c r="{cell}"([^>]*)><f>(.*?)</f><v\s*/>(</c>)')
                assert pattern.search(xml), xml
                xml = pattern.sub(
                    lambda m: f'<c r="{cell}" t="str"><f>{m.group(2)}</f><v>{value}</v></c>', xml
                )
                content = xml.encode()
            target.writestr(item, content)
    return out.getvalue()


def build_workbook() -> bytes:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "Products"
    sheet.append(["SKU", "Image URL", "Price"])  # row 1
    sheet.append([12345, f"{IMG}/12345-a.jpg", 9.5])  # 2: numeric SKU
    sheet.append([12345.0, f"{IMG}/12345-b.jpg", 9.5])  # 3: a float that is a whole number
    sheet.append(["A-7", '=CONCATENATE("https://images.example.invalid/", "a7.jpg")'])  # 4
    sheet.append([None, None, None])  # 5: empty row
    sheet.append([1.5, f"{IMG}/x.jpg"])  # 6: not a product number
    sheet.append(["B-8", None])  # 7: no image at all
    sheet.append(["  C-9 ", f"  {IMG}/c9.jpg  "])  # 8: padded
    sheet.append([True, f"{IMG}/bool.jpg"])  # 9: TRUE is a valid product number
    sheet["E12"] = "stray note far away"  # a cell outside the table
    second = book.create_sheet("Other")
    second.append(["Product", "Image"])
    second.append(["OTHER-1", f"{IMG}/other.jpg"])
    out = io.BytesIO()
    book.save(out)
    return set_cached_value(out.getvalue(), "xl/worksheets/sheet1.xml", "B4", f"{IMG}/a7.jpg")


def test_xlsx_first_sheet(xlsx_reader: str) -> None:
    parsed = parse_bytes(build_workbook(), "catalog.xlsx")
    assert parsed.columns == ["SKU", "Image URL", "Price", "Column E"]
    assert (parsed.product_column, parsed.url_column) == ("SKU", "Image URL")
    assert rows(parsed) == [
        ("12345", f"{IMG}/12345-a.jpg", 1, 2),
        ("12345", f"{IMG}/12345-b.jpg", 2, 3),
        ("A-7", f"{IMG}/a7.jpg", 1, 4),  # the formula's cached value
        ("1.5", f"{IMG}/x.jpg", 1, 6),  # a number cell: its text, a valid product number
        ("C-9", f"{IMG}/c9.jpg", 1, 8),
        ("TRUE", f"{IMG}/bool.jpg", 1, 9),
    ]
    assert [(e.row, e.reason, e.product) for e in parsed.rejected] == [
        (7, "No image URL for this product", "B-8"),
    ]
    assert parsed.source_rows == 7  # rows 2-4 and 6-9; the empty row 5 and the note don't count
    assert (parsed.products, parsed.images) == (5, 6)


def test_xlsx_sheet_by_name(xlsx_reader: str) -> None:
    parsed = parse_bytes(build_workbook(), "catalog.xlsx", sheet="Other")
    assert rows(parsed) == [("OTHER-1", f"{IMG}/other.jpg", 1, 2)]


def test_xlsx_unknown_sheet(xlsx_reader: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_bytes(build_workbook(), "catalog.xlsx", sheet="Nope")
    assert str(caught.value) == (
        "catalog.xlsx has no sheet named 'Nope'; its sheets are 'Products', 'Other'."
    )


def test_sheet_names(xlsx_reader: str) -> None:
    assert sheet_names(build_workbook()) == ["Products", "Other"]
    assert sheet_names(b"SKU,Image URL\n") == []


def test_xlsx_without_header_and_with_leading_empty_rows(xlsx_reader: str) -> None:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet["B3"] = f"{IMG}/1.jpg"
    sheet["C3"] = 777
    sheet["B4"] = f"{IMG}/2.jpg"
    sheet["C4"] = "X-1"
    out = io.BytesIO()
    book.save(out)
    parsed = parse_bytes(out.getvalue(), "sheet.xlsx")
    assert parsed.columns == ["Column B", "Column C"]  # the sheet's own letters
    assert (parsed.url_column, parsed.product_column) == ("Column B", "Column C")
    assert rows(parsed) == [("777", f"{IMG}/1.jpg", 1, 3), ("X-1", f"{IMG}/2.jpg", 1, 4)]


def test_xlsx_wide_layout_with_many_rows_and_max_rows(xlsx_reader: str) -> None:
    book = Workbook(write_only=True)
    sheet = book.create_sheet("Data")
    sheet.append(["Product ID", "Image 1", "Image 2"])
    for n in range(300):
        sheet.append([f"P{n}", f"{IMG}/{n}-1.jpg", f"{IMG}/{n}-2.jpg"])
    out = io.BytesIO()
    book.save(out)
    data = out.getvalue()
    parsed = parse_bytes(data, "wide.xlsx")
    assert (parsed.products, parsed.images, parsed.source_rows) == (300, 600, 300)
    with pytest.raises(InputError, match="The input holds 600 image URLs"):
        parse_bytes(data, "wide.xlsx", max_rows=599)
    with pytest.raises(InputError, match="The input has 300 rows"):
        parse_bytes(data, "wide.xlsx", max_rows=299)


def test_empty_xlsx(xlsx_reader: str) -> None:
    out = io.BytesIO()
    Workbook().save(out)
    with pytest.raises(InputError) as caught:
        parse_bytes(out.getvalue(), "empty.xlsx")
    assert str(caught.value) == "empty.xlsx is empty."


# --- bad files ---------------------------------------------------------------------------------

CFB = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


def encrypted_xlsx() -> bytes:
    # openpyxl cannot write an encrypted workbook. Excel saves one as an OLE2 compound file
    # (EncryptionInfo + EncryptedPackage streams) instead of a zip; its header is what the
    # parser sees first, so a CFB header followed by sector bytes stands in for it.
    return CFB + b"\x00" * 16 + b"\x3e\x00\x03\x00\xfe\xff\x09\x00" + bytes(4096)


def corrupt_xlsx() -> bytes:
    good = io.BytesIO()
    Workbook().save(good)
    return good.getvalue()[:200] + random.Random(7).randbytes(2000)


@pytest.mark.parametrize(
    ("data", "filename", "message"),
    [
        (b"", "empty.csv", "empty.csv is empty."),
        (b"\r\n \r\n", "blank.csv", "blank.csv is empty."),
        (
            random.Random(1).randbytes(50_000),
            "noise.csv",
            "noise.csv is neither a text table (CSV, TSV) nor an Excel workbook (.xlsx).",
        ),
        (
            random.Random(2).randbytes(300),
            "small-noise.txt",
            "small-noise.txt is neither a text table (CSV, TSV) nor an Excel workbook (.xlsx).",
        ),
        (
            encrypted_xlsx(),
            "secret.xlsx",
            "secret.xlsx is a password-protected workbook or an old .xls file: open it in "
            "Excel and save it as .xlsx without a password.",
        ),
        (
            corrupt_xlsx(),
            "broken.xlsx",
            "broken.xlsx is not a readable .xlsx workbook (the file is damaged or has another "
            "format).",
        ),
        (
            b"PK\x03\x04" + bytes(100),
            "truncated.xlsx",
            "truncated.xlsx is not a readable .xlsx workbook (the file is damaged or has "
            "another format).",
        ),
        (
            random.Random(4).randbytes(5000),
            "garbage.xlsx",
            "garbage.xlsx is not a valid .xlsx workbook (the file is damaged).",
        ),
        (
            b"Name,Price\nShirt,12\n",
            "prices.csv",
            "No image URL column found: name a column Image URL (or Image Src, URL) or make "
            "sure its cells start with http:// or https://.",
        ),
    ],
    ids=[
        "empty",
        "blank",
        "random",
        "small-random",
        "encrypted",
        "corrupt-zip",
        "truncated-zip",
        "garbage-named-xlsx",
        "no-url-column",
    ],
)
def test_bad_files(data: bytes, filename: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_bytes(data, filename)
    assert str(caught.value) == message


@pytest.mark.parametrize("reader", ["calamine", "openpyxl"])
def test_bad_workbooks_with_both_readers(reader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if reader == "calamine" and workbook_module.python_calamine is None:
        pytest.skip("python-calamine is not installed")
    monkeypatch.setattr(workbook_module, "USE_CALAMINE", reader == "calamine")
    for data in (corrupt_xlsx(), b"PK\x03\x04" + bytes(100), zip_without_workbook()):
        with pytest.raises(InputError, match=r"is not a readable \.xlsx workbook"):
            parse_bytes(data, "bad.xlsx")
        with pytest.raises(InputError, match=r"is not a readable \.xlsx workbook"):
            sheet_names(data)


def zip_without_workbook() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("hello.txt", "not a workbook")
    return out.getvalue()


def test_ten_megabyte_cell() -> None:
    data = b"SKU,Image URL\r\nA," + b"https://x.example.invalid/" + b"a" * 10_000_000 + b"\r\n"
    with pytest.raises(InputError) as caught:
        parse_bytes(data, "huge.csv")
    assert str(caught.value) == (
        "Row 2 holds a cell of 10,000,026 characters; a cell can hold at most 100,000."
    )


def test_ten_megabyte_single_cell_file() -> None:
    with pytest.raises(InputError, match=r"^Row 1 holds a cell of 10,485,760 characters"):
        parse_bytes(b"x" * 10 * 1024 * 1024, "one-cell.csv")


def test_error_messages_are_one_line_without_traceback() -> None:
    for data, name in [(random.Random(3).randbytes(5000), "a.csv"), (corrupt_xlsx(), "b.xlsx")]:
        with pytest.raises(InputError) as caught:
            parse_bytes(data, name)
        text = str(caught.value)
        assert "\n" not in text and "Traceback" not in text and "Error" not in text


# --- parse_path --------------------------------------------------------------------------------


def test_parse_path_csv_and_xlsx(tmp_path: Path) -> None:
    csv_path = tmp_path / "list.csv"
    csv_path.write_bytes(encoded(";", "cp1252"))
    check_table(parse_path(csv_path))
    xlsx_path = tmp_path / "list.xlsx"
    xlsx_path.write_bytes(build_workbook())
    assert parse_path(str(xlsx_path), sheet="Other", max_rows=10).images == 1
    parsed = parse_path(csv_path, product_column="Notes", url_column="Image URL")
    assert parsed.product_column == "Notes"


def test_parse_path_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        parse_path(tmp_path / "nope.csv")
    assert str(caught.value) == f"Cannot read {tmp_path / 'nope.csv'}: No such file or directory."


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        ("abc", "abc"),
        (True, "TRUE"),
        (False, "FALSE"),
        (42, "42"),
        (12345.0, "12345"),
        (12.5, "12.5"),
        (0.1 + 0.2, "0.3"),
        (1e20, "1e+20"),
        (dt.datetime(2024, 3, 5), "2024-03-05"),
        (dt.datetime(2024, 3, 5, 14, 30), "2024-03-05 14:30:00"),
        (dt.date(2024, 3, 5), "2024-03-05"),
        (dt.time(9, 15), "09:15:00"),
    ],
)
def test_cell_text(value: object, text: str) -> None:
    assert workbook_module.cell_text(value) == text
