"""Valid image files encoded by Pillow and its plugins, and the ways to break them (issue 26).

Every sample is made here, in memory: a small picture with some detail (so compressed data
is not all zeros), saved in each accepted format with the options that matter (progressive,
CMYK, 16-bit, LZW, tiled, multi-page, EXIF orientation, ICC profile, alpha, animation).
"""

from __future__ import annotations

import io
import struct
import zlib

import pillow_jxl  # noqa: F401  (registers JPEG XL)
from PIL import Image, ImageCms, ImageDraw
from pillow_heif import register_heif_opener

register_heif_opener()


def picture(size: tuple[int, int] = (120, 90), mode: str = "RGB") -> Image.Image:
    """A picture with edges and gradients (a few KB compressed in any format)."""
    image = Image.new("RGB", size, (240, 240, 235))
    draw = ImageDraw.Draw(image)
    width, height = size
    for x in range(0, width, 7):
        draw.line([(x, 0), (width - x, height)], fill=(x * 2 % 256, 90, 200 - x % 200), width=2)
    draw.ellipse([width // 4, height // 4, width * 3 // 4, height * 3 // 4], fill=(200, 30, 40))
    return image.convert(mode) if mode != "RGB" else image


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_rotated(orientation: int = 6) -> bytes:
    """A JPEG whose EXIF says to rotate it (6: 90 degrees clockwise) when shown."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(picture((120, 60)), "JPEG", exif=exif.tobytes())


def samples() -> dict[str, bytes]:
    """Whole files, by a short name, in every accepted format and its common variants."""
    rgba = picture(mode="RGBA")
    frames = [picture(), picture().rotate(90), picture().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return {
        "baseline.jpg": encode(picture(), "JPEG", quality=85),
        "progressive.jpg": encode(picture(), "JPEG", progressive=True),
        "cmyk.jpg": encode(picture(mode="CMYK"), "JPEG"),
        "grey.jpg": encode(picture(mode="L"), "JPEG"),
        "icc.jpg": encode(picture(), "JPEG", icc_profile=srgb_profile()),
        "rotated.jpg": exif_rotated(6),
        "mpo.jpg": encode(picture(), "MPO", save_all=True, append_images=[picture().rotate(5)]),
        "rgb.png": encode(picture(), "PNG"),
        "rgba.png": encode(rgba, "PNG"),
        "palette.png": encode(picture().convert("P"), "PNG"),
        "grey16.png": encode(picture(mode="I;16"), "PNG"),
        "icc.png": encode(picture(), "PNG", icc_profile=srgb_profile()),
        "animated.png": encode(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "still.gif": encode(picture(), "GIF"),
        "animated.gif": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "lossy.webp": encode(picture(), "WEBP", quality=80),
        "lossless.webp": encode(rgba, "WEBP", lossless=True),
        "animated.webp": encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
        "still.avif": encode(picture(), "AVIF"),
        "rgb.tif": encode(picture(), "TIFF"),
        "lzw.tif": encode(picture(), "TIFF", compression="tiff_lzw"),
        "cmyk.tif": encode(picture(mode="CMYK"), "TIFF"),
        "grey16.tif": encode(picture(mode="I;16"), "TIFF"),
        "multipage.tif": encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        "tiled.tif": tiled_tiff(picture((48, 40))),
        "rgb.bmp": encode(picture(), "BMP"),
        "palette.bmp": encode(picture().convert("P"), "BMP"),
        "still.heic": encode(picture(), "HEIF"),
        "rgba.heic": encode(rgba, "HEIF"),
        "still.jxl": encode(picture(), "JXL"),
    }


def tiled_tiff(image: Image.Image, tile: int = 16) -> bytes:
    """An uncompressed RGB TIFF stored in `tile` x `tile` tiles (Pillow writes strips only)."""
    width, height = image.size
    across, down = -(-width // tile), -(-height // tile)
    padded = Image.new("RGB", (across * tile, down * tile))
    padded.paste(image)
    tiles = [
        padded.crop((x * tile, y * tile, (x + 1) * tile, (y + 1) * tile)).tobytes()
        for y in range(down)
        for x in range(across)
    ]
    count = len(tiles)
    entries = 11
    ifd_at = 8
    extra_at = ifd_at + 2 + entries * 12 + 4
    bits_at, offsets_at = extra_at, extra_at + 6
    counts_at = offsets_at + 4 * count
    data_at = counts_at + 4 * count
    offsets = [data_at + i * len(tiles[0]) for i in range(count)]
    tags = [
        (256, 3, 1, width),
        (257, 3, 1, height),
        (258, 3, 3, bits_at),
        (259, 3, 1, 1),
        (262, 3, 1, 2),
        (277, 3, 1, 3),
        (284, 3, 1, 1),
        (322, 3, 1, tile),
        (323, 3, 1, tile),
        (324, 4, count, offsets_at),
        (325, 4, count, counts_at),
    ]
    out = b"II*\x00" + struct.pack("<I", ifd_at) + struct.pack("<H", entries)
    for tag, kind, number, value in tags:
        packed = struct.pack("<H", value) + b"\0\0" if kind == 3 and number == 1 else None
        out += struct.pack("<HHI", tag, kind, number) + (packed or struct.pack("<I", value))
    out += b"\0\0\0\0" + struct.pack("<HHH", 8, 8, 8)
    out += struct.pack(f"<{count}I", *offsets) + struct.pack(f"<{count}I", *map(len, tiles))
    return out + b"".join(tiles)


# -- ways to break a file ---------------------------------------------------------------------


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk of a PNG."""
    chunks, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunks.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def png_from(chunks: list[tuple[bytes, bytes]]) -> bytes:
    """A PNG of `chunks`, each with a correct CRC (so only the field under test is wrong)."""
    out = b"\x89PNG\r\n\x1a\n"
    for kind, payload in chunks:
        crc = zlib.crc32(kind + payload)
        out += struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)
    return out


def png_with(data: bytes, kind: bytes, payload: bytes) -> bytes:
    """The PNG with one more chunk just after its header."""
    chunks = png_chunks(data)
    return png_from([chunks[0], (kind, payload), *chunks[1:]])


def inflating_without_end(megabytes: int) -> bytes:
    """A zlib stream of zeros that inflates to `megabytes` MiB (about a thousandth of that)."""
    packer = zlib.compressobj(9)
    block = bytes(1024 * 1024)
    return b"".join(packer.compress(block) for _ in range(megabytes)) + packer.flush()


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x5A]) + data[at + 1 :]
