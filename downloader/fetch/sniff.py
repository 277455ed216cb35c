"""Image type from the bytes (magic numbers) and dimensions from the header.

Never trusts Content-Type or the URL's extension, and never decodes pixels. Dimensions come
from `imagesize`, which reads only the header fields (5-13 us an image; Pillow's lazy open took
26-30 us for JPEG/PNG and ~210 us for WebP, whose plugin parses the whole file). A header
imagesize cannot read goes to Pillow, which decides (and refuses what it cannot parse).
The header's size is not the whole story for GIF, APNG, WebP and AVIF, and a whole header
does not make a whole file: `structure.check_structure` then walks the file to its end (every
frame's declared size, chunk CRCs, markers, strips and boxes inside the file) and reads the
image's details (colour mode, alpha, frames, ICC profile, orientation).
TIFF and BMP sizes come from that walk; HEIF's from Pillow's lazy open (pillow-heif, which
parses the container only); JPEG XL's from its SizeHeader (its Pillow plugin decodes on open).
"""

from __future__ import annotations

import contextlib
import functools
import io
import mmap
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import imagesize

from downloader.fetch import metadata
from downloader.fetch.frames import Buffer, FrameError
from downloader.fetch.structure import Details, check_structure
from downloader.fetch.structure_more import jxl_size

#: Every accepted format, by its file extension (ACCEPTED_FORMATS narrows the list).
FORMATS = ("jpg", "png", "webp", "avif", "gif", "tif", "bmp", "heic", "jxl")
PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP", "avif": "AVIF", "gif": "GIF"}
PIL_FORMATS |= {"tif": "TIFF", "bmp": "BMP", "heic": "HEIF", "jxl": "JXL"}
FORMAT_NAMES = {"jpg": "JPEG", "png": "PNG", "webp": "WebP", "avif": "AVIF", "gif": "GIF"}
FORMAT_NAMES |= {"tif": "TIFF", "bmp": "BMP", "heic": "HEIC", "jxl": "JPEG XL"}
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
CONTENT_TYPES |= {"avif": "image/avif", "gif": "image/gif", "tif": "image/tiff"}
CONTENT_TYPES |= {"bmp": "image/bmp", "heic": "image/heic", "jxl": "image/jxl"}
HEAD_BYTES = 64  # enough for every signature below, incl. the AVIF/HEIF ftyp brands
#: Formats whose size the structure walk reads (imagesize and Pillow are not asked).
_WALK_SIZED = ("tif", "bmp")
#: Most pixels an image may declare: Pillow's own decompression-bomb limit (its default
#: Image.MAX_IMAGE_PIXELS), without loading Pillow, which only the rare header that imagesize
#: cannot read needs (~30 ms of every engine's start).
MAX_IMAGE_PIXELS = 89_478_485

_AVIF_BRANDS = (b"avif", b"avis")
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")
_BMP_HEADERS = (12, 16, 40, 52, 56, 64, 108, 124)
_JXL_CONTAINER = b"\x00\x00\x00\x0cJXL \r\n\x87\n"


class SniffError(Exception):
    """The bytes are not a supported image; `code` is not_an_image or decompression_bomb."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[SniffError], tuple[str, str]]:
        return type(self), (self.code, self.message)  # crosses from the decode pool


@dataclass(frozen=True, slots=True)
class ImageInfo:
    format: str  # one of FORMATS
    width: int
    height: int
    details: Details = field(default_factory=Details)


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
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tif"
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_HEADERS:
        return "bmp"
    if head.startswith(b"\xff\x0a") or head.startswith(_JXL_CONTAINER):
        return "jxl"
    if head[4:8] == b"ftyp":
        box_size = int.from_bytes(head[0:4], "big")
        brands = [head[8:12]]
        end = min(box_size, len(head))
        brands += [head[i : i + 4] for i in range(16, end - 3, 4)]
        if any(brand in _AVIF_BRANDS for brand in brands):
            return "avif"
        if any(brand in _HEIF_BRANDS for brand in brands):
            return "heic"
    return None


def describe_non_image(head: bytes) -> str:
    """A short guess at what a non-image body is, for the error message."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "an HTML page"
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "an SVG drawing: a document that can carry scripts, not accepted as an image"
    if text.startswith(b"<?xml") or text.startswith(b"<"):
        return "an XML/HTML document"
    if text.startswith((b"{", b"[")):
        return "JSON text"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if head.startswith(b"BM"):
        return "a BMP-like file whose header is unreadable"
    if head.startswith(b"8BPS"):
        return "a Photoshop document (PSD), which is not accepted"
    if head[:4] == b"\x00\x00\x01\x00":
        return "an icon file (ICO), which is not accepted"
    if head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        return "a JPEG 2000 image, which is not accepted"
    if head[4:8] == b"ftyp":
        return "an ISO media file (a video?), which is not accepted"
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "plain text"
    return "not a recognised image"


