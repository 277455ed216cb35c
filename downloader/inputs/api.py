"""The entry points: text, bytes or a path in, a validated ParsedInput out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from . import workbook
from .columns import SAMPLE_ROWS, Layout, apply_override, detect
from .decoding import display_name, sniff_kind, text_to_utf8, to_utf8
from .model import (
    BLANK_CLASS,
    BLANKS,
    MAX_CELL_CHARS,
    MAX_EXTRA_CHARS,
    MAX_EXTRA_COLUMNS,
    InputError,
    ParsedInput,
)
from .tabular import read_text_table
from .validate import check

_NOT_BLANK = "[^" + BLANK_CLASS[1:]
#: Blank rows (and the header) allowed on top of max_rows before reading stops early.
_ROW_SLACK = 10_000

_SAMPLE_CSV = """\
Product Number,Image URL
ABC-100,https://images.example.invalid/abc-100/front.jpg
ABC-100,https://images.example.invalid/abc-100/back.jpg
ABC-100,https://images.example.invalid/abc-100/side.jpg
XYZ_200,https://images.example.invalid/xyz-200/main.png
XYZ_200,https://images.example.invalid/xyz-200/detail.webp
12345,https://images.example.invalid/12345/photo.jpg
"""


def parse_text(
    text: str,
    *,
    product_column: str | None = None,
    url_column: str | None = None,
    max_rows: int | None = None,
) -> ParsedInput:
    """Parse pasted text (TSV from Excel or Google Sheets, or CSV) into a ParsedInput."""
    limit = _limit(max_rows)
    return _parse(
        lambda cap: read_text_table(text_to_utf8(text), row_cap=cap),
        "The input",
        product_column,
        url_column,
        limit,
    )


def parse_bytes(
    data: bytes,
    filename: str,
    *,
    sheet: str | None = None,
    product_column: str | None = None,
    url_column: str | None = None,
    max_rows: int | None = None,
) -> ParsedInput:
    """Parse an uploaded file: XLSX by content, else CSV/TSV/TXT text in any usual encoding."""
    limit = _limit(max_rows)
    read: Callable[[int], pd.DataFrame]
    if sniff_kind(data, filename) == "xlsx":

        def read(cap: int) -> pd.DataFrame:
            return workbook.read_workbook_table(data, filename, sheet=sheet, row_cap=cap)

    else:

        def read(cap: int) -> pd.DataFrame:
            return read_text_table(to_utf8(data, filename), row_cap=cap)

    return _parse(read, display_name(filename), product_column, url_column, limit)


def parse_path(
    path: str | Path,
    *,
    sheet: str | None = None,
    product_column: str | None = None,
    url_column: str | None = None,
    max_rows: int | None = None,
) -> ParsedInput:
    """Read a CSV/TSV/TXT/XLSX file from disk and parse it (see parse_bytes)."""
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(f"Cannot read {file}: {reason}.") from None
    return parse_bytes(
        data,
        file.name,
        sheet=sheet,
        product_column=product_column,
        url_column=url_column,
        max_rows=max_rows,
    )


def sheet_names(data: bytes, filename: str = "The file") -> list[str]:
    """Worksheet names of an XLSX upload (for the sheet picker); [] for a text file.

    ``filename`` only names the file in an InputError (damaged or encrypted workbook).
    """
    if sniff_kind(data, filename) != "xlsx":
        return []
    return workbook.sheet_names(data, filename)


def sample_csv() -> str:
    """A small CSV to show the expected layout (hosts are obviously fake)."""
    return _SAMPLE_CSV


# --- the common path --------------------------------------------------------------------------


def _limit(max_rows: int | None) -> int:
    if max_rows is None:
        from downloader.settings import get_settings

        return get_settings().max_rows_per_job
    if max_rows < 1:
        raise ValueError("max_rows must be at least 1")
    return max_rows


def _parse(
    read: Callable[[int], pd.DataFrame],
    name: str,
    product_column: str | None,
    url_column: str | None,
    limit: int,
) -> ParsedInput:
    """Read the raw table, choose the columns, validate. Big intermediate tables are let go
    as soon as the next step has what it needs (peak memory matters at a million rows)."""
    raw = read(limit + _ROW_SLACK)
    if len(raw) > limit + _ROW_SLACK:
        raise _too_many(f"more than {limit:,}", limit)
    positions = _filled_columns(raw)
    if not positions:
        raise InputError(f"{name} is empty.")
    _check_cell_sizes(raw, positions)
    layout = apply_override(detect(_sample(raw, positions), positions), product_column, url_column)
    used = {layout.product, *layout.url_positions}
    extra_positions = [pos for pos in positions if pos not in used][:MAX_EXTRA_COLUMNS]
    data = _used_columns(raw, layout, extra_positions)
    del raw
    if len(data) > limit:
        raise _too_many(f"{len(data):,}", limit)
    if data.empty:
        raise InputError(f"{name} has a header row but no data rows.")
    source_rows = len(data)
    url_names = [f"url{offset}" for offset in range(len(layout.url_positions))]
    extra_names = [f"extra{offset}" for offset in range(len(extra_positions))]
    extras = None
    if extra_names:
        extras = data[extra_names].set_axis(
            [layout.names[pos] for pos in extra_positions], axis="columns"
        )
        data = data.drop(columns=extra_names)
    checked = check(data, url_names)
    del data
    if len(checked.frame) > limit:
        raise InputError(
            f"The input holds {len(checked.frame):,} image URLs; one job can take at most "
            f"{limit:,}. Split it into smaller jobs."
        )
    return ParsedInput(
        frame=checked.frame,
        rejected=checked.rejected,
        duplicates=checked.duplicates,
        columns=layout.columns,
        product_column=layout.names[layout.product],
        url_column=layout.url_label,
        url_columns=layout.url_columns,
        ambiguous=layout.ambiguous,
        source_rows=source_rows,
        header=layout.header_row is not None,
        extra_columns=[layout.names[pos] for pos in extra_positions],
        extras=extras,
    )


def _too_many(count: str, limit: int) -> InputError:
    return InputError(
        f"The input has {count} rows; one job can take at most {limit:,}. "
        "Split it into smaller jobs."
    )


def _filled_columns(raw: pd.DataFrame) -> list[int]:
    """Positions of columns holding anything but blanks (trailing empty columns drop out)."""
    filled = []
    for pos in raw.columns:
        column = raw[pos]
        nonempty = column[(column != "").to_numpy(dtype=bool)]
        # Nearly always the first non-empty cells already show text; blanks-only is rare.
        if (nonempty.iloc[:1000].str.strip(BLANKS) != "").any() or (
            len(nonempty) > 1000 and nonempty.str.contains(_NOT_BLANK).any()
        ):
            filled.append(int(pos))
    return filled


def _sample(raw: pd.DataFrame, positions: list[int]) -> pd.DataFrame:
    """The first non-blank rows, stripped, for detection."""
    start = 0
    step = SAMPLE_ROWS * 4
    while start < len(raw):
        chunk = _strip(raw.iloc[start : start + step][positions])
        chunk = chunk[(chunk != "").any(axis=1)]
        if not chunk.empty:
            rest = _strip(raw.iloc[start + step : start + step + SAMPLE_ROWS * 2][positions])
            rest = rest[(rest != "").any(axis=1)]
            return pd.concat([chunk, rest]).iloc[: SAMPLE_ROWS + 1]
        start += step
    return raw.iloc[0:0][positions]


def _check_cell_sizes(raw: pd.DataFrame, positions: list[int]) -> None:
    """Refuse a table with a giant cell (a runaway quote, a pasted file) in one line."""
    for pos in positions:
        lengths = raw[pos].str.len().to_numpy()
        where = int(lengths.argmax())
        if lengths[where] > MAX_CELL_CHARS:
            row = int(raw.index[where])
            raise InputError(
                f"Row {row} holds a cell of {int(lengths[where]):,} characters; a cell can hold "
                f"at most {MAX_CELL_CHARS:,}."
            )


def _strip(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.apply(lambda column: column.str.strip(BLANKS))


def _used_columns(
    raw: pd.DataFrame, layout: Layout, extra_positions: list[int] | None = None
) -> pd.DataFrame:
    """Product and URL columns of the data rows, stripped, blank rows dropped; and the
    `extra_positions` columns (stripped, cut to MAX_EXTRA_CHARS) as extra0, extra1 …"""
    body = raw
    if layout.header_row is not None:
        body = raw.iloc[int(raw.index.searchsorted(layout.header_row, side="right")) :]
    data = pd.DataFrame(
        {"product": body[layout.product].str.strip(BLANKS).array}
        | {
            f"url{offset}": body[pos].str.strip(BLANKS).array
            for offset, pos in enumerate(layout.url_positions)
        },
        index=body.index,
        copy=False,
    )
    filled = np.zeros(len(data), dtype=bool)
    for column in data.columns:
        filled |= (data[column] != "").to_numpy(dtype=bool)
    for offset, pos in enumerate(extra_positions or []):
        data[f"extra{offset}"] = body[pos].str.strip(BLANKS).str.slice(0, MAX_EXTRA_CHARS).array
    return data if filled.all() else data[filled]
