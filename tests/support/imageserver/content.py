"""The bytes the image server sends: deterministic images, bombs and filler bodies.

Tests import these to know exactly what a route served, without asking the server.
"""

from __future__ import annotations

import functools
import io
import random
import struct
import zlib

from PIL import Image

# URL extension -> (Pillow format, Content-Type)
FORMATS = {
    "jpg": ("JPEG", "image/jpeg"),
    "jpeg": ("JPEG", "image/jpeg"),
    "png": ("PNG", "image/png"),
    "webp": ("WEBP", "image/webp"),
    "avif": ("AVIF", "image/avif"),
    "gif": ("GIF", "image/gif"),
}
# URL extension -> the canonical one, so "a.jpeg" and "a.jpg" are the same image
EXTENSION = {
    "jpg": "jpg",
    "jpeg": "jpg",
    "png": "png",
    "webp": "webp",
    "avif": "avif",
    "gif": "gif",
}
HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Not found</title></head><body>nope</body></html>\n"
)


@functools.lru_cache(maxsize=512)
def image_bytes(name: str, fmt: str = "jpg", width: int = 64, height: int = 48) -> bytes:
    """The exact bytes the server sends for /img/<name>.<fmt>?w=<width>&h=<height>.

    Deterministic, and different for every name (noise seeded by the name).
    """
    pil_format, _ = FORMATS[fmt]
    rng = random.Random(zlib.crc32(f"{name}.{EXTENSION[fmt]}".encode()))
    im = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    buf = io.BytesIO()
    if pil_format == "JPEG":
        im.save(buf, "JPEG", quality=85)
    elif pil_format == "GIF":
        im.convert("P").save(buf, "GIF")
    else:
        im.save(buf, pil_format)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.lru_cache(maxsize=4)
def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header declares width x height pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _png_chunk(b"IEND", b"")
    )


@functools.lru_cache(maxsize=4)
def gzip_bomb(megabytes: int = 64) -> bytes:
    """gzip data that inflates to `megabytes` MiB of zeros (about 1 KB per MiB)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    out = [comp.compress(zeros) for _ in range(megabytes)]
    out.append(comp.flush())
    return b"".join(out)


def big_body(size: int) -> bytes:
    """`size` bytes that start like a JPEG."""
    head = b"\xff\xd8\xff\xe0"
    return head + bytes(max(0, size - len(head)))
