"""Fetcher checks on response bodies: size limits, content encodings, and bodies that are not
images, against real HTTP servers on 127.0.0.x (tests/support/imageserver)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from downloader.fetch.fetcher import DECODE_STEP
from tests.support.fetching import (
    MB,
    assert_failed,
    fetch_counting_bytes,
    fetch_one,
    leftovers,
    make_settings,
)
from tests.support.imageserver import HTML_PAGE, ImageServer, Reply, image_bytes

# -- size limits and encodings ------------------------------------------------------------------


def test_content_length_over_the_limit_is_refused_before_reading(
    image_server: ImageServer, tmp_path: Path
) -> None:
    outcome, received = fetch_counting_bytes(
        make_settings(max_image_size_mb=1), tmp_path, image_server.url("big")
    )
    assert_failed(outcome, "too_large")
    assert "announced 3 MB" in (outcome.error or "")
    assert received == 0
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("mode", ["chunked", "close"])
def test_body_without_length_stops_at_the_limit(
    image_server: ImageServer, tmp_path: Path, mode: str
) -> None:
    url = image_server.url(f"big/{mode}?size={20 * MB}")
    outcome, received = fetch_counting_bytes(make_settings(max_image_size_mb=1), tmp_path, url)
    assert_failed(outcome, "too_large")
    assert "larger than the 1 MB limit" in (outcome.error or "")
    assert received < 2 * MB  # stopped near the limit, not after 20 MB
    assert leftovers(tmp_path) == []


def test_gzip_bomb_ends_as_too_large(image_server: ImageServer, tmp_path: Path) -> None:
    outcome, decoded = fetch_counting_bytes(
        make_settings(max_image_size_mb=1), tmp_path, image_server.url("gzip-bomb?mb=256")
    )
    assert_failed(outcome, "too_large")
    assert decoded <= MB + DECODE_STEP  # inflated in bounded steps, stopped at the limit
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("path", "name", "fmt"), [("gzip/g.jpg", "g", "jpg"), ("deflate/d.png", "d", "png")]
)
def test_gzip_and_deflate_bodies_are_decoded(
    image_server: ImageServer, tmp_path: Path, path: str, name: str, fmt: str
) -> None:
    outcome = fetch_one(make_settings(), tmp_path, image_server.url(path))
    assert outcome.ok and outcome.format == fmt
    assert outcome.sha256 == hashlib.sha256(image_bytes(name, fmt)).hexdigest()
    assert outcome.size == len(image_bytes(name, fmt))


def test_raw_deflate_is_decoded_too(image_server: ImageServer, tmp_path: Path) -> None:
    import zlib

    data = image_bytes("raw", "gif")
    comp = zlib.compressobj(wbits=-15)
    body = comp.compress(data) + comp.flush()
    image_server.add_route(
        r"/rawdeflate", lambda req: Reply(body=body, headers=[("Content-Encoding", "deflate")])
    )
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("rawdeflate"))
    assert outcome.ok and outcome.sha256 == hashlib.sha256(data).hexdigest()


def test_unsupported_encoding_is_refused(image_server: ImageServer, tmp_path: Path) -> None:
    # br and zstd are decoded now (tests/test_fetch_encodings.py); compress never was
    image_server.add_route(
        r"/lzw",
        lambda req: Reply(
            body=b"\x1f\x9d\x90" + b"\x00" * 200, headers=[("Content-Encoding", "compress")]
        ),
    )
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("lzw"))
    assert_failed(outcome, "bad_encoding")
    assert "(compress)" in (outcome.error or "")
    assert outcome.attempts == 1


def test_corrupt_gzip_is_refused(image_server: ImageServer, tmp_path: Path) -> None:
    image_server.add_route(
        r"/badgzip",
        lambda req: Reply(
            body=b"\x1f\x8b\x08\x00" + b"\xff" * 200, headers=[("Content-Encoding", "gzip")]
        ),
    )
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("badgzip"))
    assert_failed(outcome, "bad_encoding")


# -- bodies that are not images ----------------------------------------------------------------


def test_html_labelled_as_jpeg_is_not_an_image(image_server: ImageServer, tmp_path: Path) -> None:
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("html-as-jpeg"))
    assert_failed(outcome, "not_an_image")
    assert "HTML" in (outcome.error or "")
    assert outcome.attempts == 1
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"%PDF-1.7\n...", "PDF"),
        (b"BM" + bytes(60), "BMP"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        (b'{"error": "nope"}', "JSON"),
        (b"\xff\xd8\xff\xe0" + b"garbage" * 20, "header is unreadable"),
    ],
)
def test_other_non_images(
    image_server: ImageServer, tmp_path: Path, body: bytes, words: str
) -> None:
    image_server.add_route(r"/thing", lambda req: Reply(body=body, content_type="image/png"))
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("thing"))
    assert_failed(outcome, "not_an_image")
    assert words in (outcome.error or "")


def test_empty_body(image_server: ImageServer, tmp_path: Path) -> None:
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("empty"))
    assert_failed(outcome, "empty_body")
    assert outcome.attempts == 1
    assert leftovers(tmp_path) == []


def test_truncated_body(image_server: ImageServer, tmp_path: Path) -> None:
    outcome = fetch_one(make_settings(max_retries=1), tmp_path, image_server.url("truncated"))
    assert_failed(outcome, "truncated")
    assert outcome.attempts == 2  # a broken transfer is worth one more try
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("level", ["error", "warn"])
def test_decompression_bomb(image_server: ImageServer, tmp_path: Path, level: str) -> None:
    outcome = fetch_one(make_settings(), tmp_path, image_server.url(f"bomb?level={level}"))
    assert_failed(outcome, "decompression_bomb")
    assert "decompression bomb" in (outcome.error or "")
    assert leftovers(tmp_path) == []


def test_non_image_is_refused_before_it_is_all_read(
    image_server: ImageServer, tmp_path: Path
) -> None:
    page = HTML_PAGE * 100_000  # 9 MB of HTML
    image_server.add_route(r"/page", lambda req: Reply(body=[page[:1000], page[1000:]]))

    outcome, received = fetch_counting_bytes(make_settings(), tmp_path, image_server.url("page"))
    assert_failed(outcome, "not_an_image")
    assert received < len(page) // 2
    assert leftovers(tmp_path) == []
