"""The whole-file check (structure.py) for the container formats: AVIF/HEIF (ISO boxes),
TIFF (image file directories, strips and tiles), BMP and JPEG XL.

- AVIF/HEIF: every top-level box inside the file; every item's data extent (iloc) inside the
  file; every declared size (ispe: grid tiles, outputs, auxiliary images) within the pixel limit
  (frames.py); colour channels (pixi), alpha (auxC), ICC profile (colr) and rotation (irot).
- TIFF: every page's directory, its size within the limit, and each strip's or tile's bytes
  inside the file; the first page's mode, ICC profile and orientation; the page count.
- BMP: the header's fields and the pixel rows inside the file.
- JPEG XL: a container's boxes inside the file. A bare codestream has no end marker: a cut one
  is only caught by decoding (VERIFY_IMAGES=full).
"""

from __future__ import annotations

import array
import struct
import sys

from downloader.fetch import metadata
from downloader.fetch.frames import Buffer, FrameWalk
from downloader.fetch.structure import Details, StructureError, corrupt, truncated


def check(fmt: str, buf: Buffer, walk: FrameWalk) -> Details:
    if fmt in ("avif", "heic"):
        return _iso(fmt, buf, walk)
    if fmt == "tif":
        return _tiff(buf, walk)
    if fmt == "bmp":
        return _bmp(buf, walk)
    if fmt == "jxl":
        return _jxl(buf, walk)
    raise StructureError("not_an_image", f"No structure check for {fmt}.")


# AVIF / HEIF ------------------------------------------------------------------------------------

_ALPHA_URNS = (b"urn:mpeg:mpegB:cicp:systems:auxiliary:alpha", b"urn:mpeg:hevc:2015:auxid:1")
_IROT_TO_EXIF = {0: 1, 1: 8, 2: 3, 3: 6}  # irot turns anticlockwise; EXIF says how to view


