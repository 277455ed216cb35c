"""The whole-file check: an image's structure walked to its end without decoding a pixel.

A file cut short or damaged on its way (an origin upload that broke off, then cached with a
matching Content-Length) has a correct header and a correct size: only walking its structure
to the end shows it is not whole. `check_structure` does that for every accepted format and
reads, on the way, what a catalogue manager wants to know about the image (`Details`):

- JPEG: every marker segment up to the first scan (frame header: width, components; ICC
  profile; EXIF; an MPO's index, whose further images must lie inside the file), then the end
  marker after the scan data (searched from the end: scan data cannot hold one).
- PNG: every chunk and its CRC to IEND; IHDR's fields (compression and filter method 0, a bit
  depth valid for the colour type, no zero width or height); IDAT contiguous; an APNG's frame
  controls consistent (count, sequence numbers, each frame inside the canvas); compressed text
  and ICC chunks inflated within fixed bounds (metadata.MAX_CHUNK_INFLATED) or refused.
- GIF: every block to the trailer, every frame's size (frames.py); WebP: the RIFF size and
  every chunk inside it; JPEG: structure_jpeg.py; AVIF/HEIF, TIFF, BMP and JPEG XL:
  structure_more.py.

Failures are `truncated_image` (the file ends before its structure does) or `corrupt_image`
(a field or checksum that is wrong), each with one plain sentence; bombs by declaration stay
`decompression_bomb`. The work is linear in the file's size and bounded by frames.MAX_STEPS.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from zlib_ng import zlib_ng

from downloader.fetch import metadata
from downloader.fetch.frames import Buffer, FrameError, FrameWalk


@dataclass(slots=True)
class Details:
    """What the walk learned beside the size (None: not known for this file)."""

    color_mode: str | None = None  # Pillow's names: RGB, RGBA, CMYK, L, LA, P, I;16 ...
    has_alpha: bool | None = None
    frames: int = 1  # animation frames, TIFF pages, MPO images
    icc_profile: str | None = None  # the embedded ICC profile's description
    orientation: int | None = None  # EXIF orientation 1-8 (width/height stay as stored)
    size: tuple[int, int] | None = None  # the size a decoder produces, when the walk knows it
    dhash: int | None = None  # perceptual hash, when the image was decoded (verify.py)


class StructureError(FrameError):
    """The file is not whole (`truncated_image`), not valid (`corrupt_image`) or a bomb."""


def truncated(message: str) -> StructureError:
    return StructureError("truncated_image", message)


def corrupt(message: str) -> StructureError:
    return StructureError("corrupt_image", message)


def check_structure(fmt: str, buf: Buffer, width: int, height: int, limit: int) -> Details:
    """Walk the whole file of format `fmt` (header size `width` x `height`). Raises
    StructureError / FrameError."""
    from downloader.fetch import structure_jpeg, structure_more

    walk = FrameWalk(limit)
    if fmt == "jpg":
        return structure_jpeg.check(buf, walk)
    if fmt == "png":
        return _png(buf, walk, width, height)
    if fmt == "gif":
        return _gif(buf, walk, width, height)
    if fmt == "webp":
        return _webp(buf, walk)
    return structure_more.check(fmt, buf, walk)


# PNG / APNG -------------------------------------------------------------------------------------

_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_PNG_MODES = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}
_PNG_KNOWN_CRITICAL = {b"IHDR", b"PLTE", b"IDAT", b"IEND"}


class _PngState:
    __slots__ = ("controls", "frame_open", "frames_declared", "inflated", "sequence")

    def __init__(self) -> None:
        self.frames_declared = 0  # acTL's count (0: a still PNG)
        self.controls = 0  # fcTL chunks seen
        self.sequence = 0  # the next APNG sequence number expected
        self.frame_open = False  # an fcTL after IDAT still waiting for its fdAT
        self.inflated = 0  # metadata bytes inflated so far


def _png(buf: Buffer, walk: FrameWalk, width: int, height: int) -> Details:
    end = len(buf)
    details = Details()
    state = _PngState()
    pos = 8
    idat = "before"  # before, in, after (IDAT chunks must be consecutive)
    colour = 0
    with memoryview(buf) as view:
        while True:
            if pos + 12 > end:
                raise truncated(
                    "The PNG ends before its image data does (the file is cut short)."
                    if idat == "before"
                    else "The PNG ends before its end chunk (IEND): the file is cut short."
                )
            length, kind = struct.unpack_from(">I4s", buf, pos)
            data_end = pos + 8 + length
            if length > 0x7FFFFFFF or data_end + 4 > end:
                raise truncated(
                    f"The PNG ends inside its {_name(kind)} chunk (the file is cut short)."
                )
            walk.step("PNG")
            (crc,) = struct.unpack_from(">I", buf, data_end)
            if zlib_ng.crc32(view[pos + 4 : data_end]) != crc:
                raise corrupt(
                    f"The PNG's {_name(kind)} chunk is damaged (its checksum does not match)."
                )
            # A copy of the payload (never a view: a view held by an exception's traceback
            # would keep a memory-mapped file from closing); IDAT's is not needed.
            data = b"" if kind == b"IDAT" else bytes(view[pos + 8 : data_end])
            if pos == 8:
                if kind != b"IHDR" or length != 13:
                    raise corrupt("The PNG does not start with its header chunk (IHDR).")
                colour = _png_header(data, details)
            elif kind == b"IDAT":
                if idat == "after":
                    raise corrupt("The PNG's image data is split by other chunks (invalid).")
                if colour == 3 and details.color_mode != "P+":
                    raise corrupt("The PNG uses a palette but has none before its image data.")
                idat = "in"
            elif kind == b"IEND":
                break
            else:
                if idat == "in":
                    idat = "after"
                _png_chunk(kind, data, details, state, walk, (width, height), idat == "before")
            pos = data_end + 4
    if idat == "before":
        raise corrupt("The PNG has no image data (no IDAT chunk).")
    if details.color_mode == "P+":
        details.color_mode = "P"
    _png_frames_done(state, details)
    return details


def _name(kind: bytes) -> str:
    return kind.decode("latin-1") if kind.isalpha() else "unnamed"


def _png_header(data: bytes, details: Details) -> int:
    width, height, depth, colour, compression, filtering, interlace = struct.unpack_from(
        ">IIBBBBB", data
    )
    if not width or not height:
        raise corrupt(f"The PNG declares a size of {width}x{height} pixels (no image).")
    if depth not in _PNG_DEPTHS.get(colour, ()):
        raise corrupt(f"The PNG declares bit depth {depth} for colour type {colour} (invalid).")
    if compression or filtering or interlace > 1:
        raise corrupt(
            f"The PNG declares compression method {compression}, filter method {filtering} "
            f"and interlace method {interlace}; only 0, 0 and 0 or 1 exist."
        )
    details.color_mode = "I;16" if colour == 0 and depth == 16 else _PNG_MODES[colour]
    details.has_alpha = colour in (4, 6)
    return int(colour)


def _png_chunk(
    kind: bytes,
    data: bytes,
    details: Details,
    state: _PngState,
    walk: FrameWalk,
    canvas: tuple[int, int],
    before_idat: bool,
) -> None:
    """One ancillary (or APNG) chunk between IHDR and IEND."""
    if kind == b"PLTE":
        if details.color_mode == "P":
            details.color_mode = "P+"  # marks the palette as seen; reported as P
    elif kind == b"tRNS":
        details.has_alpha = True
    elif kind in (b"zTXt", b"iCCP"):
        name_end = bytes(data[:80]).find(b"\0")
        if name_end > 0:
            inflated = _png_inflate(kind, data[name_end + 2 :], state)
            if kind == b"iCCP" and inflated is not None:
                details.icc_profile = metadata.icc_description(inflated)
    elif kind == b"iTXt":
        head = bytes(data[:2048])
        name_end = head.find(b"\0")
        if name_end > 0 and head[name_end + 1 : name_end + 2] == b"\x01":  # compressed
            lang_end = head.find(b"\0", name_end + 3)
            text_start = head.find(b"\0", lang_end + 1) + 1 if lang_end > 0 else 0
            if text_start > 0:
                _png_inflate(kind, data[text_start:], state)
    elif kind == b"eXIf":
        details.orientation = metadata.exif_orientation(data)
    elif kind == b"acTL":
        if not before_idat or len(data) < 8:
            raise corrupt("The APNG's animation control chunk (acTL) is misplaced.")
        (state.frames_declared,) = struct.unpack_from(">I", data)
        if state.frames_declared == 0:
            raise corrupt("The APNG declares an animation of 0 frames (invalid).")
    elif kind == b"fcTL":
        _png_frame_control(data, details, state, walk, canvas, before_idat)
    elif kind == b"fdAT":
        if not state.frames_declared or len(data) < 4:
            raise corrupt("The APNG has frame data (fdAT) without an animation control chunk.")
        _png_sequence(data, state)
        state.frame_open = False
    elif kind[0] & 0x20 == 0 and kind not in _PNG_KNOWN_CRITICAL:
        raise corrupt(f"The PNG has a critical chunk {_name(kind)} that no decoder knows.")


def _png_frame_control(
    data: bytes,
    details: Details,
    state: _PngState,
    walk: FrameWalk,
    canvas: tuple[int, int],
    before_idat: bool,
) -> None:
    if not state.frames_declared or len(data) < 26:
        raise corrupt("The APNG has a frame control (fcTL) without an animation control chunk.")
    if state.frame_open:
        raise corrupt("The APNG has a frame control (fcTL) whose frame has no data.")
    _png_sequence(data, state)
    frame_w, frame_h, left, top = struct.unpack_from(">IIII", data, 4)
    dispose, blend = data[24], data[25]
    if not frame_w or not frame_h or dispose > 2 or blend > 1:
        raise corrupt("The APNG has a frame control (fcTL) with invalid fields.")
    walk.frame("PNG")
    walk.inside("PNG", canvas, (frame_w, frame_h), (left, top))
    if before_idat and (left, top, frame_w, frame_h) != (0, 0, *canvas):
        raise corrupt("The APNG's first frame does not cover its canvas (invalid).")
    state.controls += 1
    state.frame_open = not before_idat


def _png_sequence(data: bytes, state: _PngState) -> None:
    (number,) = struct.unpack_from(">I", data)
    if number != state.sequence:
        raise corrupt(
            f"The APNG's frame chunks are out of order (sequence number {number}, "
            f"expected {state.sequence})."
        )
    state.sequence += 1


def _png_frames_done(state: _PngState, details: Details) -> None:
    if not state.frames_declared:
        return
    if state.frame_open:
        raise corrupt("The APNG's last frame control (fcTL) has no frame data.")
    if state.controls != state.frames_declared:
        raise corrupt(
            f"The APNG declares {state.frames_declared} frames but has "
            f"{state.controls} frame controls (fcTL)."
        )
    details.frames = state.frames_declared


def _png_inflate(kind: bytes, compressed: bytes, state: _PngState) -> bytes | None:
    """A compressed metadata chunk inflated within its bound; a bomb is refused."""
    limit = min(metadata.MAX_CHUNK_INFLATED, metadata.MAX_METADATA_INFLATED - state.inflated)
    try:
        inflated = metadata.inflate_bounded(compressed, limit)
    except metadata.InflateBomb:
        raise StructureError(
            "decompression_bomb",
            f"The PNG's {_name(kind)} chunk inflates to more than {limit:,} bytes "
            "(a decompression bomb).",
        ) from None
    state.inflated += len(inflated or b"")
    return inflated


# GIF --------------------------------------------------------------------------------------------


def _gif(buf: Buffer, walk: FrameWalk, width: int, height: int) -> Details:
    size = walk.gif(buf, width, height)
    if not walk.ended:
        raise truncated("The GIF ends before its last block does (the file is cut short).")
    if not walk.frames:
        raise corrupt("The GIF has no image in it.")
    return Details("P", walk.transparent, walk.frames, size=size)


# WebP -------------------------------------------------------------------------------------------


def _webp(buf: Buffer, walk: FrameWalk) -> Details:
    end = len(buf)
    (declared,) = struct.unpack_from("<I", buf, 4)
    if declared + 8 > end:
        raise truncated("The WebP ends before its declared size (the file is cut short).")
    if declared < 12:
        raise corrupt("The WebP declares an invalid size.")
    stop = declared + 8
    walk.webp(buf[:stop] if stop < end else buf)  # every bitstream and frame against the canvas
    details = Details(color_mode="RGB", has_alpha=False)
    images = frames = 0
    pos = 12
    while pos < stop:
        if pos + 8 > stop:
            raise truncated("The WebP ends inside a chunk header (the file is cut short).")
        kind, size = struct.unpack_from("<4sI", buf, pos)
        start = pos + 8
        if start + size > stop:
            raise truncated(f"The WebP ends inside its {_name(kind)} chunk (cut short).")
        if kind == b"VP8X" and size >= 10:
            details.has_alpha = bool(buf[start] & 0x10)
        elif kind == b"VP8L" and size >= 5:
            details.has_alpha = details.has_alpha or bool(buf[start + 4] & 0x10)
            images += 1
        elif kind in (b"VP8 ", b"ALPH"):
            details.has_alpha = details.has_alpha or kind == b"ALPH"
            images += kind == b"VP8 "
        elif kind == b"ANMF":
            frames += 1
        elif kind == b"ICCP":
            details.icc_profile = metadata.icc_description(bytes(buf[start : start + size]))
        elif kind == b"EXIF":
            details.orientation = metadata.exif_orientation(buf[start : start + size])
        pos = start + size + (size & 1)
    if not images and not frames:
        raise corrupt("The WebP has no image data (no VP8/VP8L bitstream or frame).")
    if details.has_alpha:
        details.color_mode = "RGBA"
    details.frames = frames or 1
    return details
