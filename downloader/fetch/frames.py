"""Every frame's declared size, read from the file's structure without decoding any pixel.

The header's size alone can lie: a GIF's logical screen may say 1x1 while an image descriptor
inside says 12000x12000, and Pillow (like several browsers) grows the canvas to hold that
frame, so a 35-byte file became 144 million decoded pixels. `check_frames` walks each format's
container to its end (or to the end of the bytes at hand) and returns the size a decoder
produces, refusing what declares more than the pixel limit:

- GIF: the logical screen grown to every image descriptor's right and bottom edge (as Pillow
  grows it). Extension and image-data sub-blocks are skipped by their length bytes; stray
  bytes between blocks are skipped the way Pillow skips them, so no frame it would find is
  missed. A frame larger than the screen is accepted when the grown canvas is within the
  limit (real files do this and decoders show them), and its true size is the one recorded.
- PNG: when an acTL chunk comes before the image data (APNG), every fcTL frame must lie inside
  the IHDR canvas, as the APNG specification requires (Pillow refuses such files as well).
- WebP: the VP8X canvas, and each VP8/VP8L bitstream's own size: a still image's bitstream must
  fit the canvas, an ANMF frame must lie inside the canvas and its bitstream inside the frame.
- AVIF: every `ispe` (image spatial extent) property in the meta box, not only the primary
  item's: grid tiles, grid outputs and auxiliary images all declare their size there; and for
  an image sequence, each track's header and AV1 sample entry.

The walk is linear in the file's size and bounded: a file that needs more than MAX_FRAMES
frames or MAX_STEPS blocks (sub-blocks, chunks, boxes) to be checked is refused; real images
of the sizes we accept are far below both.
"""

from __future__ import annotations

import mmap
import re
import struct
from collections.abc import Iterator

#: Bytes the walkers read: a whole body in memory, or a memory map of its temp file.
Buffer = bytes | mmap.mmap

MAX_FRAMES = 100_000
#: Blocks looked at per file. A 50 MB GIF written with 255-byte sub-blocks (as encoders do)
#: has ~200,000; this bounds the work a file of 1-byte sub-blocks can cause.
MAX_STEPS = 1_000_000

_GIF_INTRODUCERS = re.compile(rb"[!,;]")  # extension, image descriptor, trailer
_WEBP_BITSTREAMS = (b"VP8 ", b"VP8L")
#: Boxes holding the boxes that declare sizes: image properties (meta/iprp/ipco) and, for image
#: sequences, the track header and sample description (moov/trak/.../stsd).
_ISO_CONTAINERS = {b"meta": 4, b"iprp": 0, b"ipco": 0, b"moov": 0, b"trak": 0, b"mdia": 0}
_ISO_CONTAINERS |= {b"minf": 0, b"stbl": 0, b"stsd": 8}  # value: bytes before the children


