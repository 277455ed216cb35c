"""Image type from the bytes (magic numbers) and dimensions from the header.

Never trusts Content-Type or the URL's extension, and never decodes pixels. Dimensions come
from `imagesize`, which reads only the header fields (5-13 us an image; Pillow's lazy open took
26-30 us for JPEG/PNG and ~210 us for WebP, whose plugin parses the whole file). A header
imagesize cannot read goes to Pillow, which decides (and refuses what it cannot parse).
The header's size is not the whole story for GIF, APNG, WebP and AVIF: `frames.check_frames`
then reads every frame's declared size (a GIF's frames may be far larger than its screen).
"""

from __future__ import annotations

import contextlib
import functools
import io
import mmap
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import imagesize

from downloader.fetch.frames import Buffer, FrameError, check_frames

FORMATS = ("jpg", "png", "webp", "avif", "gif")
PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP", "avif": "AVIF", "gif": "GIF"}
HEAD_BYTES = 64  # enough for every signature below, incl. the AVIF ftyp brands
#: Most pixels an image may declare: Pillow's own decompression-bomb limit (its default
#: Image.MAX_IMAGE_PIXELS), without loading Pillow, which only the rare header that imagesize
#: cannot read needs (~30 ms of every engine's start).
MAX_IMAGE_PIXELS = 89_478_485

_AVIF_BRANDS = (b"avif", b"avis")


class SniffError(Exception):
    """The bytes are not a supported image; `code` is not_an_image or decompression_bomb."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class ImageInfo:
    format: str  # jpg, png, webp, avif, gif
    width: int
    height: int


def sniff_format(head: bytes) -> str | None:
    """The image format of a file starting with `head`, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp":
        box_size = int.from_bytes(head[0:4], "big")
        brands = [head[8:12]]
        end = min(box_size, len(head))
        brands += [head[i : i + 4] for i in range(16, end - 3, 4)]
        if any(brand in _AVIF_BRANDS for brand in brands):
            return "avif"
    return None


def describe_non_image(head: bytes) -> str:
    """A short guess at what a non-image body is, for the error message."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "an HTML page"
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "an SVG drawing, which is not supported"
    if text.startswith(b"<?xml") or text.startswith(b"<"):
        return "an XML/HTML document"
    if text.startswith((b"{", b"[")):
        return "JSON text"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if head.startswith(b"BM"):
        return "a BMP image, which is not supported"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "a TIFF image, which is not supported"
    if head[4:8] == b"ftyp":
        return "an ISO media file (HEIC/MP4?), which is not supported"
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "plain text"
    return "not a recognised image"


def check_magic(head: bytes) -> str:
    """The format of a body starting with `head`; SniffError(not_an_image) if unsupported."""
    fmt = sniff_format(head)
    if fmt is None:
        what = describe_non_image(head)
        raise SniffError(
            "not_an_image",
            f"The file is not a JPEG, PNG, WebP, AVIF or GIF image ({what}).",
        )
    return fmt


def image_info(path: Path | None, head: bytes, data: bytes | None = None) -> ImageInfo:
    """Format (from `head`, the file's first bytes) and dimensions (from the header of the
    file at `path`, or of `data` when the whole body is at hand in memory).

    Raises SniffError(not_an_image | decompression_bomb).
    """
    fmt = check_magic(head)
    width, height = imagesize.get(_source(path, data), exif_rotation=False)  # stored size
    if width <= 0 or height <= 0:
        width, height = _pillow_size(fmt, _source(path, data))
    if width <= 0 or height <= 0:
        raise SniffError("not_an_image", f"The {fmt.upper()} image declares no pixels.")
    limit = MAX_IMAGE_PIXELS
    if width * height > limit:
        raise SniffError(
            "decompression_bomb",
            f"The image declares {width}x{height} pixels, more than the "
            f"{limit:,} allowed (a decompression bomb).",
        )
    if fmt != "jpg":  # the header's size is not the whole story: check every frame
        try:
            with _buffer(path, data) as buf:
                width, height = check_frames(fmt, buf, width, height, limit)
        except FrameError as exc:
            raise SniffError(exc.code, exc.message) from None
    return ImageInfo(fmt, width, height)


@contextlib.contextmanager
def _buffer(path: Path | None, data: bytes | None) -> Iterator[Buffer]:
    """The body's bytes: `data`, or a read-only memory map of the file (nothing is copied)."""
    if data is not None:
        yield data
        return
    if path is None:
        raise ValueError("image_info needs the bytes or the file")
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        yield buf


def _source(path: Path | None, data: bytes | None) -> Path | io.BytesIO:
    # A BytesIO or a Path, never a str: imagesize would fetch an http(s):// string.
    if data is not None:
        return io.BytesIO(data)
    if path is None:
        raise ValueError("image_info needs the bytes or the file")
    return path


def _pillow_size(fmt: str, source: Path | io.BytesIO) -> tuple[int, int]:
    """Dimensions by Pillow's lazy open (header only); SniffError when it cannot parse them."""
    Image = pillow_image()
    limit = MAX_IMAGE_PIXELS
    try:
        with Image.open(source, formats=[PIL_FORMATS[fmt]]) as im:
            width, height = im.size
    except Image.DecompressionBombError:
        raise SniffError(
            "decompression_bomb",
            f"The image declares more than {2 * limit:,} pixels (a decompression bomb).",
        ) from None
    except Exception as exc:  # Pillow raises many types for a broken header
        raise SniffError(
            "not_an_image",
            f"The file starts like a {fmt.upper()} image but its header is unreadable.",
        ) from exc
    return int(width), int(height)


@functools.cache
def pillow_image() -> ModuleType:
    """Pillow's Image module, loaded on first use, with AVIF support and our pixel limit."""
    from PIL import Image, features

    if not features.check("avif"):  # Pillow built without libavif: use the plugin package
        with contextlib.suppress(ImportError):  # the pinned requirements include it
            import pillow_avif  # noqa: F401
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # the same value: said here, not assumed
    # The limit is enforced in image_info; Pillow's warning for images between the limit and
    # twice it would only be noise. Set once: warnings.catch_warnings() per image is slow.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    return Image