def _iso(fmt: str, buf: Buffer, walk: FrameWalk) -> Details:
    name = fmt.upper() if fmt == "avif" else "HEIF"
    end = len(buf)
    pos = 0
    meta: tuple[int, int] | None = None
    while pos < end:
        if pos + 8 > end:
            raise truncated(f"The {name} file ends inside a box header (the file is cut short).")
        size, kind = struct.unpack_from(">I4s", buf, pos)
        header = 8
        if size == 1:
            if pos + 16 > end:
                raise truncated(f"The {name} file ends inside a box header (cut short).")
            (size,) = struct.unpack_from(">Q", buf, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if size < header:
            raise corrupt(f"The {name} file has a box shorter than its own header.")
        if pos + size > end:
            raise truncated(
                f"The {name} file ends inside its '{_text(kind)}' box (the file is cut short)."
            )
        walk.step(name)
        if kind == b"meta" and meta is None:
            meta = (pos + header + 4, pos + size)
        pos += size
    if meta is None:
        raise corrupt(f"The {name} file has no image description (no 'meta' box).")
    walk.avif(buf)  # every declared size within the pixel limit
    details = Details(color_mode="RGB", has_alpha=False)
    for kind, start, stop in walk._boxes(buf, meta[0], meta[1], 1):
        if kind == b"iloc":
            _iloc(name, buf, start, stop, end)
        elif kind == b"pixi" and stop - start >= 5 and buf[start + 4] == 1:
            details.color_mode = "L"
        elif kind == b"auxC" and any(urn in bytes(buf[start:stop]) for urn in _ALPHA_URNS):
            details.has_alpha = True
        elif kind == b"colr" and buf[start : start + 4] in (b"prof", b"rICC"):
            details.icc_profile = metadata.icc_description(bytes(buf[start + 4 : stop]))
        elif kind == b"irot" and stop > start and details.orientation is None:
            details.orientation = _IROT_TO_EXIF[buf[start] & 3]
        elif kind == b"stsz" and stop - start >= 12:
            details.frames = max(1, struct.unpack_from(">I", buf, start + 8)[0])
    if details.has_alpha:
        details.color_mode = f"{details.color_mode}A"
    return details


def _iloc(name: str, buf: Buffer, start: int, stop: int, end: int) -> None:
    """Every item's extents (construction method 0: offsets in the file) inside the file."""
    try:
        version = buf[start]
        sizes = buf[start + 4] << 8 | buf[start + 5]
        offset_size, length_size = sizes >> 12, (sizes >> 8) & 15
        base_size, index_size = (sizes >> 4) & 15, sizes & 15 if version in (1, 2) else 0
        pos = start + 6
        count, pos = _uint(buf, pos, 2 if version < 2 else 4)
        for _ in range(count):
            _, pos = _uint(buf, pos, 2 if version < 2 else 4)  # item id
            method = 0
            if version in (1, 2):
                method_field, pos = _uint(buf, pos, 2)
                method = method_field & 15
            pos += 2  # data reference index
            base, pos = _uint(buf, pos, base_size)
            extents, pos = _uint(buf, pos, 2)
            for _ in range(extents):
                pos += index_size
                offset, pos = _uint(buf, pos, offset_size)
                length, pos = _uint(buf, pos, length_size)
                if method == 0 and base + offset + length > end:
                    raise truncated(
                        f"The {name} image's data lies past the end of the file (cut short)."
                    )
            if pos > stop:
                raise corrupt(f"The {name} file's item locations (iloc) are damaged.")
    except (IndexError, struct.error):
        raise corrupt(f"The {name} file's item locations (iloc) are damaged.") from None


def _uint(buf: Buffer, pos: int, size: int) -> tuple[int, int]:
    if size == 0:
        return 0, pos
    return int.from_bytes(buf[pos : pos + size], "big"), pos + size


def _text(kind: bytes) -> str:
    return kind.decode("latin-1") if kind.isalnum() else "unnamed"


# TIFF -------------------------------------------------------------------------------------------

_TIFF_TYPES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
_TIFF_TYPES |= {13: 4, 16: 8, 17: 8, 18: 8}
_TIFF_ARRAYS = {1: "B", 3: "H", 4: "I", 13: "I", 16: "Q"}
_TIFF_WANTED = {256, 257, 258, 259, 262, 273, 274, 277, 279, 324, 325, 338, 34675}
_TIFF_CUT = "The TIFF ends before its image data does (page {page}; the file is cut short)."


def _tiff(buf: Buffer, walk: FrameWalk) -> Details:
    end = len(buf)
    order = "<" if buf[:2] == b"II" else ">"
    big = struct.unpack_from(order + "H", buf, 2)[0] == 43
    if big:
        ifd = struct.unpack_from(order + "Q", buf, 8)[0]
    else:
        ifd = struct.unpack_from(order + "I", buf, 4)[0]
    details = Details()
    seen: set[int] = set()
    page = 0
    while ifd:
        if ifd in seen:
            raise corrupt("The TIFF's pages refer back to each other in a loop (invalid).")
        seen.add(ifd)
        page += 1
        walk.frame("TIFF")
        tags, ifd = _tiff_directory(buf, order, big, ifd, page, end, walk)
        width, height = _first(tags, 256), _first(tags, 257)
        if not width or not height:
            raise corrupt(f"The TIFF's page {page} declares no width or height.")
        walk.check(f"Page {page} of the TIFF", width, height)
        offsets = tags.get(273) or tags.get(324)
        counts = tags.get(279) or tags.get(325)
        if not offsets:
            raise corrupt(f"The TIFF's page {page} has no image data.")
        if counts is not None:
            if len(counts) != len(offsets):
                raise corrupt(f"The TIFF's page {page} has mismatched strip tables.")
            walk.step("TIFF", len(offsets))
            if max(map(int.__add__, offsets, counts)) > end:
                raise truncated(_TIFF_CUT.format(page=page))
        elif max(offsets) >= end:
            raise truncated(_TIFF_CUT.format(page=page))
        if page == 1:
            details.size = (width, height)
            _tiff_details(tags, details, buf)
    details.frames = page
    return details


def _tiff_directory(
    buf: Buffer, order: str, big: bool, ifd: int, page: int, end: int, walk: FrameWalk
) -> tuple[dict[int, array.array[int] | list[int]], int]:
    """The wanted tags of the directory at `ifd` and the next directory's offset."""
    count_size, entry_size, next_size = (8, 20, 8) if big else (2, 12, 4)
    if ifd + count_size > end:
        raise truncated(_TIFF_CUT.format(page=page))
    (count,) = struct.unpack_from(order + ("Q" if big else "H"), buf, ifd)
    table = ifd + count_size
    if table + count * entry_size + next_size > end:
        raise truncated(_TIFF_CUT.format(page=page))
    walk.step("TIFF", count)
    tags: dict[int, array.array[int] | list[int]] = {}
    value_size = 8 if big else 4
    for index in range(count):
        entry = table + index * entry_size
        tag, kind = struct.unpack_from(order + "HH", buf, entry)
        if tag not in _TIFF_WANTED:
            continue
        (number,) = struct.unpack_from(order + ("Q" if big else "I"), buf, entry + 4)
        item = _TIFF_TYPES.get(kind, 1)
        where = entry + (12 if big else 8)
        if number * item > value_size:
            (where,) = struct.unpack_from(order + ("Q" if big else "I"), buf, where)
        if where + number * item > end:
            raise truncated(_TIFF_CUT.format(page=page))
        if tag == 34675:  # the ICC profile's bytes, kept as one "value": its offset and size
            tags[tag] = [where, number]
        elif kind in _TIFF_ARRAYS:
            values = array.array(_TIFF_ARRAYS[kind])
            values.frombytes(buf[where : where + number * item])
            if (order == "<") != (sys.byteorder == "little"):
                values.byteswap()
            tags[tag] = values
    (next_ifd,) = struct.unpack_from(order + ("Q" if big else "I"), buf, table + count * entry_size)
    return tags, next_ifd


def _first(tags: dict[int, array.array[int] | list[int]], tag: int, default: int = 0) -> int:
    values = tags.get(tag)
    return int(values[0]) if values else default


def _tiff_details(
    tags: dict[int, array.array[int] | list[int]], details: Details, buf: Buffer
) -> None:
    photometric = _first(tags, 262, -1)
    bits = _first(tags, 258, 1)
    extra = tags.get(338)
    details.has_alpha = bool(extra) and any(value in (1, 2) for value in extra or ())
    base = {0: "L", 1: "L", 2: "RGB", 3: "P", 5: "CMYK", 6: "RGB", 8: "LAB"}.get(photometric)
    if base == "L" and bits == 1:
        base = "1"
    elif base == "L" and bits == 16:
        base = "I;16"
    elif base == "RGB" and bits == 16:
        base = "RGB;16"
    if base in ("L", "RGB") and details.has_alpha:
        base += "A"
    details.color_mode = base
    orientation = _first(tags, 274)
    details.orientation = orientation if 1 <= orientation <= 8 else None
    icc = tags.get(34675)
    if icc:
        details.icc_profile = metadata.icc_description(bytes(buf[icc[0] : icc[0] + icc[1]]))


# BMP --------------------------------------------------------------------------------------------

_BMP_HEADERS = (12, 16, 40, 52, 56, 64, 108, 124)


def _bmp(buf: Buffer, walk: FrameWalk) -> Details:
    end = len(buf)
    if end < 26:
        raise truncated("The BMP ends inside its header (the file is cut short).")
    offset, header = struct.unpack_from("<II", buf, 10)
    if header not in _BMP_HEADERS:
        raise corrupt(f"The BMP has an unknown header size ({header} bytes).")
    if 14 + header > end:
        raise truncated("The BMP ends inside its header (the file is cut short).")
    compression = image_bytes = 0
    masks = b""
    if header == 12:
        width, height, planes, bits = struct.unpack_from("<HHHH", buf, 18)
    else:
        width, height, planes, bits, compression, image_bytes = struct.unpack_from(
            "<iiHHII", buf, 18
        )
        masks = bytes(buf[54 : 14 + header]) if header >= 56 else b""
    height = abs(height)
    if width <= 0 or height == 0 or planes != 1:
        raise corrupt(f"The BMP declares a size of {width}x{height} pixels (invalid).")
    if bits not in (1, 2, 4, 8, 16, 24, 32) or compression > 6:
        raise corrupt(f"The BMP declares {bits} bits per pixel and compression {compression}.")
    walk.check("The BMP", width, height)
    if offset < 14 + header or offset > end:
        raise truncated("The BMP ends before its image data starts (the file is cut short).")
    if compression in (0, 3, 6):  # uncompressed rows
        need = offset + (width * bits + 31) // 32 * 4 * height
    else:
        need = offset + image_bytes
    if need > end:
        raise truncated("The BMP ends before its image data does (the file is cut short).")
    alpha = bits == 32 and len(masks) >= 16 and masks[12:16] != b"\0\0\0\0"
    mode = "P" if bits <= 8 else "RGBA" if alpha else "RGB"
    return Details(color_mode=mode, has_alpha=alpha, size=(width, height))


# JPEG XL ----------------------------------------------------------------------------------------


def _jxl(buf: Buffer, walk: FrameWalk) -> Details:
    if buf[:2] == b"\xff\x0a":
        return Details()  # a bare codestream: nothing to walk without decoding
    end = len(buf)
    pos = 0
    image = False
    while pos < end:
        if pos + 8 > end:
            raise truncated("The JPEG XL file ends inside a box header (the file is cut short).")
        size, kind = struct.unpack_from(">I4s", buf, pos)
        header = 8
        if size == 1 and pos + 16 <= end:
            (size,) = struct.unpack_from(">Q", buf, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if size < header:
            raise corrupt("The JPEG XL file has a box shorter than its own header.")
        if pos + size > end:
            raise truncated(
                f"The JPEG XL file ends inside its '{_text(kind)}' box (the file is cut short)."
            )
        walk.step("JPEG XL")
        image = image or kind in (b"jxlc", b"jxlp")
        pos += size
    if not image:
        raise corrupt("The JPEG XL file has no image data (no codestream box).")
    return Details()


_JXL_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}


def jxl_size(buf: Buffer) -> tuple[int, int]:
    """The size a JPEG XL codestream's SizeHeader declares (bare or in a jxlc/jxlp box), read
    without decoding: Pillow's JPEG XL plugin decodes the whole image when it opens it, so
    the pixel limit is checked against this first. (0, 0) when it cannot be read."""
    start = 0
    if buf[:2] != b"\xff\x0a":
        pos, end = 0, min(len(buf), 1 << 20)
        while pos + 8 <= end:
            size, kind = struct.unpack_from(">I4s", buf, pos)
            header = 16 if size == 1 else 8
            if kind in (b"jxlc", b"jxlp"):
                start = pos + header + (4 if kind == b"jxlp" else 0)
                break
            if size < header:
                return 0, 0
            pos += size if size else end
        else:
            return 0, 0
    data = bytes(buf[start : start + 16])
    if data[:2] != b"\xff\x0a" or len(data) < 12:
        return 0, 0
    bits = int.from_bytes(data[2:], "little")
    at = 0

    def read(count: int) -> int:
        nonlocal at
        value = (bits >> at) & ((1 << count) - 1)
        at += count
        return value

    def dimension(small: bool) -> int:
        if small:
            return (read(5) + 1) * 8
        return 1 + read((9, 13, 18, 30)[read(2)])

    small = bool(read(1))
    height = dimension(small)
    ratio = read(3)
    if ratio:
        num, den = _JXL_RATIOS[ratio]
        return height * num // den, height
    return dimension(small), height
