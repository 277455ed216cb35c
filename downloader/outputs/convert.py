"""The pixel work of one conversion: decode, orient, downscale, flatten, pad, encode.

Runs in a worker process (downloader.outputs.pool), never in the engine's event loop. The
source was checked by the download already (type sniffed, every frame's declared size within
the pixel limit); the limit is checked again here from the header before any pixel is
decoded, so a file that changed or a format the sniffer reads differently cannot decode into
a bomb. The first frame of an animation is converted (marketplaces want stills).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageCms, ImageOps

from downloader.fetch.sniff import pillow_image
from downloader.outputs.profile import DEFAULT_QUALITY, OutputProfile

# Pillow's own decompression-bomb limit, and the one the download's checks use
# (downloader.fetch.sniff.MAX_IMAGE_PIXELS)
MAX_PIXELS = 89_478_485

_SRGB = ImageCms.createProfile("sRGB")
_HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class ConvertError(Exception):
    """A source that cannot be converted: `code` for the image's error code, and one short
    sentence for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[ConvertError], tuple[str, str]]:
        return (type(self), (self.code, self.message))  # crosses the process boundary


@dataclass(frozen=True)
class Converted:
    path: str  # the written output file
    extension: str  # jpg | png | webp
    size: int
    width: int
    height: int


def convert_file(
    source: str | bytes, dest: str, profile: OutputProfile, max_pixels: int = MAX_PIXELS
) -> Converted:
    """Convert `source` (a file path, or the bytes of a small body) to `dest` per `profile`."""
    pillow_image()  # AVIF, HEIC/HEIF and JPEG XL registered as the download's checks have them
    Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow's own check as a second line
    handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    try:
        with handle, Image.open(handle) as opened:
            width, height = opened.size
            if width * height > max_pixels:  # from the header: nothing decoded yet
                raise ConvertError(
                    "too_many_pixels",
                    f"The image declares {width}x{height} pixels, more than the "
                    f"{max_pixels:,} allowed.",
                )
            image, metadata = _prepared(opened, profile)
        data = _encode(image, profile, metadata)
    except ConvertError:
        raise
    except Image.DecompressionBombError:
        raise ConvertError(
            "too_many_pixels", f"The image declares more than the {max_pixels:,} pixels allowed."
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ConvertError(
            "conversion_failed", f"The image could not be converted ({type(exc).__name__})."
        ) from None
    except MemoryError:
        raise ConvertError(
            "conversion_failed", "The image could not be converted (out of memory)."
        ) from None
    Path(dest).write_bytes(data)
    return Converted(dest, profile.extension, len(data), image.width, image.height)


def _prepared(opened: Image.Image, profile: OutputProfile) -> tuple[Image.Image, dict[str, bytes]]:
    """The decoded, oriented, resized, colour-managed and padded picture, and the metadata
    the output keeps."""
    if profile.max_side and opened.format == "JPEG":
        # Decode JPEGs at 1/2, 1/4 or 1/8 scale when that still covers the target size:
        # most of a big JPEG's decoding time, saved before any pixel is read.
        width, height = opened.size
        scale = profile.max_side / max(width, height)
        if scale < 1:
            opened.draft(None, (max(1, round(width * scale)), max(1, round(height * scale))))
    opened.seek(0)
    opened.load()
    icc = opened.info.get("icc_profile") or None
    image = ImageOps.exif_transpose(opened) or opened  # EXIF orientation applied
    exif = image.getexif() if image.info.get("exif") or opened.info.get("exif") else None
    image, icc = _to_working_mode(image, icc, profile)
    if profile.max_side and max(image.size) > profile.max_side:  # downscale only
        image.thumbnail((profile.max_side, profile.max_side), Image.Resampling.LANCZOS)
    if profile.format == "jpeg" and image.mode in ("RGBA", "LA"):
        image = _flatten(image, profile.background)
    if profile.pad_square and image.width != image.height:
        image = _pad_square(image, profile.background)
    return image, _kept_metadata(icc, exif, profile)


def _to_working_mode(
    image: Image.Image, icc: bytes | None, profile: OutputProfile
) -> tuple[Image.Image, bytes | None]:
    """RGB(A) or L(A), and the ICC profile that still applies: CMYK through its ICC profile
    to sRGB (the plain formula without one), palette images with their transparency,
    high-bit greyscale scaled (not clipped)."""
    info = image.info
    if image.mode in _HIGH_BIT_MODES:
        image = image.convert("I").point(lambda value: value / 256).convert("L")
    elif (
        image.mode in ("P", "PA")
        or (image.mode in ("RGB", "L") and "transparency" in info)
        or (image.mode == "LA" and profile.format == "jpeg")
    ):
        image = image.convert("RGBA")
    if image.mode == "CMYK" or (icc and profile.strip_metadata and image.mode == "RGB"):
        image = _to_srgb(image, icc)
        icc = None
    elif image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA" if "A" in image.mode else "RGB")
    return image, icc


def _to_srgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(image, source, _SRGB, outputMode="RGB")
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: the plain conversion below
    return image.convert("RGB")


def _flatten(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    canvas = Image.new("RGB", image.size, background)
    rgba = image.convert("RGBA")
    canvas.paste(rgba, mask=rgba.getchannel("A"))
    return canvas


def _pad_square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    side = max(image.size)
    # transparent padding where the output keeps alpha, the background colour otherwise
    fill: tuple[int, ...] = (*background, 0) if image.mode == "RGBA" else background
    if image.mode in ("L", "LA"):
        image = image.convert("RGBA" if image.mode == "LA" else "RGB")
        fill = (*background, 0) if image.mode == "RGBA" else background
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


def _kept_metadata(
    icc: bytes | None, exif: Image.Exif | None, profile: OutputProfile
) -> dict[str, bytes]:
    """EXIF (orientation already applied, the tag dropped) and the ICC profile that still
    applies, unless stripped (then the pixels were converted to sRGB)."""
    if profile.strip_metadata:
        return {}
    kept: dict[str, bytes] = {}
    if icc:
        kept["icc_profile"] = icc
    if exif is not None:
        exif.pop(0x0112, None)  # orientation: the pixels are upright now
        kept["exif"] = exif.tobytes()
    return kept


def _encode(image: Image.Image, profile: OutputProfile, metadata: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    quality = profile.quality or DEFAULT_QUALITY.get(profile.format)
    if profile.format == "jpeg":
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        image.save(out, "JPEG", quality=quality, optimize=False, **metadata)
    elif profile.format == "webp":
        image.save(out, "WEBP", quality=quality, method=4, **metadata)
    else:
        image.save(out, "PNG", compress_level=6, **metadata)
    return out.getvalue()


def worker_count() -> int:
    """The cores this process may use (the pool's size)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
