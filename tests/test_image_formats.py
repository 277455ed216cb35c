"""Every real product image format (issue 26): accepted with its true format, size and details;
refused formats named; ACCEPTED_FORMATS narrows the list; VERIFY_IMAGES=full decodes in a
process pool; the details reach the manifest.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from downloader import jobs
from downloader.engine import Engine
from downloader.fetch.sniff import FORMATS, SniffError, image_info
from downloader.fetch.verify import ImageCheck
from downloader.inputs import parse_text
from downloader.manifest import MANIFEST_COLUMNS
from downloader.services import build_services
from downloader.settings import IMAGE_FORMATS, SettingsError, load_settings
from tests.support.fetching import assert_failed, fetch_all, make_settings
from tests.support.image_samples import encode, picture, png_chunks, png_from, samples
from tests.support.imageserver import ImageServer, Reply, image_server  # noqa: F401

SAMPLES = samples()

#: name: (format, width, height, colour mode, alpha, frames, ICC description, orientation)
EXPECTED: dict[str, tuple[str, int, int, str | None, bool | None, int, str | None, int | None]] = {
    "baseline.jpg": ("jpg", 120, 90, "RGB", False, 1, None, None),
    "progressive.jpg": ("jpg", 120, 90, "RGB", False, 1, None, None),
    "cmyk.jpg": ("jpg", 120, 90, "CMYK", False, 1, None, None),
    "grey.jpg": ("jpg", 120, 90, "L", False, 1, None, None),
    "icc.jpg": ("jpg", 120, 90, "RGB", False, 1, "sRGB built-in", None),
    "rotated.jpg": ("jpg", 120, 60, "RGB", False, 1, None, 6),
    "mpo.jpg": ("jpg", 120, 90, "RGB", False, 2, None, None),
    "rgb.png": ("png", 120, 90, "RGB", False, 1, None, None),
    "rgba.png": ("png", 120, 90, "RGBA", True, 1, None, None),
    "palette.png": ("png", 120, 90, "P", False, 1, None, None),
    "grey16.png": ("png", 120, 90, "I;16", False, 1, None, None),
    "icc.png": ("png", 120, 90, "RGB", False, 1, "sRGB built-in", None),
    "animated.png": ("png", 120, 90, "RGB", False, 3, None, None),
    "still.gif": ("gif", 120, 90, "P", False, 1, None, None),
    "animated.gif": ("gif", 120, 90, "P", True, 3, None, None),
    "lossy.webp": ("webp", 120, 90, "RGB", False, 1, None, None),
    "lossless.webp": ("webp", 120, 90, "RGB", False, 1, None, None),  # opaque: no alpha kept
    "animated.webp": ("webp", 120, 90, "RGBA", True, 3, None, None),
    "still.avif": ("avif", 120, 90, "RGB", False, 1, None, None),
    "rgb.tif": ("tif", 120, 90, "RGB", False, 1, None, None),
    "lzw.tif": ("tif", 120, 90, "RGB", False, 1, None, None),
    "cmyk.tif": ("tif", 120, 90, "CMYK", False, 1, None, None),
    "grey16.tif": ("tif", 120, 90, "I;16", False, 1, None, None),
    "multipage.tif": ("tif", 120, 90, "RGB", False, 3, None, None),
    "tiled.tif": ("tif", 48, 40, "RGB", False, 1, None, None),
    "rgb.bmp": ("bmp", 120, 90, "RGB", False, 1, None, None),
    "palette.bmp": ("bmp", 120, 90, "P", False, 1, None, None),
    "still.heic": ("heic", 120, 90, "RGB", False, 1, None, None),
    "rgba.heic": ("heic", 120, 90, "RGBA", True, 1, None, None),
    "still.jxl": ("jxl", 120, 90, "RGB", False, 1, "sRGB", None),  # decoded: see below
}


def check(data: bytes, verify: str = "structure", accepted: tuple[str, ...] = FORMATS) -> object:
    return asyncio.run(ImageCheck(accepted, verify).check(None, data[:64], data))


def test_the_formats_agree_with_the_settings() -> None:
    assert FORMATS == IMAGE_FORMATS
    assert set(EXPECTED) == set(SAMPLES)
    assert {fmt for fmt, *_ in EXPECTED.values()} == set(FORMATS)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_sample_is_accepted_with_its_format_size_and_details(name: str) -> None:
    info = check(SAMPLES[name])
    fmt, width, height, mode, alpha, frames, icc, orientation = EXPECTED[name]
    assert (info.format, info.width, info.height) == (fmt, width, height)  # type: ignore[attr-defined]
    details = info.details  # type: ignore[attr-defined]
    assert (details.color_mode, details.has_alpha, details.frames) == (mode, alpha, frames)
    assert (details.icc_profile, details.orientation) == (icc, orientation)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_sample_decodes_whole_with_verify_full(name: str) -> None:
    info = check(SAMPLES[name], "full")
    assert info.details.dhash is not None  # type: ignore[attr-defined]


def test_a_cut_jpeg_xl_codestream_is_caught_by_decoding_whatever_the_setting() -> None:
    data = SAMPLES["still.jxl"]
    with pytest.raises(SniffError) as caught:
        check(data[: len(data) // 2])
    assert caught.value.code in ("truncated_image", "corrupt_image")
    assert "JPEG XL" in caught.value.message


def test_damaged_compressed_data_with_a_correct_crc_fails_only_a_full_decode() -> None:
    chunks = png_chunks(SAMPLES["rgb.png"])
    idat = next(i for i, c in enumerate(chunks) if c[0] == b"IDAT")
    kind, payload = chunks[idat]
    chunks[idat] = (kind, payload[:40] + bytes(b ^ 0xA5 for b in payload[40:80]) + payload[80:])
    damaged = png_from(chunks)  # CRCs recomputed: only the zlib stream is wrong
    assert check(damaged).format == "png"  # type: ignore[attr-defined]
    with pytest.raises(SniffError) as caught:
        check(damaged, "full")
    assert caught.value.code == "corrupt_image"
    assert caught.value.message.startswith("The PNG's image data is damaged")


def test_near_copies_hash_alike_and_other_pictures_do_not() -> None:
    big = check(encode(picture((480, 360)), "PNG"), "full").details.dhash  # type: ignore[attr-defined]
    small = check(encode(picture((120, 90)), "JPEG"), "full").details.dhash  # type: ignore[attr-defined]
    other = check(encode(picture().rotate(90), "PNG"), "full").details.dhash  # type: ignore[attr-defined]
    assert bin(big ^ small).count("1") <= 6
    assert bin(big ^ other).count("1") > 12


REFUSED = {
    "psd": (b"8BPS\x00\x01" + bytes(60), "Photoshop document (PSD)"),
    "ico": (encode(picture((32, 32)), "ICO"), "icon file (ICO)"),
    "jp2": (encode(picture(), "JPEG2000"), "JPEG 2000"),
    "svg": (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "scripts"),
    "pdf": (b"%PDF-1.7\n" + bytes(60), "PDF document"),
    "html": (b"<!doctype html><html><body>Not found</body></html>" + bytes(20), "HTML page"),
    "unknown": (bytes(range(256)), "not a recognised image"),
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_refused_formats_say_what_the_file_is(kind: str) -> None:
    data, words = REFUSED[kind]
    with pytest.raises(SniffError) as caught:
        image_info(None, data[:64], data)
    assert caught.value.code == "not_an_image"
    assert words in caught.value.message and caught.value.message.endswith(".")


def test_accepted_formats_narrows_the_list() -> None:
    settings = load_settings(accepted_formats="jpeg, PNG,tiff")
    assert settings.accepted_formats == ["jpg", "png", "tif"]
    with pytest.raises(SniffError) as caught:
        check(SAMPLES["still.gif"], accepted=tuple(settings.accepted_formats))
    assert caught.value.message == (
        "The file is a GIF image; this installation accepts only JPEG, PNG or TIFF images "
        "(ACCEPTED_FORMATS)."
    )
    with pytest.raises(SettingsError, match=r"(?i)accepted_formats"):
        load_settings(accepted_formats="jpg,psd")


def _serving(body: bytes) -> Callable[[object], Reply]:
    return lambda req: Reply(body=body)


def test_every_format_is_fetched_whole_and_broken_ones_fail_with_verify_full(
    image_server: ImageServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    names = ["cmyk.tif", "tiled.tif", "rgb.bmp", "still.heic", "still.jxl", "rotated.jpg"]
    for name in names:
        body = SAMPLES[name]
        image_server.add_route(r"/good/" + name, _serving(body))
    half = SAMPLES["still.jxl"][:3000]
    image_server.add_route(r"/cut\.jxl", lambda req: Reply(body=half))
    settings = make_settings(verify_images="full")
    urls = [image_server.url("good/" + name) for name in names] + [image_server.url("cut.jxl")]
    started = time.monotonic()
    outcomes = fetch_all(settings, tmp_path, urls)
    assert time.monotonic() - started < 60
    for name, outcome in zip(names, outcomes, strict=False):
        assert outcome.ok, (name, outcome.error)
        assert outcome.format == EXPECTED[name][0] and outcome.details is not None
        assert outcome.details.color_mode == EXPECTED[name][3]
    assert_failed(outcomes[-1], outcomes[-1].error_code or "")
    assert outcomes[-1].error_code in ("truncated_image", "corrupt_image")


def test_the_details_reach_the_manifest(image_server: ImageServer, tmp_path: Path) -> None:  # noqa: F811
    for name in ("cmyk.jpg", "rotated.jpg", "multipage.tif", "rgba.png", "icc.png"):
        body = SAMPLES[name]
        image_server.add_route(r"/p/" + name, _serving(body))
    services = build_services(
        load_settings(
            database_url=f"sqlite:///{tmp_path / 'app.db'}",
            media_root=str(tmp_path / "media"),
            allowed_private_networks=["127.0.0.0/8"],
            download_qps=0,
        )
    )
    text = "Product\tURL\n" + "\n".join(
        f"P1\t{image_server.url('p/' + name)}"
        for name in ("cmyk.jpg", "rotated.jpg", "multipage.tif", "rgba.png", "icc.png")
    )
    job = jobs.create_job(services.db, parse_text(text))
    engine = Engine(services.db, services.storage, services.settings, job_id=job.id, share=1.0)
    anyio.run(lambda: engine.run(until_idle=True))
    zipped = b"".join(chunk for chunk in jobs.job_zip(services.db, services.storage, job.id))
    with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
        names = sorted(archive.namelist())
        manifest = archive.read("manifest.csv").decode("utf-8-sig")
    assert "P1/P1_3.tif" in names
    rows = list(csv.DictReader(io.StringIO(manifest)))
    assert list(rows[0])[: len(MANIFEST_COLUMNS)] == MANIFEST_COLUMNS
    got = [
        (r["format"], r["color_mode"], r["alpha"], r["frames"], r["icc_profile"], r["orientation"])
        for r in rows
    ]
    assert got == [
        ("jpg", "CMYK", "no", "1", "", ""),
        ("jpg", "RGB", "no", "1", "", "6"),
        ("tif", "RGB", "no", "3", "", ""),
        ("png", "RGBA", "yes", "1", "", ""),
        ("png", "RGB", "no", "1", "sRGB built-in", ""),
    ]
    shown = [image.details for image in jobs.product_images(services.db, job.id, "P1")]
    assert shown == [
        "CMYK",
        "RGB · rotated 90°",
        "RGB · 3 frames",
        "RGBA · alpha",
        "RGB · ICC: sRGB built-in",
    ]


def test_thumbnails_honour_orientation_cmyk_and_16_bit(tmp_path: Path) -> None:
    from PIL import Image

    from downloader.storage import LocalStorage
    from downloader.ui_queries import thumbnail
    from tests.support.image_samples import srgb_profile

    storage = LocalStorage(str(tmp_path))
    files = {
        "rotated": SAMPLES["rotated.jpg"],  # 120x60 stored, shown 60x120
        "cmyk": SAMPLES["cmyk.jpg"],
        "profiled": encode(picture(), "JPEG", icc_profile=srgb_profile()),
        "grey16": SAMPLES["grey16.png"],
        "tiff": SAMPLES["cmyk.tif"],
        "heic": SAMPLES["still.heic"],
    }
    shown = {}
    for name, data in files.items():
        storage.put_bytes(data, f"t/{name}")
        shown[name] = Image.open(io.BytesIO(thumbnail(storage, f"t/{name}")))
    assert shown["rotated"].size == (60, 120)
    for name in ("cmyk", "profiled", "tiff", "heic"):
        red = shown[name].convert("RGB").getpixel((60, 45))  # the red disc in the middle
        assert isinstance(red, tuple) and red[0] > 150 and red[1] < 90 and red[2] < 90, (name, red)
    assert shown["grey16"].mode in ("L", "RGB") and shown["grey16"].getextrema() != (0, 0)


def test_the_job_page_describes_each_image() -> None:
    from downloader.jobs.details import describe_details

    assert describe_details("CMYK", False, 1, None, None) == "CMYK"
    assert describe_details("RGBA", True, 3, "sRGB built-in", 6) == (
        "RGBA · alpha · 3 frames · ICC: sRGB built-in · rotated 90°"
    )


def test_a_decode_worker_killed_on_a_file_fails_that_file_and_the_next_gets_a_new_pool() -> None:
    """As when the kernel's out-of-memory killer or a decoder's crash ends a worker."""
    import os
    import signal

    from PIL import Image

    from downloader.fetch import verify

    noise = Image.frombytes("RGB", (3000, 3000), os.urandom(3000 * 3000 * 3))
    heavy = encode(noise, "PNG", compress_level=1)

    async def kill_while_decoding() -> None:
        pool = verify._executor()
        task = asyncio.ensure_future(verify._decode_in_pool(heavy, "png"))
        for _ in range(3000):  # until the pool has spawned its workers (at most 30 s)
            if pool._processes:
                break
            await asyncio.sleep(0.01)
        for process in list(pool._processes.values()):
            if process.pid is not None:
                os.kill(process.pid, signal.SIGKILL)
        with pytest.raises(SniffError) as caught:
            await task
        assert caught.value.code == "corrupt_image"
        assert "the decoder stopped on it" in caught.value.message

    asyncio.run(kill_while_decoding())
    assert check(SAMPLES["rgb.png"], "full").details.dhash is not None  # type: ignore[attr-defined]