def format_list(formats: tuple[str, ...] | list[str]) -> str:
    """'a JPEG, PNG or GIF': the names of `formats` for a sentence."""
    names = [FORMAT_NAMES[fmt] for fmt in formats]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def check_magic(head: bytes, accepted: tuple[str, ...] = FORMATS) -> str:
    """The format of a body starting with `head`; SniffError(not_an_image) if it is not one of
    the `accepted` formats (the sentence names what the file is)."""
    fmt = sniff_format(head)
    if fmt is None:
        what = describe_non_image(head)
        raise SniffError("not_an_image", f"The file is not an image ({what}).")
    if fmt not in accepted:
        raise SniffError(
            "not_an_image",
            f"The file is a {FORMAT_NAMES[fmt]} image; this installation accepts only "
            f"{format_list(accepted)} images (ACCEPTED_FORMATS).",
        )
    return fmt


def image_info(
    path: Path | None,
    head: bytes,
    data: bytes | None = None,
    accepted: tuple[str, ...] = FORMATS,
) -> ImageInfo:
    """Format (from `head`, the file's first bytes), dimensions (from the header of the file at
    `path`, or of `data` when the whole body is at hand in memory) and details, after walking
    the whole file's structure (structure.py).

    Raises SniffError(not_an_image | decompression_bomb | truncated_image | corrupt_image).
    """
    fmt = check_magic(head, accepted)
    limit = MAX_IMAGE_PIXELS
    if fmt in _WALK_SIZED:
        width = height = 1  # the walk reads (and checks) every page's size
    elif fmt == "jxl":
        with _buffer(path, data) as buf:
            width, height = jxl_size(buf)
    else:
        width, height = imagesize.get(_source(path, data), exif_rotation=False)  # stored size
    if (width <= 0 or height <= 0) and fmt == "png":
        width = height = 1  # the walk reads the header and says what is wrong with it
    elif (width <= 0 or height <= 0) and fmt != "heic":
        width, height = _pillow_size(fmt, _source(path, data))
    if width <= 0 or height <= 0:
        if fmt == "jxl":
            raise SniffError("corrupt_image", "The JPEG XL image's size header is unreadable.")
        width = height = 1  # HEIF: the walk checks every declared size first, then Pillow
    _check_pixels(width, height, limit)
    try:
        with _buffer(path, data) as buf:
            details = check_structure(fmt, buf, width, height, limit)
    except FrameError as exc:
        raise SniffError(exc.code, exc.message) from None
    if fmt == "heic":
        width, height = _pillow_details(fmt, _source(path, data), details)
    if details.size is not None:
        width, height = details.size
        _check_pixels(width, height, limit)
    return ImageInfo(fmt, width, height, details)


def _check_pixels(width: int, height: int, limit: int) -> None:
    if width * height > limit:
        raise SniffError(
            "decompression_bomb",
            f"The image declares {width}x{height} pixels, more than the "
            f"{limit:,} allowed (a decompression bomb).",
        )


def _pillow_details(fmt: str, source: Path | io.BytesIO, details: Details) -> tuple[int, int]:
    """Size, mode, frames and ICC profile from Pillow's lazy open (HEIF: the container only)."""
    Image = pillow_image()
    try:
        with Image.open(source, formats=[PIL_FORMATS[fmt]]) as im:
            width, height = im.size
            details.color_mode = im.mode
            details.has_alpha = "A" in im.mode
            details.frames = int(getattr(im, "n_frames", 1))
            icc = im.info.get("icc_profile")
            if icc:
                details.icc_profile = metadata.icc_description(icc)
    except Image.DecompressionBombError:
        raise SniffError(
            "decompression_bomb",
            f"The image declares more than {2 * MAX_IMAGE_PIXELS:,} pixels (a decompression bomb).",
        ) from None
    except Exception as exc:  # Pillow raises many types for a broken header
        raise SniffError(
            "corrupt_image",
            f"The file starts like a {FORMAT_NAMES[fmt]} image but Pillow cannot read it.",
        ) from exc
    return int(width), int(height)


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
    with contextlib.suppress(ImportError):  # HEIC/HEIF (pinned in requirements.txt)
        from pillow_heif import register_heif_opener

        register_heif_opener()
    with contextlib.suppress(ImportError):  # JPEG XL (pinned); registers itself on import
        import pillow_jxl  # noqa: F401
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # the same value: said here, not assumed
    # The limit is enforced in image_info; Pillow's warning for images between the limit and
    # twice it would only be noise. Set once: warnings.catch_warnings() per image is slow.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    return Image
