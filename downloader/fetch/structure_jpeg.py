"""The whole-file check (structure.py) for JPEG (incl. progressive, CMYK and MPO).

Every marker segment up to the first scan is walked (the frame header's width and colour
components, the ICC profile split over APP2 segments, the EXIF orientation, an MPO's index),
then the end marker is looked for after the scan data.
"""

from __future__ import annotations

import struct

from downloader.fetch import metadata
from downloader.fetch.frames import Buffer, FrameWalk
from downloader.fetch.structure import Details, corrupt, truncated

# JPEG -------------------------------------------------------------------------------------------

_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG, DAC are not frames
_JPEG_MODES = {1: "L", 3: "RGB", 4: "CMYK"}
_JPEG_CUT = "The JPEG ends before its image data does (the file is cut short)."


def check(buf: Buffer, walk: FrameWalk) -> Details:
    end = len(buf)
    pos = 2
    details = Details()
    components = 0
    scans = 0
    icc_parts: list[tuple[int, bytes]] = []
    mpf: tuple[int, bytes] | None = None
    while True:
        if pos + 2 > end:
            raise truncated(_JPEG_CUT)
        if buf[pos] != 0xFF:
            # Stray bytes between segments: decoders (libjpeg, Pillow) skip them and read on.
            pos = buf.find(b"\xff", pos)
            if pos < 0:
                raise truncated(_JPEG_CUT)
            continue
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # EOI
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        if pos + 4 > end:
            raise truncated(_JPEG_CUT)
        (length,) = struct.unpack_from(">H", buf, pos + 2)
        if length < 2:
            raise corrupt("The JPEG has a marker segment shorter than its own length field.")
        start, stop = pos + 4, pos + 2 + length
        if stop > end:
            raise truncated(_JPEG_CUT)
        walk.step("JPEG")
        if marker in _JPEG_SOF:
            if length < 8:
                raise corrupt("The JPEG's frame header is too short (a damaged file).")
            _height, width, components = struct.unpack_from(">HHB", buf, start + 1)
            if width == 0 or components not in (1, 2, 3, 4):
                raise corrupt(
                    f"The JPEG's frame header declares a width of {width} and {components} "
                    "colour components (a damaged file)."
                )
            details.color_mode = _JPEG_MODES.get(components, "RGB")
        elif (
            marker == 0xE1 and details.orientation is None and buf[start : start + 6] == b"Exif\0\0"
        ):
            details.orientation = metadata.exif_orientation(buf[start:stop])
        elif marker == 0xE2 and buf[start : start + 12] == b"ICC_PROFILE\0" and length > 16:
            icc_parts.append((buf[start + 12], bytes(buf[start + 14 : stop])))
        elif marker == 0xE2 and buf[start : start + 4] == b"MPF\0" and mpf is None:
            mpf = (start + 4, bytes(buf[start + 4 : stop]))
        pos = stop
        if marker == 0xDA:  # the first scan: its data (and any further scans) run to EOI
            if not components:
                raise corrupt("The JPEG's image data comes before its frame header.")
            scans += 1
            # Entropy-coded data never holds FF D9 (a data byte FF is followed by 00, a
            # restart marker or fill), so the last FF D9 after the first scan is the end
            # marker: found from the end in a C search instead of walking every scan's data
            # (a Python step per FF byte cost ~1 us per KB). Bytes after it (padding, an
            # MPO's further images, appended junk) are not part of the image.
            if buf.rfind(b"\xff\xd9", pos) < 0:
                raise truncated(_JPEG_CUT)
            break
    if not scans:
        raise corrupt("The JPEG has no image data (no scan before its end marker).")
    details.has_alpha = False
    if icc_parts:
        profile = b"".join(part for _, part in sorted(icc_parts, key=lambda p: p[0]))
        details.icc_profile = metadata.icc_description(profile)
    if mpf is not None:
        details.frames = _mpo_images(buf, *mpf)
    return details


def _mpo_images(buf: Buffer, base: int, block: bytes) -> int:
    """The number of images an MPO's index lists; each must lie inside the file."""
    order = {b"II*\0": "<", b"MM\0*": ">"}.get(block[:4])
    if order is None:
        return 1
    try:
        (ifd,) = struct.unpack_from(order + "I", block, 4)
        (count,) = struct.unpack_from(order + "H", block, ifd)
        for index in range(min(count, 100)):
            tag, _, number, where = struct.unpack_from(order + "HHII", block, ifd + 2 + 12 * index)
            if tag != 0xB002:  # MP Entry: 16 bytes per image
                continue
            images = number // 16
            for entry in range(1, images):  # the first is this JPEG itself (offset 0)
                size, offset = struct.unpack_from(order + "II", block, where + 16 * entry + 4)
                if base + offset + size > len(buf):
                    raise truncated(
                        f"The MPO's image {entry + 1} lies past the end of the file (cut short)."
                    )
            return max(images, 1)
    except struct.error:
        return 1
    return 1
