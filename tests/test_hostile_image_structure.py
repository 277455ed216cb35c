"""Broken image files caught before they count as done (issue 26): the whole-file check.

Each file starts as a valid Pillow-encoded image and is then cut short, damaged, or forged;
the check walks the structure to its end without decoding pixels (`VERIFY_IMAGES=structure`,
always on) and fails it as `truncated_image`, `corrupt_image` or `decompression_bomb` with a
plain sentence. One of each kind is also served by a loopback server and fetched through the
real Fetcher.
"""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import pytest

from downloader.fetch.sniff import SniffError, image_info
from tests.support.fetching import assert_failed, fetch_one, make_settings
from tests.support.image_samples import (
    encode,
    flip,
    inflating_without_end,
    picture,
    png_chunks,
    png_from,
    png_with,
    samples,
)
from tests.support.imageserver import ImageServer, Reply, image_server  # noqa: F401

SAMPLES = samples()
#: Formats whose end the walk reaches without decoding (a bare JPEG XL codestream has no end
#: marker: it is decoded instead, see test_image_formats.py).
WALKED = [name for name in SAMPLES if not name.endswith(".jxl")]


def refused(data: bytes) -> SniffError:
    with pytest.raises(SniffError) as caught:
        image_info(None, data[:64], data)
    return caught.value


@pytest.mark.parametrize("name", WALKED)
@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8, 0.97])
def test_a_file_cut_short_is_truncated(name: str, fraction: float) -> None:
    data = SAMPLES[name]
    cut = data[: int(len(data) * fraction)]
    error = refused(cut)
    assert error.code == "truncated_image", (name, error.code, error.message)
    assert "cut short" in error.message


@pytest.mark.parametrize("name", ["baseline.jpg", "progressive.jpg", "cmyk.jpg"])
def test_a_jpeg_without_its_end_marker_is_truncated(name: str) -> None:
    data = SAMPLES[name]
    assert data.endswith(b"\xff\xd9")
    error = refused(data[:-2])
    assert (error.code, error.message) == (
        "truncated_image",
        "The JPEG ends before its image data does (the file is cut short).",
    )


def test_stray_bytes_between_jpeg_segments_are_skipped_as_decoders_do() -> None:
    data = SAMPLES["baseline.jpg"]
    app0_end = 4 + int.from_bytes(data[4:6], "big")
    junk = data[:app0_end] + b"\x00\x00\x17" + data[app0_end:]
    assert image_info(None, junk[:64], junk).format == "jpg"


def test_a_png_missing_its_end_chunk_is_truncated() -> None:
    data = SAMPLES["rgb.png"]
    error = refused(data[:-12])  # IEND is the last 12 bytes
    assert error.code == "truncated_image"
    assert "IEND" in error.message


@pytest.mark.parametrize("name", ["rgb.png", "rgba.png", "animated.png", "icc.png"])
def test_a_png_with_damaged_compressed_data_is_corrupt(name: str) -> None:
    data = SAMPLES[name]
    idat = data.index(b"IDAT")
    error = refused(flip(data, idat + 4 + 20))
    assert error.code == "corrupt_image"
    assert "IDAT chunk is damaged" in error.message


def _forged_header(**fields: int) -> bytes:
    chunks = png_chunks(SAMPLES["rgb.png"])
    names = ("width", "height", "depth", "colour", "compression", "filter", "interlace")
    values = dict(zip(names, struct.unpack(">IIBBBBB", chunks[0][1]), strict=True)) | fields
    chunks[0] = (b"IHDR", struct.pack(">IIBBBBB", *values.values()))
    return png_from(chunks)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"compression": 1}, "compression method 1"),
        ({"filter": 3}, "filter method 3"),
        ({"depth": 4}, "bit depth 4 for colour type 2"),
        ({"colour": 5}, "colour type 5"),
        ({"width": 0}, "0x90"),
    ],
)
def test_a_png_with_a_forged_header_is_corrupt(fields: dict[str, int], words: str) -> None:
    error = refused(_forged_header(**fields))
    assert error.code == "corrupt_image"
    assert words in error.message


@pytest.mark.parametrize("kind", [b"zTXt", b"iCCP"])
def test_png_metadata_that_inflates_without_end_is_a_bomb(kind: bytes) -> None:
    payload = b"Comment\x00\x00" + inflating_without_end(512)  # 512 MiB from ~0.5 MB
    data = png_with(SAMPLES["rgb.png"], kind, payload)
    started = time.monotonic()
    error = refused(data)
    assert error.code == "decompression_bomb"
    assert kind.decode() in error.message
    assert time.monotonic() - started < 5  # bounded work: 1 MiB inflated, not 512


def test_png_text_chunks_adding_up_past_the_bound_are_a_bomb() -> None:
    data = SAMPLES["rgb.png"]
    one = b"Comment\x00\x00" + zlib.compress(bytes(1000 * 1000), 9)  # 1 MB each: allowed alone
    for _ in range(20):
        data = png_with(data, b"zTXt", one)
    assert refused(data).code == "decompression_bomb"


