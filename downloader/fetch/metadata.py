"""Small readers for what an image carries beside its pixels: the embedded ICC profile's
description, the EXIF orientation, and bounded inflation of compressed metadata.

Each reads only the bytes it is given and never more than a fixed amount of work: a profile
or EXIF block that is malformed yields None (a missing detail), never an exception, since
the image itself may be fine.
"""

from __future__ import annotations

import struct
import zlib

#: Most bytes one compressed metadata chunk (a PNG's zTXt/iTXt/iCCP, ...) may inflate to:
#: Pillow's own MAX_TEXT_CHUNK, past which Pillow refuses to read the chunk as well.
MAX_CHUNK_INFLATED = 1024 * 1024
#: Most bytes all of one file's compressed metadata may inflate to together.
MAX_METADATA_INFLATED = 16 * 1024 * 1024
#: Longest description kept (the database column holds 100 characters).
MAX_DESCRIPTION = 100


class InflateBomb(Exception):
    """Compressed metadata inflates past its bound (a decompression bomb)."""


def inflate_bounded(data: bytes | memoryview, limit: int) -> bytes | None:
    """`data` inflated (zlib), or None when the stream is damaged or cut.

    Raises InflateBomb when it would inflate past `limit` bytes: only limit + 1 bytes are
    ever produced, so the work is bounded whatever the stream declares."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        return None
    if len(out) > limit:
        raise InflateBomb
    if not inflater.eof:
        return None
    return out


def icc_description(profile: bytes | memoryview) -> str | None:
    """The 'desc' tag of an ICC profile (v2 textDescriptionType or v4 mluc), or None."""
    try:
        if len(profile) < 132:
            return None
        (count,) = struct.unpack_from(">I", profile, 128)
        for index in range(min(count, 100)):
            sig, offset, size = struct.unpack_from(">4sII", profile, 132 + 12 * index)
            if sig != b"desc" or offset + size > len(profile) or size < 12:
                continue
            tag = bytes(profile[offset : offset + size])
            if tag[:4] == b"desc":
                (length,) = struct.unpack_from(">I", tag, 8)
                text = tag[12 : 12 + min(length, size - 12)].split(b"\x00", 1)[0]
                return _clean(text.decode("latin-1"))
            if tag[:4] == b"mluc":
                records, record_size = struct.unpack_from(">II", tag, 8)
                if records < 1 or record_size < 12:
                    return None
                length, start = struct.unpack_from(">II", tag, 16 + 4)
                return _clean(tag[start : start + length].decode("utf-16-be", "replace"))
            return None
    except (struct.error, UnicodeDecodeError):
        return None
    return None


def _clean(text: str) -> str | None:
    text = "".join(ch for ch in text if ch.isprintable()).strip()
    return text[:MAX_DESCRIPTION] or None


def exif_orientation(exif: bytes | memoryview) -> int | None:
    """The Orientation tag (1-8) of an EXIF block (a TIFF header and its first IFD, with or
    without the leading 'Exif\\0\\0'), or None."""
    data = bytes(exif[:65536])  # IFD0 sits at the start; the tag is never further
    if data.startswith(b"Exif\x00\x00"):
        data = data[6:]
    if data[:4] == b"II*\x00":
        order = "<"
    elif data[:4] == b"MM\x00*":
        order = ">"
    else:
        return None
    try:
        (ifd,) = struct.unpack_from(order + "I", data, 4)
        (count,) = struct.unpack_from(order + "H", data, ifd)
        for index in range(min(count, 1000)):
            tag, kind, _, value = struct.unpack_from(order + "HHI4s", data, ifd + 2 + 12 * index)
            if tag == 0x0112 and kind == 3:  # SHORT, held in the first two value bytes
                (orientation,) = struct.unpack_from(order + "H", value)
                return orientation if 1 <= orientation <= 8 else None
    except struct.error:
        return None
    return None
