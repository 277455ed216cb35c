"""The conversion itself (downloader.outputs.convert) and its process pool: real Pillow, real
spawned worker processes."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from PIL import Image, ImageCms

from downloader.job_options import JobOptions
from downloader.outputs.convert import ConvertError, convert_file
from downloader.outputs.pool import ConvertPool
from downloader.outputs.profile import (
    CheckRules,
    OptionError,
    OutputProfile,
    checks_dict,
    validate_output_options,
)


def encoded(image: Image.Image, fmt: str, **kw: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kw)
    return out.getvalue()


def test_the_pixel_limit_is_checked_from_the_header_in_a_worker_process(tmp_path: Path) -> None:
    source = tmp_path / "big.png"
    source.write_bytes(encoded(Image.new("RGB", (400, 300)), "PNG"))
    pool = ConvertPool(1, max_pixels=100_000)
    try:
        with pytest.raises(ConvertError) as caught:
            asyncio.run(pool.convert(str(source), str(tmp_path / "o.jpg"), OutputProfile("jpeg")))
        assert caught.value.code == "too_many_pixels"
        assert "400x300" in caught.value.message
        small = tmp_path / "small.png"
        small.write_bytes(encoded(Image.new("RGB", (100, 100)), "PNG"))
        done = asyncio.run(pool.convert(str(small), str(tmp_path / "s.jpg"), OutputProfile("jpeg")))
        assert (done.width, done.height, done.extension) == (100, 100, "jpg")
    finally:
        pool.close()
    assert not (tmp_path / "o.jpg").exists()


def test_unreadable_bytes_are_a_conversion_failure(tmp_path: Path) -> None:
    with pytest.raises(ConvertError) as caught:
        convert_file(
            b"\x89PNG\r\n\x1a\n" + b"\0" * 40, str(tmp_path / "x.jpg"), OutputProfile("jpeg")
        )
    assert caught.value.code == "conversion_failed"


def test_metadata_kept_without_orientation_or_stripped(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 8
    exif[0x010F] = "Camera maker"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = encoded(
        Image.new("RGB", (60, 20), "blue"), "JPEG", exif=exif.tobytes(), icc_profile=icc
    )
    kept = convert_file(source, str(tmp_path / "k.jpg"), OutputProfile("jpeg"))
    with Image.open(kept.path) as image:
        assert image.size == (20, 60)  # orientation 8 applied
        assert image.getexif().get(0x010F) == "Camera maker"
        assert 0x0112 not in image.getexif()
        assert image.info.get("icc_profile") == icc
    stripped = convert_file(
        source, str(tmp_path / "s.webp"), OutputProfile("webp", strip_metadata=True)
    )
    with Image.open(stripped.path) as image:
        assert image.format == "WEBP" and image.size == (20, 60)
        assert not image.info.get("exif") and not image.info.get("icc_profile")


def test_modes_padding_downscale_only_and_quality(tmp_path: Path) -> None:
    palette = Image.new("P", (80, 40), 0)
    palette.putpalette([255, 0, 0] * 256)
    source = encoded(palette, "GIF", transparency=0)
    padded = convert_file(source, str(tmp_path / "p.png"), OutputProfile("png", pad_square=True))
    with Image.open(padded.path) as image:
        assert image.size == (80, 80) and image.mode == "RGBA"
        assert image.getpixel((40, 2)) == (255, 255, 255, 0)  # transparent padding
    high = encoded(Image.new("I;16", (30, 30), 40000), "PNG")
    grey = convert_file(high, str(tmp_path / "g.jpg"), OutputProfile("jpeg", max_side=500))
    with Image.open(grey.path) as image:
        assert image.size == (30, 30)  # never upscaled
        level = image.convert("L").getpixel((5, 5))
        assert isinstance(level, int) and 150 <= level <= 160  # 40000/65535, not clipped
    noisy = encoded(Image.effect_noise((300, 300), 60).convert("RGB"), "PNG")
    low = convert_file(noisy, str(tmp_path / "l.jpg"), OutputProfile("jpeg", quality=20))
    best = convert_file(noisy, str(tmp_path / "b.jpg"), OutputProfile("jpeg", quality=95))
    assert low.size < best.size


def test_options_are_validated_with_one_sentence() -> None:
    for options, words in [
        (JobOptions(convert="bmp"), "Convert must be"),
        (JobOptions(convert="jpeg", quality=101), "Quality"),
        (JobOptions(convert="jpeg", max_side=-3), "Maximum side"),
        (JobOptions(convert="jpeg", background="#12"), "Background colour"),
        (JobOptions(checks={"min_side": "big"}), "Minimum side"),
    ]:
        with pytest.raises(OptionError, match=words):
            validate_output_options(options)
    rules = CheckRules.from_options(
        JobOptions(checks=checks_dict(formats="JPEG, png", square=True))
    )
    assert rules.formats == ("jpg", "png") and rules.square
    assert OutputProfile.from_options(JobOptions()) is None
    assert OutputProfile.from_options(
        JobOptions(convert="png", background="navy")
    ) == OutputProfile("png", background=(0, 0, 128))


def test_every_accepted_format_converts_in_a_fresh_worker_process(tmp_path: Path) -> None:
    """HEIC, JPEG XL and AVIF decode through plugins that a spawned worker must register
    itself (the engine's own process registered them when it sniffed the download)."""
    from tests.support.image_samples import samples

    pool = ConvertPool(1)
    try:
        for name, data in samples().items():
            dest = tmp_path / f"{name}.jpg"
            done = asyncio.run(pool.convert(data, str(dest), OutputProfile("jpeg", max_side=64)))
            with Image.open(dest) as image:
                assert image.format == "JPEG" and max(image.size) <= 64, name
                assert (image.width, image.height) == (done.width, done.height), name
    finally:
        pool.close()


def test_the_report_makes_a_thumbnail_of_every_accepted_format() -> None:
    from downloader.report import THUMBNAIL_SIDE, thumbnail
    from tests.support.image_samples import samples

    for name, data in samples().items():
        small = thumbnail(data)
        assert small is not None, name
        with Image.open(io.BytesIO(small)) as image:
            assert image.format == "JPEG" and max(image.size) <= THUMBNAIL_SIDE, name
    assert thumbnail(b"not an image") is None
