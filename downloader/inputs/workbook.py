"""XLSX to the raw table of strings (same shape as tabular.read_text_table gives).

Values are the cells' cached values (a formula reads as what Excel last computed), numbers
are written the way a person typed them (12345, not 12345.0). python-calamine reads the
workbook when it is installed (about ten times faster); openpyxl otherwise. Neither reader
sees a workbook before `workbook_guard` has bounded what reading it costs (zip bombs, sparse
sheets whose dense range would not fit in memory).
"""

from __future__ import annotations

import datetime as dt
import importlib
import io
from collections.abc import Sequence
from typing import Any

import pandas as pd

from .decoding import display_name
from .model import InputError
from .tabular import STR_DTYPE
from .workbook_guard import check_package, check_workbook

try:  # optional: a Rust reader, much faster than openpyxl on big sheets
    python_calamine: Any = importlib.import_module("python_calamine")
except ImportError:  # pragma: no cover - exercised when the package is absent
    python_calamine = None

USE_CALAMINE = python_calamine is not None


def cell_text(value: object) -> str:
    """A cell value as the text a person sees in the sheet."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return format(value, ".15g")  # Excel shows 15 significant digits
    if isinstance(value, dt.datetime):
        if value.time() == dt.time(0):
            return value.date().isoformat()
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)


def sheet_names(data: bytes, filename: str = "workbook.xlsx") -> list[str]:
    """Names of the workbook's worksheets, in workbook order."""
    check_package(data, filename)  # the readers parse every part but the sheets on opening
    if USE_CALAMINE:
        workbook = _calamine_open(data, filename)
        try:
            return _calamine_worksheets(workbook)
        finally:
            workbook.close()
    book = _openpyxl_open(data, filename)
    try:
        return [sheet.title for sheet in book.worksheets]
    finally:
        book.close()


def read_workbook_table(
    data: bytes,
    filename: str,
    *,
    sheet: str | None = None,
    row_cap: int | None = None,
) -> pd.DataFrame:
    """Read one worksheet (the first unless ``sheet`` names another) into the raw table.

    ``row_cap`` bounds how many rows are read; ``row_cap + 1`` rows coming back means more.
    """
    nrows = None if row_cap is None else row_cap + 1
    check_workbook(data, filename)  # before a reader builds a sheet's whole range
    rows = (
        _calamine_rows(data, filename, sheet, nrows)
        if USE_CALAMINE
        else _openpyxl_rows(data, filename, sheet, nrows)
    )
    return _rows_to_frame(rows)


def _rows_to_frame(rows: Sequence[Sequence[Any]]) -> pd.DataFrame:
    """Rows of cell values to the raw table: one str column per sheet column."""
    width = max((len(row) for row in rows), default=0)
    if any(len(row) != width for row in rows):
        rows = [(*row, *([None] * (width - len(row)))) for row in rows]
    columns = list(zip(*rows, strict=True)) if rows else []
    del rows
    arrays = {}
    for position, cells in enumerate(columns):
        if all(type(value) is str for value in cells):
            texts: Sequence[object] = cells
        else:
            texts = [value if type(value) is str else cell_text(value) for value in cells]
        arrays[position] = pd.array(texts, dtype=STR_DTYPE)
    # Trailing empty rows and columns are dropped later; keep the frame as the sheet is.
    frame = pd.DataFrame(
        arrays, index=pd.RangeIndex(1, len(columns[0]) + 1 if columns else 1), copy=False
    )
    frame.columns = pd.RangeIndex(len(columns))
    return frame


def _unreadable(filename: str) -> InputError:
    return InputError(
        f"{display_name(filename)} is not a readable .xlsx workbook (the file is damaged or "
        "has another format)."
    )


def _no_sheet(filename: str, sheet: str, names: list[str]) -> InputError:
    listed = ", ".join(repr(name) for name in names) or "none"
    return InputError(
        f"{display_name(filename)} has no sheet named {sheet!r}; its sheets are {listed}."
    )


# --- python-calamine -------------------------------------------------------------------------


def _calamine_open(data: bytes, filename: str) -> Any:
    assert python_calamine is not None
    try:
        return python_calamine.CalamineWorkbook.from_filelike(io.BytesIO(data))
    except Exception:
        raise _unreadable(filename) from None


def _calamine_worksheets(workbook: Any) -> list[str]:
    worksheet = python_calamine.SheetTypeEnum.WorkSheet
    return [meta.name for meta in workbook.sheets_metadata if meta.typ == worksheet]


def _calamine_rows(
    data: bytes, filename: str, sheet: str | None, nrows: int | None
) -> list[list[Any]]:
    workbook = _calamine_open(data, filename)
    try:
        names = _calamine_worksheets(workbook)
        if sheet is None:
            if not names:
                raise InputError(f"{display_name(filename)} has no worksheet.")
            sheet = names[0]
        elif sheet not in names:
            raise _no_sheet(filename, sheet, names)
        try:
            rows: list[list[Any]] = workbook.get_sheet_by_name(sheet).to_python(
                skip_empty_area=False, nrows=nrows
            )
        except Exception:
            raise _unreadable(filename) from None
        return rows
    finally:
        workbook.close()


# --- openpyxl ----------------------------------------------------------------------------------


def _openpyxl_open(data: bytes, filename: str) -> Any:
    import openpyxl

    try:
        return openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception:
        raise _unreadable(filename) from None


def _openpyxl_rows(
    data: bytes, filename: str, sheet: str | None, nrows: int | None
) -> list[tuple[Any, ...]]:
    book = _openpyxl_open(data, filename)
    try:
        names = [worksheet.title for worksheet in book.worksheets]
        if sheet is None:
            if not names:
                raise InputError(f"{display_name(filename)} has no worksheet.")
            worksheet = book.worksheets[0]
        elif sheet in names:
            worksheet = book[sheet]
        else:
            raise _no_sheet(filename, sheet, names)
        try:
            worksheet.reset_dimensions()  # the stored dimension can be wrong; read every row
            rows: list[tuple[Any, ...]] = []
            for row in worksheet.iter_rows(min_row=1, values_only=True):
                rows.append(row)
                if nrows is not None and len(rows) >= nrows:
                    break
        except InputError:
            raise
        except Exception:
            raise _unreadable(filename) from None
        return rows
    finally:
        book.close()
