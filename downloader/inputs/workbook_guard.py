"""What reading an XLSX may cost, bounded before python-calamine or openpyxl see the file.

An XLSX is a zip of XML parts, and two kinds of small upload make a reader take memory
without bound:

* a zip bomb: a part (shared strings, a sheet) that inflates to gigabytes, or whose header
  states a small size for a big stream;
* a sparse sheet: one cell in A1 and one in XFD1048576 make calamine allocate the dense
  range between them (1,048,576 rows by 16,384 columns, about 550 GB). The allocation aborts the
  process, which no ``except`` can catch; openpyxl's rows get padded to the same width.

`check_package` inflates every part once, counting the bytes that really come out (never the
sizes the zip states), so everything a reader parses when it opens the workbook is bounded.
Every part, whatever its name: a reader finds a sheet through the workbook's relationships,
and a sheet stored as ``sheet1.bin`` is read all the same. `check_workbook` also reads where
the cells of every part are (``<c r="XFD1048576">``, ``<row r="…">``, once a ``sheetData``
starts) as the bytes stream past, without building anything, and refuses a sheet whose range
from A1 is wider than MAX_COLUMNS or holds more than MAX_CELLS cells.
"""

from __future__ import annotations

import io
import posixpath
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from xml.parsers import expat

from .decoding import display_name
from .model import InputError

MIB = 1 << 20
#: All parts together, inflated. A 1,000,000-row, two-column sheet is about 170 MiB of XML.
MAX_XML_BYTES = 512 * MIB
#: Widest sheet read: wide layouts (Image 1 … Image N) and store exports stay far below.
MAX_COLUMNS = 200
#: Cells in a sheet's range from A1 (a 1,000,000-row sheet with 20 columns). Both readers
#: hold the whole range: calamine about 32 bytes a cell, then the Python rows.
MAX_CELLS = 20_000_000
#: Parts in one workbook (a sheet, a style sheet, every image …): real workbooks hold dozens.
#: Both readers index every entry of the zip's directory before reading any.
MAX_PARTS = 10_000

_CHUNK = MIB
#: No real part goes a MiB without a ``>`` (a cell holds at most 32,767 characters).
_MAX_TAG_GAP = MIB
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, …, name length, extra field length
_LOCAL_SIGNATURE = b"PK\x03\x04"
_END_RECORD = struct.Struct("<4s6xH")  # signature, …, total number of entries
_END_SIGNATURE = b"PK\x05\x06"
_END_SEARCH = 22 + 65_535  # the record, then a comment of at most 64 KiB
# UTF-16 XML, with or without a byte order mark: its markup is not in ASCII bytes.
_WIDE_TEXT = (b"\xff\xfe", b"\xfe\xff", b"<\x00", b"\x00<")

# A <c> or <row> start tag with `r` as its first attribute, as Excel, LibreOffice, Google
# Sheets, openpyxl and XlsxWriter write it: the reference (``XFD9`` for a cell, ``9`` for a
# row). Any other <c> or <row> tag (no `r`, `r` after another attribute, other quotes, case
# or spacing, a namespace prefix: calamine matches local names) is irregular, and the part is
# read again by the exact parser below.
_POSITION = re.compile(rb'<(?:c|row) r="([A-Z]{0,3}[0-9]{1,10})"')
_IRREGULAR = (
    re.compile(rb'<(?:c|row)(?=[\s/>])(?! r="[A-Z]{0,3}[0-9]{1,10}")'),
    re.compile(rb"<[\w.-]+:(?:c|row)[\s/>]"),
)
_UPPER = bytes(range(ord("A"), ord("Z") + 1))
_DIGITS = b"0123456789"
_REFERENCE = re.compile(r"([A-Za-z]{0,3})([0-9]{1,10})")


@dataclass
class Extent:
    """The last row and column a sheet's cells reach (1-based; 0 = none yet)."""

    rows: int = 0
    columns: int = 0

    def add(self, row: int, column: int) -> None:
        self.rows = max(self.rows, row)
        self.columns = max(self.columns, column)

    @property
    def cells(self) -> int:
        return self.rows * max(self.columns, 1)

    def too_big(self) -> bool:
        return self.columns > MAX_COLUMNS or self.cells > MAX_CELLS


def check_package(data: bytes, filename: str) -> None:
    """Refuse a workbook whose parts inflate past MAX_XML_BYTES or past their stated size.

    Not a zip at all: nothing to check (the reader says the file is unreadable)."""
    _check(data, filename, read_sheets=False)


def check_workbook(data: bytes, filename: str) -> None:
    """`check_package`, and refuse a sheet whose range is beyond MAX_COLUMNS or MAX_CELLS."""
    _check(data, filename, read_sheets=True)


