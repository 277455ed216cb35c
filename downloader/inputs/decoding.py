"""Bytes to text: what kind of file this is, and which encoding its text is in.

Text files are decoded by their byte-order mark when they have one (UTF-8, UTF-16 as Excel's
"Unicode text" writes it, UTF-32), else as UTF-8 when they are valid UTF-8, else as cp1252
(Excel's "CSV" on Windows). Bytes that are no text at all are refused with an InputError.
"""

from __future__ import annotations

import codecs
import re
from pathlib import PurePath
from typing import Literal

from .model import InputError

ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"
CFB_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # OLE2 compound file: encrypted .xlsx, old .xls
WORKBOOK_SUFFIXES = frozenset({".xlsx", ".xlsm", ".xls"})

_SNIFF_BYTES = 65_536
# Control characters that never occur in a real text table (tab, CR, LF and FF are fine).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_MAX_CONTROL_SHARE = 0.01

FileKind = Literal["xlsx", "text"]


def display_name(filename: str) -> str:
    """The base name of an uploaded file, for messages."""
    return PurePath(filename.replace("\\", "/")).name or "The input"


def sniff_kind(data: bytes, filename: str) -> FileKind:
    """Tell a workbook from a text table by the bytes (a CSV saved as .xlsx or .xls, as some
    web exports do, is read as the text it is)."""
    name = display_name(filename)
    if not data:
        raise InputError(f"{name} is empty.")
    if data.startswith((ZIP_MAGIC, EMPTY_ZIP_MAGIC)):
        return "xlsx"
    if data.startswith(CFB_MAGIC):
        raise InputError(
            f"{name} is a password-protected workbook or an old .xls file: open it in Excel "
            "and save it as .xlsx without a password."
        )
    return "text"


def to_utf8(data: bytes, filename: str) -> bytes:
    """The text of a table file as UTF-8 bytes (no BOM); raise InputError for non-text."""
    name = display_name(filename)
    for bom, encoding in (
        (codecs.BOM_UTF32_LE, "utf-32-le"),
        (codecs.BOM_UTF32_BE, "utf-32-be"),
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
    ):
        if data.startswith(bom):
            body = data[len(bom) :]
            if encoding == "utf-8" and _is_utf8(body):
                return _checked(body, body[:_SNIFF_BYTES].decode("utf-8", "ignore"), name)
            text = body.decode(encoding, errors="replace")
            return _checked(text.encode("utf-8"), text[:_SNIFF_BYTES], name)
    utf16 = _utf16_without_bom(data[:_SNIFF_BYTES])
    if utf16 is not None:
        text = data.decode(utf16, errors="replace")
        return _checked(text.encode("utf-8"), text[:_SNIFF_BYTES], name)
    if b"\x00" in data[:_SNIFF_BYTES]:
        raise _not_text(name)
    if _is_utf8(data):
        return _checked(data, data[:_SNIFF_BYTES].decode("utf-8", "ignore"), name)
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        # cp1252 leaves five bytes undefined; latin-1 maps every byte, so the table still reads.
        text = data.decode("latin-1")
    return _checked(text.encode("utf-8"), text[:_SNIFF_BYTES], name)


def text_to_utf8(text: str) -> bytes:
    """Pasted text as UTF-8 bytes, without a leading byte-order mark."""
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.encode("utf-8", errors="replace")


def _is_utf8(data: bytes) -> bool:
    """Whether the bytes are valid UTF-8, checked in slices (no full-size copy)."""
    if data.isascii():
        return True
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(data)
    step = 1 << 20
    try:
        for start in range(0, len(view), step):
            decoder.decode(view[start : start + step])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _checked(utf8: bytes, sample: str, name: str) -> bytes:
    if _looks_binary(sample):
        raise _not_text(name)
    return utf8


def _utf16_without_bom(sample: bytes) -> str | None:
    """UTF-16 text of mostly ASCII has a NUL in every other byte; say which order, if so."""
    if len(sample) < 4:
        return None
    even = sample[0::2]
    odd = sample[1::2]
    even_nul = even.count(0) / len(even)
    odd_nul = odd.count(0) / len(odd)
    if odd_nul > 0.4 and even_nul < 0.05:
        return "utf-16-le"
    if even_nul > 0.4 and odd_nul < 0.05:
        return "utf-16-be"
    return None


def _looks_binary(sample: str) -> bool:
    if not sample:
        return False
    controls = len(_CONTROL.findall(sample))
    return controls > max(2, len(sample) * _MAX_CONTROL_SHARE)


def _not_text(name: str) -> InputError:
    if PurePath(name).suffix.lower() in WORKBOOK_SUFFIXES:
        return InputError(f"{name} is not a valid .xlsx workbook (the file is damaged).")
    return InputError(f"{name} is neither a text table (CSV, TSV) nor an Excel workbook (.xlsx).")
