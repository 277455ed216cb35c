"""Dimensions from the header (imagesize) agree with Pillow's on every format and variant we
accept, and headers imagesize cannot read are judged by Pillow."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from PIL import Image

from downloader.fetch.sniff import SniffError, image_info

WIDTH, HEIGHT = 37, 23


def _noise(mode: str = "RGB") -> Image.Image:
    rng = random.Random(7)
    channels = len(mode)
    return Image.frombytes(mode, (WIDTH, HEIGHT), rng.randbytes(WIDTH * HEIGHT * channels))


def _encode(im: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees when displayed
    return _encode(_noise(), "JPEG", exif=exif.tobytes())


VARIANTS = {
    "jpeg baseline": lambda: _encode(_noise(), "JPEG", quality=80),
    "jpeg progressive": lambda: _encode(_noise(), "JPEG", progressive=True),
    "jpeg grayscale": lambda: _encode(_noise("L"), "JPEG"),
    "jpeg cmyk": lambda: _encode(_noise("CMYK"), "JPEG"),
    "jpeg exif orientation": _exif_rotated_jpeg,
    "png rgb": lambda: _encode(_noise(), "PNG"),
    "png rgba": lambda: _encode(_noise("RGBA"), "PNG"),
    "png palette": lambda: _encode(_noise().convert("P"), "PNG"),
    "gif": lambda: _encode(_noise().convert("P"), "GIF"),
    "gif animated": lambda: _encode(
        _noise().convert("P"), "GIF", save_all=True, append_images=[_noise().convert("P")]
    ),
    "webp lossy": lambda: _encode(_noise(), "WEBP", quality=70),
    "webp lossless": lambda: _encode(_noise(), "WEBP", lossless=True),
    "webp alpha (VP8X)": lambda: _encode(_noise("RGBA"), "WEBP"),
    "webp animated": lambda: _encode(_noise(), "WEBP", save_all=True, append_images=[_noise()]),
    "avif": lambda: _encode(_noise(), "AVIF"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("in_memory", [True, False], ids=["bytes", "file"])
def test_dimensions_agree_with_pillow(variant: str, in_memory: bool, tmp_path: Path) -> None:
    data = VARIANTS[variant]()
    with Image.open(io.BytesIO(data)) as im:
        expected = im.size  # stored size: EXIF orientation is not applied
    path = tmp_path / "x.part"
    path.write_bytes(data)
    info = image_info(path, data[:64], data if in_memory else None)
    assert (info.width, info.height) == expected == (WIDTH, HEIGHT)


def test_a_header_imagesize_cannot_read_goes_to_pillow(tmp_path: Path) -> None:
    # The JPEG signature followed by a marker segment that runs past the end of the file:
    # neither parser finds a frame header, so the image is refused with Pillow's verdict.
    data = b"\xff\xd8\xff\xe0\x7f\xff" + b"JFIF\x00" + b"\x00" * 40
    path = tmp_path / "broken.part"
    path.write_bytes(data)
    with pytest.raises(SniffError) as refused:
        image_info(path, data[:64], data)
    assert refused.value.code == "not_an_image"
    assert "header is unreadable" in refused.value.message