def _check(data: bytes, filename: str, *, read_sheets: bool) -> None:
    name = display_name(filename)
    if _stated_entries(data) > MAX_PARTS:
        raise _too_many_parts(name)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return
    with archive:
        parts = archive.infolist()
        if len(parts) > MAX_PARTS:  # a ZIP64 directory states its count elsewhere
            raise _too_many_parts(name)
        seen: set[str] = set()
        for info in parts:
            key = info.filename.lower()
            if key in seen:  # readers disagree on which copy counts
                raise _unreadable(name, f"two parts are named {info.filename}")
            seen.add(key)
        total = 0
        for info in parts:
            scan = _FastScan() if read_sheets else None
            for chunk in _inflate(data, info, name):
                total += len(chunk)
                if total > MAX_XML_BYTES:
                    raise _too_big(name)
                if scan is not None:
                    scan.feed(chunk, name)
                    if scan.extent.too_big():
                        raise _too_wide(archive, info.filename, scan.extent)
            if scan is not None and scan.irregular:
                extent = _exact_extent(data, info, name)
                if extent.too_big():
                    raise _too_wide(archive, info.filename, extent)


def _stated_entries(data: bytes) -> int:
    """The entry count the end-of-directory record states (0 when there is none), read before
    zipfile builds an object for every entry."""
    at = data.rfind(_END_SIGNATURE, max(0, len(data) - _END_SEARCH))
    if at < 0 or at + _END_RECORD.size > len(data):
        return 0
    return int(_END_RECORD.unpack_from(data, at)[1])


# --- inflating, counting what comes out --------------------------------------------------------


def _inflate(data: bytes, info: zipfile.ZipInfo, name: str) -> Iterator[bytes]:
    """The part's bytes as the readers get them, in chunks; refuses more than the header says.

    Inflated here from the stored stream (zipfile would stop at the stated size, calamine's
    zip reader does not)."""
    stated = info.file_size
    start = info.header_offset
    header = data[start : start + _LOCAL_HEADER.size]
    if len(header) < _LOCAL_HEADER.size:
        raise _unreadable(name, f"{info.filename} is cut short")
    signature, name_length, extra_length = _LOCAL_HEADER.unpack(header)
    if signature != _LOCAL_SIGNATURE:
        raise _unreadable(name, f"{info.filename} is cut short")
    begin = start + _LOCAL_HEADER.size + name_length + extra_length
    stream = memoryview(data)[begin : begin + info.compress_size]
    if info.compress_type == zipfile.ZIP_STORED:
        pieces: Iterator[bytes] = (
            bytes(stream[at : at + _CHUNK]) for at in range(0, len(stream), _CHUNK)
        )
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        pieces = _inflate_deflate(stream)
    else:
        raise _unreadable(name, f"{info.filename} is compressed in a way Excel does not use")
    count = 0
    first = True
    for piece in pieces:
        if first and piece.startswith(_WIDE_TEXT):
            raise _unreadable(name, f"{info.filename} is XML in UTF-16, not UTF-8")
        first = False
        count += len(piece)
        if count > stated:
            raise _unreadable(
                name, f"{info.filename} unpacks to more than the {stated:,} bytes its header states"
            )
        yield piece


def _inflate_deflate(stream: memoryview) -> Iterator[bytes]:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    position = 0
    while not inflater.eof:
        if inflater.unconsumed_tail:
            piece = inflater.decompress(inflater.unconsumed_tail, _CHUNK)
        elif position < len(stream):
            piece = inflater.decompress(stream[position : position + _CHUNK], _CHUNK)
            position += _CHUNK
        else:
            return  # a stream cut short: the readers say the file is damaged
        if piece:
            yield piece


# --- where the cells are ---------------------------------------------------------------------


@dataclass
class _FastScan:
    """Cell positions from the bytes of a part, once its ``sheetData`` starts (calamine reads
    cells from there on). ``irregular``: a <c> or <row> tag is not in the usual spelling."""

    extent: Extent = field(default_factory=Extent)
    irregular: bool = False
    started: bool = False
    carry: bytes = b""

    def feed(self, chunk: bytes, name: str) -> None:
        text = self.carry + chunk if self.carry else chunk
        if not self.started:
            at = text.find(b"sheetData")
            if at < 0:
                self.carry = text[-16:]
                return
            self.started, text = True, text[at:]
        cut = text.rfind(b">") + 1  # tags are whole up to the last '>'
        if not cut:
            if len(text) > _MAX_TAG_GAP:
                raise _unreadable(
                    name,
                    "a sheet holds more than 1 MiB of text in one stretch (an Excel cell holds "
                    "at most 32,767 characters)",
                )
            self.carry = text
            return
        self.carry = text[cut:]
        if not self.irregular:
            self.irregular = any(tag.search(text, 0, cut) for tag in _IRREGULAR)
        # Joined once, the references split into rows and columns at C speed.
        references = b" ".join(_POSITION.findall(text, 0, cut))
        rows = max(map(int, references.translate(None, _UPPER).split()), default=0)
        columns = max(map(_column, set(references.translate(None, _DIGITS).split())), default=0)
        self.extent.add(rows, columns)


def _column(letters: bytes) -> int:
    """1-based column number of upper-case letters (A = 1, XFD = 16,384; none = 0)."""
    number = 0
    for code in letters:
        number = number * 26 + code - 64
    return number


