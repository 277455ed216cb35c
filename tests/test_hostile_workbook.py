"""Workbooks built to exhaust the reader: sparse sheets and zip bombs (issue 18, item 1).

A 1.6 KB XLSX with cells in A1 and XFD1048576 made python-calamine allocate the dense range
(about 550 GB) and abort the process: no `except` catches that. Every case that could take a
reader down runs the parser in a child process (the CLI, or `python -c`), so a crash shows as
an exit status here instead of killing the test run.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import openpyxl
import pytest

from downloader.inputs import InputError, parse_bytes, sheet_names
from downloader.inputs import workbook as workbook_module
from tests.test_cli import ROOT, Cli
from tests.workbook_support import (
    MIB,
    deflated,
    repeated,
    shared_strings_bomb,
    sheet_xml,
    sparse_workbook,
    text_cell,
    workbook,
)

READERS = ["calamine", "openpyxl"]
HEADER = f'<row r="1">{text_cell("A1", "Product Number")}{text_cell("B1", "Image URL")}</row>'
FIRST = f'<row r="2">{text_cell("A2", "P1")}{text_cell("B2", "http://127.0.0.2/a.jpg")}</row>'

CHILD = """
import sys
from downloader.inputs import InputError, parse_path, sheet_names, workbook

workbook.USE_CALAMINE = sys.argv[2] == "calamine"
data = open(sys.argv[1], "rb").read()
try:
    sheet_names(data, "book.xlsx")
    parsed = parse_path(sys.argv[1])
except InputError as exc:
    print("error:", exc)
else:
    print("parsed", parsed.images)