def test_an_apng_with_frames_but_no_frame_control_is_corrupt() -> None:
    chunks = png_chunks(SAMPLES["animated.png"])
    without_controls = [c for c in chunks if c[0] not in (b"fcTL", b"fdAT")]
    error = refused(png_from(without_controls))
    assert error.code == "corrupt_image"
    assert "3 frames but has 0 frame controls" in error.message
    error = refused(png_from([c for c in chunks if c[0] != b"fcTL"]))  # frame data left
    assert error.code == "corrupt_image"
    assert "APNG" in error.message


def test_an_apng_with_frame_chunks_out_of_order_is_corrupt() -> None:
    chunks = png_chunks(SAMPLES["animated.png"])
    index = [i for i, c in enumerate(chunks) if c[0] == b"fcTL"][1]
    kind, payload = chunks[index]
    chunks[index] = (kind, struct.pack(">I", 99) + payload[4:])
    assert refused(png_from(chunks)).code == "corrupt_image"


def test_a_gif_without_its_trailer_is_truncated() -> None:
    data = SAMPLES["animated.gif"]
    assert data.endswith(b";")
    assert refused(data[:-1]).code == "truncated_image"


def test_a_webp_whose_riff_size_is_forged_is_truncated() -> None:
    data = SAMPLES["lossy.webp"]
    forged = data[:4] + struct.pack("<I", len(data) * 3) + data[8:]
    assert refused(forged).code == "truncated_image"


def test_a_tiff_whose_strip_lies_past_the_end_is_truncated() -> None:
    data = SAMPLES["rgb.tif"]
    error = refused(data[:-100])
    assert (error.code, error.message) == (
        "truncated_image",
        "The TIFF ends before its image data does (page 1; the file is cut short).",
    )


def test_a_tiff_page_larger_than_the_limit_is_a_bomb() -> None:
    data = bytearray(SAMPLES["multipage.tif"])
    assert data[:4] == b"II*\x00"
    (ifd,) = struct.unpack_from("<I", data, 4)
    (ifd,) = struct.unpack_from("<I", data, ifd + 2 + 12 * struct.unpack_from("<H", data, ifd)[0])
    (count,) = struct.unpack_from("<H", data, ifd)  # page 2's directory
    for index in range(count):
        entry = ifd + 2 + 12 * index
        if struct.unpack_from("<H", data, entry)[0] in (256, 257):  # width, height: 60000
            data[entry + 2 : entry + 12] = struct.pack("<HII", 4, 1, 60000)
    error = refused(bytes(data))
    assert error.code == "decompression_bomb"
    assert "Page 2 of the TIFF declares 60000x60000 pixels" in error.message


def test_a_bmp_cut_short_is_truncated() -> None:
    data = SAMPLES["rgb.bmp"]
    assert refused(data[: len(data) - 400]).code == "truncated_image"


def test_a_heif_whose_data_lies_past_the_end_is_truncated() -> None:
    assert refused(SAMPLES["still.heic"][:-50]).code == "truncated_image"
    assert refused(SAMPLES["still.avif"][:-50]).code == "truncated_image"


# -- through a loopback server and the real Fetcher ----------------------------------------------

SERVED = {
    "cut.jpg": (SAMPLES["baseline.jpg"][:-300], "truncated_image"),
    "no-iend.png": (SAMPLES["rgb.png"][:-12], "truncated_image"),
    "damaged.png": (
        flip(SAMPLES["rgb.png"], SAMPLES["rgb.png"].index(b"IDAT") + 30),
        "corrupt_image",
    ),
    "method1.png": (_forged_header(compression=1), "corrupt_image"),
    "textbomb.png": (
        png_with(SAMPLES["rgb.png"], b"zTXt", b"k\x00\x00" + inflating_without_end(256)),
        "decompression_bomb",
    ),
    "cut.tif": (SAMPLES["lzw.tif"][:-200], "truncated_image"),
    "cut.gif": (SAMPLES["still.gif"][:-1], "truncated_image"),
    "cut.heic": (SAMPLES["still.heic"][:-100], "truncated_image"),
}


@pytest.mark.parametrize("name", sorted(SERVED))
def test_broken_files_fail_through_the_fetcher(
    image_server: ImageServer,  # noqa: F811
    tmp_path: Path,
    name: str,
) -> None:
    body, code = SERVED[name]
    image_server.add_route(
        r"/broken/" + name, lambda req: Reply(body=body, content_type="image/png")
    )
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("broken/" + name))
    assert_failed(outcome, code)
    assert outcome.error and outcome.error.endswith(".")


def test_big_broken_files_fail_through_the_fetcher_from_their_temp_file(
    image_server: ImageServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Bodies over 256 KiB are spooled to a file and walked in a thread: same outcome."""
    big = encode(picture((900, 700)), "TIFF")
    assert len(big) > 1024 * 1024
    image_server.add_route(
        r"/big.tif", lambda req: Reply(body=big[:-5000], content_type="image/tiff")
    )
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("big.tif"))
    assert_failed(outcome, "truncated_image")
    assert not list(tmp_path.glob("*.part"))