def _exact_extent(data: bytes, info: zipfile.ZipInfo, name: str) -> Extent:
    """Where the cells are, placed the way calamine places them: a cell without ``r`` follows
    the one before it in its row, a row without ``r`` follows the row before it."""
    extent = Extent()
    row, column = 1, 1

    def start(tag: str, attributes: dict[str, str]) -> None:
        nonlocal row, column
        local = tag.rpartition(":")[2]
        reference = attributes.get("r")
        if local == "row" and reference is not None:
            row = _position(reference, name)[0] or row
        elif local == "c":
            if reference is None:
                extent.add(row, column)
            else:
                at_row, column = _position(reference, name)
                extent.add(at_row, column)
            column += 1

    def end(tag: str) -> None:
        nonlocal row, column
        if tag.rpartition(":")[2] == "row":
            row, column = row + 1, 1

    def no_doctype(*_: object) -> None:
        raise _unreadable(name, "a part declares a document type")

    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.StartDoctypeDeclHandler = no_doctype
    try:
        for chunk in _inflate(data, info, name):
            parser.Parse(chunk, False)
            if extent.too_big():
                return extent
        parser.Parse(b"", True)
    except expat.ExpatError:
        raise _unreadable(name, f"{info.filename} is not well-formed XML") from None
    return extent


def _position(reference: str, name: str) -> tuple[int, int]:
    """(row, column) of a reference such as ``XFD9`` (column 0 for a row's bare number)."""
    match = _REFERENCE.fullmatch(reference.strip())
    if match is None:
        raise _unreadable(name, f"a cell is at {reference[:20]!r}, which is not a cell position")
    return int(match.group(2)), _column(match.group(1).upper().encode("ascii"))


# --- messages ----------------------------------------------------------------------------------


def _unreadable(name: str, reason: str) -> InputError:
    return InputError(f"{name} is not a readable .xlsx workbook: {reason}.")


def _too_many_parts(name: str) -> InputError:
    return InputError(
        f"{name} holds more than {MAX_PARTS:,} parts; a workbook of that many cannot be read. "
        "Copy the table into a new workbook."
    )


def _too_big(name: str) -> InputError:
    limit = MAX_XML_BYTES // MIB
    return InputError(
        f"{name} unpacks to more than {limit} MiB; at most {limit} MiB of a workbook's XML "
        "can be read. Keep only the table you need in the workbook, or split it into "
        "smaller files."
    )


def _too_wide(archive: zipfile.ZipFile, part: str, extent: Extent) -> InputError:
    corner = f"{_letters(max(extent.columns, 1))}{max(extent.rows, 1)}"
    return InputError(
        f"{_sheet_label(archive, part)} spans A1:{corner} ({extent.rows:,} rows, "
        f"{extent.columns:,} columns); at most {MAX_COLUMNS} columns and {MAX_CELLS:,} cells "
        "can be read. Delete the stray cells far from your table, or copy the table into a "
        "new sheet."
    )


def _letters(column: int) -> str:
    letters = ""
    while column:
        column, rest = divmod(column - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def _sheet_label(archive: zipfile.ZipFile, part: str) -> str:
    """``Sheet 'Name'`` for the worksheet stored in ``part`` (resolved as calamine does), or
    the part's name when the workbook does not say."""
    try:
        links = _start_tags(_small_part(archive, "xl/_rels/workbook.xml.rels"))
        targets = {attrs.get("Id"): attrs.get("Target", "") for tag, attrs in links}
        for tag, attrs in _start_tags(_small_part(archive, "xl/workbook.xml")):
            ids = [value for key, value in attrs.items() if key.endswith(":id")]
            target = targets.get(ids[0]) if tag == "sheet" and ids else None
            if target and _resolve(target) == part.lower():
                return f"Sheet {attrs.get('name', '')!r}"
    except (expat.ExpatError, InputError, ValueError, StopIteration):
        pass
    return f"The sheet in {part}"


def _start_tags(xml: bytes) -> list[tuple[str, dict[str, str]]]:
    """(local name, attributes) of every element of a small part; no document type allowed."""
    tags: list[tuple[str, dict[str, str]]] = []

    def no_doctype(*_: object) -> None:
        raise ValueError("a document type")

    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = lambda tag, attrs: tags.append((tag.rpartition(":")[2], attrs))
    parser.StartDoctypeDeclHandler = no_doctype
    parser.Parse(xml, True)
    return tags


def _small_part(archive: zipfile.ZipFile, path: str) -> bytes:
    info = next(i for i in archive.infolist() if i.filename.lower() == path)
    if info.file_size > 16 * MIB:
        raise ValueError("too big to name sheets from")
    return archive.read(info)


def _resolve(target: str) -> str:
    target = target.replace("\\", "/")
    if target.startswith("/"):
        path = target[1:]
    elif target.lower().startswith("xl/"):
        path = target
    else:
        path = posixpath.join("xl", target)
    return posixpath.normpath(path).lower()
