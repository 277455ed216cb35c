"""The check a finished body goes through before it counts as an image: `ImageCheck`.

Always: the format, the declared sizes and the whole-file structure walk (sniff.image_info);
a body in memory is walked inline (tens of microseconds), a spooled file (or a HEIF, which
Pillow opens) in a worker thread.

`VERIFY_IMAGES=full` then decodes every image, and a bare JPEG XL codestream (which has no end
marker to walk to) is decoded whatever the setting. Decoding runs in a process pool sized to
the cores (`ProcessPoolExecutor`, never in the event loop and never holding the GIL the loop
needs); each worker is replaced after MAX_TASKS_PER_CHILD images, so whatever a decoder leaked
or fragmented is returned. The pixel limit is enforced on the declared sizes before anything
is decoded (sniff.image_info ran first, and Pillow's own limit is set in every worker), and
an animation's frames are decoded within MAX_DECODED_PIXELS in all. The decode also yields a
perceptual hash (dHash) for near-duplicate detection within a product.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import anyio

from downloader.fetch.outcomes import describe_exception
from downloader.fetch.sniff import (
    FORMAT_NAMES,
    FORMATS,
    HEAD_BYTES,
    MAX_IMAGE_PIXELS,
    PIL_FORMATS,
    ImageInfo,
    SniffError,
    image_info,
    sniff_format,
)
from downloader.fetch.structure import Details

VERIFY_MODES = ("structure", "full")
#: Formats whose check asks Pillow to open the file (HEIF: libheif parses the container, about
#: a millisecond): checked in a worker thread even when the body is in memory.
IN_A_THREAD = frozenset({"heic"})
MAX_TASKS_PER_CHILD = 200
#: Most pixels decoded for one file, all frames together (a long animation is checked up to it).
MAX_DECODED_PIXELS = 4 * MAX_IMAGE_PIXELS

_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


class ImageCheck:
    """What `BodyReceiver` runs on a finished body: `await check(path, head, data)`."""

    def __init__(self, accepted: tuple[str, ...] = FORMATS, verify: str = "structure") -> None:
        self.accepted = accepted
        self.verify = verify

    async def check(self, path: Path | None, head: bytes, data: bytes | None) -> ImageInfo:
        """The image's info; raises SniffError with the failure's code and sentence."""
        if data is not None and sniff_format(data[:HEAD_BYTES]) not in IN_A_THREAD:
            info = image_info(None, data[:HEAD_BYTES], data, self.accepted)
        elif data is not None:
            info = await anyio.to_thread.run_sync(
                image_info, None, data[:HEAD_BYTES], data, self.accepted
            )
        else:
            info = await anyio.to_thread.run_sync(image_info, path, head, None, self.accepted)
        if self.verify == "full" or info.format == "jxl":
            source = data if data is not None else path
            assert source is not None
            details = await _decode_in_pool(source, info.format)
            _merge(info.details, details)
        return info


def _merge(into: Details, decoded: Details) -> None:
    into.dhash = decoded.dhash
    into.color_mode = into.color_mode or decoded.color_mode
    into.has_alpha = into.has_alpha if into.has_alpha is not None else decoded.has_alpha
    into.icc_profile = into.icc_profile or decoded.icc_profile
    into.frames = max(into.frames, decoded.frames)


async def _decode_in_pool(source: Path | bytes, fmt: str) -> Details:
    """`decode` in the pool. A worker that dies on a file (a decoder's crash, the kernel's
    out-of-memory killer) breaks the whole pool: the file fails, and the next one gets a
    new pool."""
    pool = _executor()
    try:
        return await asyncio.wrap_future(pool.submit(decode, source, fmt))
    except BrokenProcessPool:
        _discard(pool)
        raise SniffError(
            "corrupt_image",
            f"The {FORMAT_NAMES[fmt]} could not be decoded: the decoder stopped on it.",
        ) from None


def _discard(pool: ProcessPoolExecutor) -> None:
    global _pool
    with _pool_lock:
        if _pool is pool:
            _pool = None
    pool.shutdown(wait=False, cancel_futures=True)


def _executor() -> ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(
                max_workers=os.cpu_count() or 1, max_tasks_per_child=MAX_TASKS_PER_CHILD
            )
            atexit.register(_pool.shutdown, wait=False, cancel_futures=True)
        return _pool


def decode(source: Path | bytes, fmt: str) -> Details:
    """Decode every frame of the image (in a pool worker); raises SniffError when it does
    not decode: truncated_image or corrupt_image with a sentence."""
    import io

    from downloader.fetch import metadata
    from downloader.fetch.sniff import pillow_image

    Image = pillow_image()  # the pixel limit set, the format plugins loaded
    name = FORMAT_NAMES[fmt]
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(stream, formats=[PIL_FORMATS[fmt]]) as im:
            width, height = im.size
            if width * height > MAX_IMAGE_PIXELS:
                raise SniffError(
                    "decompression_bomb",
                    f"The image declares {width}x{height} pixels, more than the "
                    f"{MAX_IMAGE_PIXELS:,} allowed (a decompression bomb).",
                )
            frames = int(getattr(im, "n_frames", 1))
            im.load()
            details = Details(
                color_mode=im.mode, has_alpha="A" in im.mode or "transparency" in im.info
            )
            details.frames = frames
            icc = im.info.get("icc_profile")
            if icc:
                details.icc_profile = metadata.icc_description(icc)
            details.dhash = dhash(im)
            decoded = width * height
            for index in range(1, frames):
                decoded += width * height
                if decoded > MAX_DECODED_PIXELS:
                    break
                im.seek(index)
                im.load()
            return details
    except SniffError:
        raise
    except Image.DecompressionBombError:
        raise SniffError(
            "decompression_bomb",
            f"The image declares more than {MAX_IMAGE_PIXELS:,} pixels (a decompression bomb).",
        ) from None
    except Exception as exc:  # Pillow and its plugins raise many types for damaged data
        text = describe_exception(exc)
        if "truncated" in text.lower() or isinstance(exc, EOFError):
            raise SniffError(
                "truncated_image",
                f"The {name} ends before its image data does (the file is cut short).",
            ) from None
        raise SniffError(
            "corrupt_image", f"The {name}'s image data is damaged and does not decode ({text})."
        ) from None


def dhash(im: object) -> int:
    """A 64-bit difference hash of an image: a 9x8 greyscale thumbnail, one bit per pair of
    neighbouring pixels (left brighter than right). Copies of one picture at other sizes or
    in other formats hash within a few bits of each other."""
    from PIL import Image, ImageOps

    assert isinstance(im, Image.Image)
    small = im.copy()
    small.thumbnail((64, 64))
    small = ImageOps.exif_transpose(small) or small
    grey = small.convert("L").resize((9, 8), Image.Resampling.BILINEAR)
    pixels = grey.tobytes()
    bits = 0
    for row in range(8):
        for col in range(8):
            bits = bits << 1 | (pixels[row * 9 + col] > pixels[row * 9 + col + 1])
    return bits
