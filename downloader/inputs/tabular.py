"""Delimited text (UTF-8 bytes) to a raw table of strings.

The raw table is a DataFrame whose columns are the 0-based sheet column positions and whose
index is the row number as the person sees it (1-based; a quoted cell spanning several lines
is still one row, a blank line is a row). Cells are the text as written: nothing is stripped
or dropped here.

pyarrow's multi-threaded CSV reader does the work; rows of different lengths, or a cell too
big for its blocks, fall back to pandas' C parser, which copes with both.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
from pandas.errors import EmptyDataError, ParserError

from .model import InputError

DELIMITERS = ("\t", ",", ";")
#: pandas' default string dtype ("str"), backed by pyarrow.
STR_DTYPE = pd.StringDtype("pyarrow", na_value=float("nan"))

_SAMPLE_BYTES = 65_536
_SAMPLE_LINES = 200
_BLOCK_BYTES = 4 << 20
_MAX_COLUMNS = 16_384  # Excel's limit
_QUOTED = re.compile(r'"(?:[^"]|"")*"')
_URL_START = re.compile(r"(?i)(?:https?://|www\.)")
_EOF_IN_QUOTE = re.compile(r"EOF inside string starting (?:at|on) (?:row|line) (\d+)")


def detect_delimiter(sample: str) -> str:
    """Pick tab, comma or semicolon: the one splitting most lines the same way.

    Quoted sections are ignored. Ties go to the delimiter that leaves more cells starting
    with a URL, then to tab (what Excel and Google Sheets put on the clipboard), then comma.
    """
    sample = _QUOTED.sub('""', sample)
    lines = [line for line in sample.splitlines() if line.strip()][:_SAMPLE_LINES]
    best: tuple[float, int, int] | None = None
    chosen = "\t"
    for order, delimiter in enumerate(DELIMITERS):
        counts = [line.count(delimiter) for line in lines]
        nonzero = [count for count in counts if count]
        if not nonzero:
            continue
        mode = Counter(nonzero).most_common(1)[0][0]
        consistency = sum(1 for count in counts if count == mode) / len(counts)
        url_cells = sum(
            1
            for line in lines
            for cell in line.split(delimiter)
            if _URL_START.match(cell.strip().strip('"'))
        )
        score = (consistency, url_cells, -order)
        if best is None or score > best:
            best, chosen = score, delimiter
    return chosen


def read_text_table(data: bytes, *, row_cap: int | None = None) -> pd.DataFrame:
    """Parse delimited UTF-8 text into the raw table (see the module docstring).

    ``row_cap`` bounds how many rows are read; the caller learns that the input is longer
    when more than ``row_cap`` rows come back.
    """
    end = len(data)
    while end and data[end - 1] in b"\r\n":  # trailing blank lines are rows nobody sees
        end -= 1
    if not end or data.isspace():
        return _empty()
    view = memoryview(data)[:end]
    head = bytes(view[:_SAMPLE_BYTES]).decode("utf-8", errors="ignore")
    if end > _SAMPLE_BYTES and "\n" in head:
        head = head[: head.rindex("\n")]
    delimiter = detect_delimiter(head)
    nrows = None if row_cap is None else row_cap + 1
    # An odd number of quotes means one may never close: pyarrow would quietly read the rest
    # of the text into that cell, pandas says which row it opens on.
    balanced = data.count(b'"', 0, end) % 2 == 0
    try:
        if not balanced:
            raise pa.ArrowInvalid("unbalanced quotes")
        frame = _read_arrow(view, delimiter, nrows)
    except pa.ArrowInvalid:
        frame = _read_pandas(bytes(view), delimiter, nrows)
    frame.index = pd.RangeIndex(1, len(frame) + 1)
    frame.columns = pd.RangeIndex(frame.shape[1])
    return frame


def _read_arrow(data: memoryview, delimiter: str, nrows: int | None) -> pd.DataFrame:
    reader = pa_csv.open_csv(
        pa.BufferReader(pa.py_buffer(data)),
        read_options=pa_csv.ReadOptions(autogenerate_column_names=True, block_size=_BLOCK_BYTES),
        parse_options=pa_csv.ParseOptions(
            delimiter=delimiter, newlines_in_values=True, ignore_empty_lines=False
        ),
        convert_options=pa_csv.ConvertOptions(
            column_types={f"f{index}": pa.string() for index in range(_MAX_COLUMNS)},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    batches = []
    count = 0
    for batch in reader:
        batches.append(batch)
        count += batch.num_rows
        if nrows is not None and count >= nrows:
            break
    table = pa.Table.from_batches(batches, schema=reader.schema)
    if nrows is not None and table.num_rows > nrows:
        table = table.slice(0, nrows)
    if any(field.type != pa.string() for field in table.schema):  # past _MAX_COLUMNS
        table = table.cast(pa.schema([(field.name, pa.string()) for field in table.schema]))
    frame = table.to_pandas(types_mapper={pa.string(): STR_DTYPE}.get)
    return frame


def _read_pandas(data: bytes, delimiter: str, nrows: int | None) -> pd.DataFrame:
    try:
        return _read_csv(data, delimiter, nrows=nrows, width=None)
    except ParserError as exc:
        message = str(exc)
        quote = _EOF_IN_QUOTE.search(message)
        if quote:
            row = int(quote.group(1)) + 1
            raise InputError(
                f'Row {row} opens a quoted cell (") that is never closed; check the quotes '
                "in that row."
            ) from None
        if "Expected" in message and "fields" in message:
            # Rows of different lengths: read again with as many columns as the widest row.
            width = _widest_row(data, delimiter)
            return _read_csv(data, delimiter, nrows=nrows, width=width)
        raise InputError(f"The text could not be read as a table: {_first_line(message)}") from None


def _read_csv(data: bytes, delimiter: str, *, nrows: int | None, width: int | None) -> pd.DataFrame:
    try:
        return pd.read_csv(
            io.BytesIO(data),
            sep=delimiter,
            header=None,
            names=None if width is None else list(range(width)),
            dtype=str,
            na_filter=False,
            keep_default_na=False,
            skip_blank_lines=False,
            quotechar='"',
            doublequote=True,
            engine="c",
            encoding="utf-8",
            nrows=nrows,
        )
    except EmptyDataError:
        return _empty()


def _widest_row(data: bytes, delimiter: str) -> int:
    csv.field_size_limit(2**31 - 1)
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", newline="")
    try:
        return max((len(row) for row in csv.reader(text, delimiter=delimiter)), default=1)
    except csv.Error as exc:
        raise InputError(f"The text could not be read as a table: {exc}") from None


def _empty() -> pd.DataFrame:
    return pd.DataFrame(index=pd.RangeIndex(1, 1), columns=pd.RangeIndex(0), dtype=STR_DTYPE)


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "unknown error"