class FrameError(Exception):
    """A frame or canvas that cannot be accepted; `code` is decompression_bomb or not_an_image."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def check_frames(fmt: str, buf: Buffer, width: int, height: int, limit: int) -> tuple[int, int]:
    """The size to record for an image of format `fmt` whose header says `width` x `height`,
    after checking every frame it declares against the header and against `limit` pixels.

    Raises FrameError."""
    walk = _Walk(limit)
    if fmt == "gif":
        return walk.gif(buf, width, height)
    if fmt == "png":
        walk.png(buf, width, height)
    elif fmt == "webp":
        walk.webp(buf)
    elif fmt == "avif":
        walk.avif(buf)
    return width, height


def _bomb(what: str, width: int, height: int, limit: int) -> FrameError:
    return FrameError(
        "decompression_bomb",
        f"{what} declares {width}x{height} pixels, more than the {limit:,} allowed "
        "(a decompression bomb).",
    )


class _Walk:
    """One walk over one file: the pixel limit and the work done so far."""

    __slots__ = ("ended", "frames", "limit", "steps", "transparent")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.steps = 0
        self.frames = 0
        self.ended = False  # GIF: the trailer was reached, every block whole before it
        self.transparent = False  # GIF: a graphic control extension declares transparency

    def _step(self, fmt: str, count: int = 1) -> None:
        self.steps += count
        if self.steps > MAX_STEPS:
            raise FrameError(
                "decompression_bomb",
                f"The {fmt} file is split into more than {MAX_STEPS:,} blocks, too many to "
                "check safely.",
            )

    def _frame(self, fmt: str) -> None:
        self.frames += 1
        if self.frames > MAX_FRAMES:
            raise FrameError(
                "decompression_bomb",
                f"The {fmt} animation has more than {MAX_FRAMES:,} frames, too many to "
                "check safely.",
            )

    def _check(self, what: str, width: int, height: int) -> None:
        if width * height > self.limit:
            raise _bomb(what, width, height, self.limit)

    # GIF ------------------------------------------------------------------------------------

    def gif(self, buf: Buffer, width: int, height: int) -> tuple[int, int]:
        end = len(buf)
        if end < 13:
            return width, height
        screen_w, screen_h = struct.unpack_from("<HH", buf, 6)
        canvas_w, canvas_h = screen_w, screen_h
        pos = 13
        if buf[10] & 0x80:  # global colour table
            pos += 3 << ((buf[10] & 7) + 1)
        while pos < end:
            intro = buf[pos]
            if intro == 0x3B:  # trailer
                self.ended = True
                break
            if intro == 0x21:  # extension: introducer, label, sub-blocks
                if pos + 3 < end and buf[pos + 1] == 0xF9 and buf[pos + 3] & 1:
                    self.transparent = True  # graphic control: a transparent colour index
                pos = self._gif_sub_blocks(buf, pos + 2, end)
            elif intro == 0x2C:  # image descriptor
                if pos + 10 > end:
                    break
                left, top, frame_w, frame_h = struct.unpack_from("<HHHH", buf, pos + 1)
                flags = buf[pos + 9]
                self._frame("GIF")
                if frame_w and frame_h and (left + frame_w > canvas_w or top + frame_h > canvas_h):
                    canvas_w = max(canvas_w, left + frame_w)
                    canvas_h = max(canvas_h, top + frame_h)
                    if canvas_w * canvas_h > self.limit:
                        raise FrameError(
                            "decompression_bomb",
                            f"The GIF declares a {screen_w}x{screen_h} screen but a frame of "
                            f"{frame_w}x{frame_h} at ({left}, {top}): {canvas_w}x{canvas_h} "
                            f"pixels, more than the {self.limit:,} allowed (a decompression "
                            "bomb).",
                        )
                pos += 10
                if flags & 0x80:  # local colour table
                    pos += 3 << ((flags & 7) + 1)
                pos = self._gif_sub_blocks(buf, pos + 1, end)  # after the LZW code size
            else:
                # Pillow skips a byte it does not know and reads on, so a frame after junk
                # still gets decoded: look for the next block the same way.
                found = _GIF_INTRODUCERS.search(buf, pos + 1)
                if found is None:
                    break
                self._step("GIF")
                pos = found.start()
        return canvas_w, canvas_h

    def _gif_sub_blocks(self, buf: Buffer, pos: int, end: int) -> int:
        """The position after the sub-blocks starting at `pos` (each: a length byte, then
        that many bytes; a zero length ends them), or `end` + 1 when the file ends first."""
        steps = 0
        while pos < end:
            size = buf[pos]
            pos += 1 + size
            steps += 1
            if not size:
                break
        else:
            pos = end + 1  # no terminating zero-length block: cut short
        self._step("GIF", steps)
        return pos

    # PNG / APNG -----------------------------------------------------------------------------

    def png(self, buf: Buffer, width: int, height: int) -> None:
        end = len(buf)
        pos = 8
        animated = False
        while pos + 8 <= end:
            length, kind = struct.unpack_from(">I4s", buf, pos)
            self._step("PNG")
            if kind == b"acTL":
                animated = True
            elif kind == b"fcTL" and pos + 8 + 20 <= end:
                frame_w, frame_h, left, top = struct.unpack_from(">IIII", buf, pos + 12)
                self._frame("PNG")
                self._inside("PNG", (width, height), (frame_w, frame_h), (left, top))
            elif kind == b"IEND" or (kind == b"IDAT" and not animated):
                break  # a still PNG declares nothing after its image data starts
            pos += 12 + length

    def _inside(
        self, fmt: str, canvas: tuple[int, int], frame: tuple[int, int], at: tuple[int, int]
    ) -> None:
        """A frame of size `frame` at offset `at` must lie inside the canvas."""
        (canvas_w, canvas_h), (frame_w, frame_h), (left, top) = canvas, frame, at
        right, bottom = left + frame_w, top + frame_h
        self._check(f"A frame of the {fmt} animation at ({left}, {top})", right, bottom)
        if right > canvas_w or bottom > canvas_h:
            raise FrameError(
                "not_an_image",
                f"The {fmt} animation has a frame of {frame_w}x{frame_h} at ({left}, {top}), "
                f"outside its {canvas_w}x{canvas_h} canvas (an invalid file).",
            )

    # WebP -----------------------------------------------------------------------------------

    def webp(self, buf: Buffer) -> None:
        end = len(buf)
        canvas: tuple[int, int] | None = None
        for kind, start, stop in self._riff_chunks(buf, 12, end):
            if kind == b"VP8X" and stop - start >= 10 and canvas is None:
                canvas = (_u24(buf, start + 4) + 1, _u24(buf, start + 7) + 1)
                self._check("The WebP canvas", *canvas)
            elif kind in _WEBP_BITSTREAMS:
                size = _webp_bitstream_size(kind, buf, start, stop)
                if size is not None:
                    self._bitstream(size, canvas, "canvas")
            elif kind == b"ANMF" and stop - start >= 16:
                self._frame("WebP")
                left, top = _u24(buf, start) * 2, _u24(buf, start + 3) * 2
                frame = (_u24(buf, start + 6) + 1, _u24(buf, start + 9) + 1)
                self._inside("WebP", canvas or (0, 0), frame, (left, top))
                for sub, sub_start, sub_stop in self._riff_chunks(buf, start + 16, stop):
                    if sub in _WEBP_BITSTREAMS:
                        size = _webp_bitstream_size(sub, buf, sub_start, sub_stop)
                        if size is not None:
                            self._bitstream(size, frame, "frame")

    def _bitstream(self, size: tuple[int, int], room: tuple[int, int] | None, what: str) -> None:
        """A VP8/VP8L bitstream's own size must fit the canvas or frame it is drawn into."""
        self._check("The WebP bitstream", *size)
        if room is not None and (size[0] > room[0] or size[1] > room[1]):
            raise FrameError(
                "not_an_image",
                f"The WebP bitstream is {size[0]}x{size[1]}, larger than its "
                f"{room[0]}x{room[1]} {what} (an invalid file).",
            )

    def _riff_chunks(self, buf: Buffer, pos: int, end: int) -> Iterator[tuple[bytes, int, int]]:
        """(fourcc, payload start, payload end) of the RIFF chunks between `pos` and `end`."""
        end = min(end, len(buf))
        while pos + 8 <= end:
            kind, size = struct.unpack_from("<4sI", buf, pos)
            self._step("WebP")
            start = pos + 8
            stop = min(start + size, end)
            yield kind, start, stop
            pos = start + size + (size & 1)  # chunks are padded to an even length

    # AVIF -----------------------------------------------------------------------------------

    def avif(self, buf: Buffer) -> None:
        largest = (0, 0)
        for kind, start, stop in self._boxes(buf, 0, len(buf), 0):
            size: tuple[int, ...] = (0, 0)
            if kind == b"ispe" and stop - start >= 12:
                size = struct.unpack_from(">II", buf, start + 4)  # after version and flags
            elif kind == b"tkhd" and stop - start in (84, 96):  # an image sequence's track
                size = tuple(v >> 16 for v in struct.unpack_from(">II", buf, stop - 8))  # 16.16
            elif kind == b"av01" and stop - start >= 28:  # its visual sample entry
                size = struct.unpack_from(">HH", buf, start + 24)
            if size[0] * size[1] > largest[0] * largest[1]:
                largest = (size[0], size[1])
        self._check("An AVIF image item", *largest)

    def _boxes(
        self, buf: Buffer, pos: int, end: int, depth: int
    ) -> Iterator[tuple[bytes, int, int]]:
        """(type, payload start, payload end) of the ISO BMFF boxes between `pos` and `end`,
        and of the boxes inside the containers that lead to a declared size."""
        while pos + 8 <= end:
            size, kind = struct.unpack_from(">I4s", buf, pos)
            self._step("AVIF")
            start = pos + 8
            if size == 1 and pos + 16 <= end:  # 64-bit size
                size = struct.unpack_from(">Q", buf, pos + 8)[0]
                start = pos + 16
            elif size == 0:  # to the end of the file
                size = end - pos
            if size < start - pos:
                break  # a box shorter than its own header: nothing more can be read
            stop = min(pos + size, end)
            yield kind, start, stop
            if kind in _ISO_CONTAINERS and depth < 8:
                yield from self._boxes(buf, start + _ISO_CONTAINERS[kind], stop, depth + 1)
            pos += size

    # The names the whole-file check (structure.py) uses.
    step = _step
    frame = _frame
    inside = _inside
    check = _check


#: One walk over one file, for the whole-file check (structure.py).
FrameWalk = _Walk


def _u24(buf: Buffer, pos: int) -> int:
    return int(buf[pos]) | int(buf[pos + 1]) << 8 | int(buf[pos + 2]) << 16


def _webp_bitstream_size(kind: bytes, buf: Buffer, start: int, stop: int) -> tuple[int, int] | None:
    """The size a VP8 (lossy) or VP8L (lossless) bitstream declares, or None if unreadable."""
    if kind == b"VP8 ":
        # frame tag (3 bytes), start code 9d 01 2a, then 14-bit width and height
        if stop - start < 10 or buf[start + 3 : start + 6] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack_from("<HH", buf, start + 6)
        return width & 0x3FFF, height & 0x3FFF
    if stop - start < 5 or buf[start] != 0x2F:  # VP8L signature
        return None
    bits = struct.unpack_from("<I", buf, start + 1)[0]
    return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
