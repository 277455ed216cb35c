"""Hostile XLSX files written by hand: a zip writer that states whatever sizes it is told, a
deflate stream of hundreds of MiB built in a moment, and the few XML parts a workbook needs.

Built by hand (not with openpyxl) so a test controls every byte the readers see: cell
references far away, cells without an `r` attribute, a part whose header lies about its size.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

MIB = 1 << 20

MAIN_NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
REL_NS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
PKG_REL_NS = "http://schemas.openxmlformats.org/package/2006/relationships"
CT_NS = "http://schemas.openxmlformats.org/package/2006/content-types"
XML_HEAD = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'


@dataclass
class Part:
    """One zip member as stored: its bytes (deflated or not) and the sizes its headers state."""

    name: str
    raw: bytes
    method: int  # 0 stored, 8 deflated
    crc: int
    size: int  # the uncompressed size written in the headers (a bomb can state less)


def deflated(name: str, data: bytes | str) -> Part:
    body = data.encode() if isinstance(data, str) else data
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    raw = packer.compress(body) + packer.flush()
    return Part(name, raw, 8, zlib.crc32(body), len(body))


def repeated(
    name: str, head: str, unit: str, total: int, tail: str, *, stated: int | None = None
) -> Part:
    """A deflated part of ``head + unit * k + tail`` about ``total`` bytes long, compressed
    once per unit block: after a full flush the compressor starts afresh, so every 1 MiB block
    compresses to the same bytes and the stream is built by repetition. ``stated`` overrides
    the size written in the headers (a lying header)."""
    block = (unit * (MIB // len(unit) + 1))[: (MIB // len(unit)) * len(unit)].encode()
    count = max(1, total // len(block))
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = packer.compress(head.encode()) + packer.flush(zlib.Z_FULL_FLUSH)
    segment = packer.compress(block) + packer.flush(zlib.Z_FULL_FLUSH)
    assert packer.compress(block) + packer.flush(zlib.Z_FULL_FLUSH) == segment
    last = packer.compress(tail.encode()) + packer.flush()
    crc = zlib.crc32(head.encode())
    for _ in range(count + 1):  # the segment checked above was fed twice
        crc = zlib.crc32(block, crc)
    crc = zlib.crc32(tail.encode(), crc)
    size = len(head.encode()) + len(block) * (count + 1) + len(tail.encode())
    raw = first + segment * (count + 1) + last
    return Part(name, raw, 8, crc, size if stated is None else stated)


def write_zip(parts: list[Part]) -> bytes:
    """A plain (non-ZIP64) zip archive of ``parts``, sizes as each part states them."""
    out = bytearray()
    central = bytearray()
    for part in parts:
        name = part.name.encode()
        offset = len(out)
        out += struct.pack(
            "<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, part.method, 0, 0x21,
            part.crc, len(part.raw), part.size, len(name), 0,
        )  # fmt: skip
        out += name + part.raw
        central += struct.pack(
            "<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, part.method, 0, 0x21,
            part.crc, len(part.raw), part.size, len(name), 0, 0, 0, 0, 0, offset,
        )  # fmt: skip
        central += name
    start = len(out)
    out += central
    out += struct.pack(
        "<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(parts), len(parts), len(central), start, 0
    )
    return bytes(out)


def sheet_xml(rows: str) -> str:
    """A worksheet part around the given ``<row>`` elements."""
    return f'{XML_HEAD}<worksheet xmlns="{MAIN_NS}"><sheetData>{rows}</sheetData></worksheet>'


def text_cell(ref: str, text: str) -> str:
    return f'<c r="{ref}" t="inlineStr"><is><t>{text}</t></is></c>'


def workbook(
    sheets: dict[str, str | Part],
    *,
    shared_strings: Part | None = None,
    extra: tuple[Part, ...] = (),
) -> bytes:
    """An XLSX with the given sheets (name -> worksheet XML, or a ready part), in order."""
    overrides = [
        '<Override PartName="/xl/workbook.xml" ContentType="application/'
        'vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
    ]
    entries, rels, parts = [], [], []
    for number, (name, sheet) in enumerate(sheets.items(), start=1):
        path = f"xl/worksheets/sheet{number}.xml"
        if isinstance(sheet, Part) and sheet.name.startswith("xl/worksheets/"):
            path = sheet.name  # a part stored under a name of its own
        overrides.append(
            f'<Override PartName="/{path}" ContentType="application/'
            'vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
        )
        entries.append(f'<sheet name={quoteattr(name)} sheetId="{number}" r:id="rId{number}"/>')
        rels.append(
            f'<Relationship Id="rId{number}" Type="{REL_NS}/worksheet" '
            f'Target="{path.removeprefix("xl/")}"/>'
        )
        if isinstance(sheet, Part):
            sheet.name = path
            parts.append(sheet)
        else:
            parts.append(deflated(path, sheet))
    if shared_strings is not None:
        shared_strings.name = "xl/sharedStrings.xml"
        parts.append(shared_strings)
        rels.append(
            f'<Relationship Id="rId{len(sheets) + 1}" Type="{REL_NS}/sharedStrings" '
            'Target="sharedStrings.xml"/>'
        )
        overrides.append(
            '<Override PartName="/xl/sharedStrings.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/>'
        )
    content_types = (
        f'{XML_HEAD}<Types xmlns="{CT_NS}">'
        '<Default Extension="rels" '
        'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>' + "".join(overrides) + "</Types>"
    )
    package_rels = (
        f'{XML_HEAD}<Relationships xmlns="{PKG_REL_NS}"><Relationship Id="rId1" '
        f'Type="{REL_NS}/officeDocument" Target="xl/workbook.xml"/></Relationships>'
    )
    book = (
        f'{XML_HEAD}<workbook xmlns="{MAIN_NS}" xmlns:r="{REL_NS}"><sheets>'
        + "".join(entries)
        + "</sheets></workbook>"
    )
    book_rels = f'{XML_HEAD}<Relationships xmlns="{PKG_REL_NS}">' + "".join(rels)
    book_rels += "</Relationships>"
    return write_zip(
        [
            deflated("[Content_Types].xml", content_types),
            deflated("_rels/.rels", package_rels),
            deflated("xl/workbook.xml", book),
            deflated("xl/_rels/workbook.xml.rels", book_rels),
            *parts,
            *extra,
        ]
    )


def sparse_workbook(far: str = "XFD1048576", sheet: str = "Sheet1") -> bytes:
    """A small table in A1:B2 and one stray cell at ``far`` (1.6 KB on disk)."""
    row = int("".join(ch for ch in far if ch.isdigit()))
    rows = (
        f'<row r="1">{text_cell("A1", "Product Number")}{text_cell("B1", "Image URL")}</row>'
        f'<row r="2">{text_cell("A2", "P1")}{text_cell("B2", "http://127.0.0.2/a.jpg")}</row>'
        f'<row r="{row}"><c r="{far}"><v>1</v></c></row>'
    )
    return workbook({sheet: sheet_xml(rows)})


def shared_strings_bomb(total: int, *, stated: int | None = None) -> Part:
    """sharedStrings.xml of about ``total`` bytes of 1,000-character strings."""
    head = f'{XML_HEAD}<sst xmlns="{MAIN_NS}">'
    unit = "<si><t>" + "x" * 1000 + "</t></si>"
    return repeated("xl/sharedStrings.xml", head, unit, total, "</sst>", stated=stated)