"""


def parse_in_child(path: Path, reader: str) -> subprocess.CompletedProcess[str]:
    """Both readers parse the file in a child process (the way a crash can be observed)."""
    if reader == "calamine" and workbook_module.python_calamine is None:
        pytest.skip("python-calamine is not installed")
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(path), reader],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def refused(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 0, f"the reader died ({result.returncode}): {result.stderr[-800:]}"
    line = result.stdout.strip()
    assert line.startswith("error:"), line
    for needle in needles:
        assert needle in line, line
    return line


# ---------------------------------------------------------------- sparse sheets


def test_a_sparse_workbook_is_refused_by_submit_with_exit_2(tmp_path: Path) -> None:
    src = tmp_path / "sparse.xlsx"
    src.write_bytes(sparse_workbook("XFD1048576"))
    assert src.stat().st_size < 2000
    cli = Cli(tmp_path)
    result = cli("submit", str(src))
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert "Sheet 'Sheet1' spans A1:XFD1048576" in lines[0]
    assert "Delete the stray cells far from your table" in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert cli.sql("SELECT count(*) FROM job") == [(0,)]


def test_a_sparse_workbook_is_refused_by_run_with_exit_2(tmp_path: Path) -> None:
    src = tmp_path / "sparse.xlsx"
    src.write_bytes(sparse_workbook("GR1048576"))  # within the columns, far too many cells
    result = Cli(tmp_path)("run", str(src))
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert "Sheet 'Sheet1' spans A1:GR1048576" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize(
    ("far", "span"),
    [
        ("XFD1048576", "A1:XFD1048576"),  # the 550 GB range
        ("XFD2", "A1:XFD2"),  # wider than any table: 16,384 columns
        ("GR1048576", "A1:GR1048576"),  # 200 columns, but 200 million cells
        ("B4000000000", "A1:B4000000000"),  # beyond Excel's last row; calamine reads u32 rows
    ],
)
def test_sparse_sheets_are_refused_before_either_reader_builds_them(
    tmp_path: Path, reader: str, far: str, span: str
) -> None:
    src = tmp_path / "sparse.xlsx"
    src.write_bytes(sparse_workbook(far, sheet="Stray & Co"))
    line = refused(parse_in_child(src, reader), f"Sheet 'Stray & Co' spans {span}")
    assert "at most 200 columns and 20,000,000 cells can be read" in line


def r_less_far_row(columns: int) -> str:
    """A row far down whose cells have no `r`: calamine places them by counting."""
    cells = "<c><v>1</v></c>" * columns
    return sheet_xml(f'{HEADER}{FIRST}<row r="1048576">{cells}</row>')


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize(
    ("case", "sheet", "span"),
    [
        # no reference at all: the position comes from counting cells and rows
        ("r-less cells", r_less_far_row(300), "A1:KN1048576"),
        (
            "r-less rows",
            sheet_xml(
                HEADER
                + FIRST
                + "<row><c><v>1</v></c></row>" * 3
                + "<row>"
                + "<c><v>1</v></c>" * 250
                + "</row>"
            ),
            "A1:IP6",
        ),
        # the reference is not the first attribute
        (
            "r not first",
            sheet_xml(f'{HEADER}{FIRST}<row r="9"><c t="n" r="XFD1048576"><v>1</v></c></row>'),
            "A1:XFD1048576",
        ),
        # an attribute value that looks like a harmless reference comes first
        (
            "decoy value",
            sheet_xml(f'{HEADER}{FIRST}<row r="9"><c x=\' r="A1"\' r="XFD9"><v>1</v></c></row>'),
            "A1:XFD9",
        ),
        # a namespace prefix on the elements (calamine matches local names)
        (
            "prefixed",
            sheet_xml(
                f'{HEADER}{FIRST}<x:row xmlns:x="urn:x" r="9"><x:c '
                'r="ZZZ9"><x:v>1</x:v></x:c></x:row>'
            ),
            "A1:ZZZ9",
        ),
    ],
)
def test_cell_positions_are_found_however_the_sheet_spells_them(
    tmp_path: Path, reader: str, case: str, sheet: str, span: str
) -> None:
    src = tmp_path / "odd.xlsx"
    src.write_bytes(workbook({"Odd": sheet}))
    refused(parse_in_child(src, reader), f"Sheet 'Odd' spans {span}")


# ---------------------------------------------------------------- zip bombs


@pytest.mark.parametrize("reader", READERS)
def test_a_sparse_sheet_stored_under_another_name_is_found(tmp_path: Path, reader: str) -> None:
    rows = f'{HEADER}{FIRST}<row r="1048576"><c r="XFD1048576"><v>1</v></c></row>'
    part = deflated("xl/worksheets/data.bin", sheet_xml(rows))  # found through the relationship
    src = tmp_path / "renamed.xlsx"
    src.write_bytes(workbook({"Renamed": part}))
    refused(parse_in_child(src, reader), "Sheet 'Renamed' spans A1:XFD1048576")


@pytest.mark.parametrize("reader", READERS)
def test_a_sheet_in_utf16_is_refused(tmp_path: Path, reader: str) -> None:
    rows = f'{HEADER}{FIRST}<row r="1048576"><c r="XFD1048576"><v>1</v></c></row>'
    text = sheet_xml(rows).replace('encoding="UTF-8"', 'encoding="UTF-16"')
    src = tmp_path / "wide.xlsx"
    src.write_bytes(workbook({"Wide": deflated("x", text.encode("utf-16"))}))
    refused(
        parse_in_child(src, reader),
        "is not a readable .xlsx workbook: xl/worksheets/sheet1.xml is XML in UTF-16",
    )


@pytest.mark.parametrize("reader", READERS)
def test_a_shared_strings_zip_bomb_is_refused(tmp_path: Path, reader: str) -> None:
    bomb = shared_strings_bomb(600 * MIB)
    data = workbook({"Sheet1": sheet_xml(HEADER + FIRST)}, shared_strings=bomb)
    assert len(data) < 2 * MIB
    src = tmp_path / "bomb.xlsx"
    src.write_bytes(data)
    refused(
        parse_in_child(src, reader),
        "book.xlsx unpacks to more than 512 MiB",
        "at most 512 MiB of a workbook's XML can be read",
    )


@pytest.mark.parametrize("reader", READERS)
def test_a_zip_member_larger_than_its_header_states_is_refused(tmp_path: Path, reader: str) -> None:
    bomb = shared_strings_bomb(64 * MIB, stated=1024)  # the headers say 1 KiB
    src = tmp_path / "liar.xlsx"
    src.write_bytes(workbook({"Sheet1": sheet_xml(HEADER + FIRST)}, shared_strings=bomb))
    refused(
        parse_in_child(src, reader),
        "book.xlsx is not a readable .xlsx workbook",
        "xl/sharedStrings.xml unpacks to more than the 1,024 bytes its header states",
    )


def test_a_sheet_zip_bomb_is_refused_in_process() -> None:
    cell = '<row r="1"><c r="A1" t="inlineStr"><is><t>' + "y" * 900 + "</t></is></c></row>"
    head = '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
    part = repeated("sheet", head + "<sheetData>", cell, 600 * MIB, "</sheetData></worksheet>")
    data = workbook({"Big": part})
    message = r"big\.xlsx unpacks to more than 512 MiB"
    with pytest.raises(InputError, match=message):
        sheet_names(data, "big.xlsx")
    with pytest.raises(InputError, match=message):
        parse_bytes(data, "big.xlsx")


@pytest.mark.parametrize("reader", READERS)
def test_a_workbook_of_too_many_parts_is_refused(tmp_path: Path, reader: str) -> None:
    empties = tuple(deflated(f"xl/media/empty{number}.txt", "") for number in range(12_000))
    src = tmp_path / "parts.xlsx"
    src.write_bytes(workbook({"Sheet1": sheet_xml(HEADER + FIRST)}, extra=empties))
    refused(parse_in_child(src, reader), "book.xlsx holds more than 10,000 parts")


# ---------------------------------------------------------------- within the limits


@pytest.fixture(params=READERS)
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "calamine" and workbook_module.python_calamine is None:
        pytest.skip("python-calamine is not installed")
    monkeypatch.setattr(workbook_module, "USE_CALAMINE", request.param == "calamine")
    return str(request.param)


def test_a_workbook_within_the_limits_still_parses(reader: str) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["Product Number", "Image URL"])
    sheet.append(["P1", "http://127.0.0.2/a.jpg"])
    sheet.append(["P2", "http://127.0.0.2/b.jpg"])
    sheet["T50000"] = "a stray note far below"  # 50,000 rows by 20 columns: 1,000,000 cells
    sheet["GR3"] = "the 200th column"
    buffer = io.BytesIO()
    book.save(buffer)
    parsed = parse_bytes(buffer.getvalue(), "fine.xlsx")
    assert [(r.product, r.url) for r in parsed.frame.itertuples()] == [
        ("P1", "http://127.0.0.2/a.jpg"),
        ("P2", "http://127.0.0.2/b.jpg"),
    ]


def test_cells_without_references_within_the_limits_are_read_in_place(reader: str) -> None:
    rows = (
        '<row><c t="inlineStr"><is><t>SKU</t></is></c><c t="inlineStr"><is><t>Image URL</t>'
        "</is></c></row>"
        '<row><c t="inlineStr"><is><t>P1</t></is></c><c t="inlineStr"><is><t>'
        "http://127.0.0.2/a.jpg</t></is></c></row>"
        f'<row r="40">{text_cell("A40", "P2")}<c t="inlineStr"><is><t>http://127.0.0.2/b.jpg</t>'
        "</is></c></row>"
    )
    parsed = parse_bytes(workbook({"Plain": sheet_xml(rows)}), "plain.xlsx")
    assert [(r.product, r.url, r.source_row) for r in parsed.frame.itertuples()] == [
        ("P1", "http://127.0.0.2/a.jpg", 2),
        ("P2", "http://127.0.0.2/b.jpg", 40),
    ]


def test_other_parts_of_a_normal_size_are_read(reader: str) -> None:
    extra = (
        deflated("docProps/custom.xml", "<Properties/>" + " " * 100_000),
        deflated("xl/media/image1.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 400),
    )
    data = workbook({"Sheet1": sheet_xml(HEADER + FIRST)}, extra=extra)
    assert sheet_names(data) == ["Sheet1"]
    assert parse_bytes(data, "ok.xlsx").images == 1
