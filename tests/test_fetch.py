"""Fetcher success path per URL against real HTTP servers on 127.0.0.x (tests/support/imageserver).

Also redirects, cancellation and temp files. Failures are in test_fetch_errors.py, bodies that
are too large, encoded or not images in test_fetch_bodies.py, politeness limits in
test_fetch_limits.py, pure logic in test_fetch_units.py, the SSRF guard in test_guard*.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from pathlib import Path

import pytest
import uvloop

from downloader.fetch import Fetcher, FetchOutcome
from downloader.fetch.fetcher import SPOOL_BYTES
from tests.support.fetching import assert_failed, fetch_all, fetch_one, leftovers, make_settings
from tests.support.imageserver import ImageServer, Reply, big_body, image_bytes

# -- success ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ext", "expected"),
    [
        ("jpg", "jpg"),
        ("jpeg", "jpg"),
        ("png", "png"),
        ("webp", "webp"),
        ("avif", "avif"),
        ("gif", "gif"),
    ],
)
def test_each_format_is_sniffed_with_dimensions(
    image_server: ImageServer, tmp_path: Path, ext: str, expected: str
) -> None:
    url = image_server.url(f"img/photo.{ext}?w=37&h=23")
    outcome = fetch_one(make_settings(), tmp_path, url)
    served = image_bytes("photo", ext, 37, 23)
    assert outcome.ok, outcome.error
    assert (outcome.format, outcome.width, outcome.height) == (expected, 37, 23)
    assert outcome.sha256 == hashlib.sha256(served).hexdigest()
    assert outcome.size == len(served)
    assert outcome.http_status == 200 and outcome.attempts == 1
    assert outcome.error_code is None and outcome.error is None
    assert outcome.final_url == url
    # a body that fits the in-memory spool comes back as bytes, with no temp file
    assert outcome.body == served and outcome.temp_path is None
    assert list(tmp_path.iterdir()) == []


def test_type_comes_from_the_bytes_not_the_header_or_extension(
    image_server: ImageServer, tmp_path: Path
) -> None:
    png = image_bytes("liar", "png")
    image_server.add_route(r"/liar\.jpg", lambda req: Reply(body=png, content_type="image/gif"))
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("liar.jpg"))
    assert outcome.ok and outcome.format == "png"


def test_identical_bytes_give_identical_sha256(image_server: ImageServer, tmp_path: Path) -> None:
    a, b, c = fetch_all(
        make_settings(),
        tmp_path,
        [image_server.url("same/1"), image_server.url("same/2", 1), image_server.url("img/c.jpg")],
    )
    assert a.ok and b.ok and c.ok
    assert a.sha256 == b.sha256 != c.sha256
    assert a.body == b.body != c.body


def test_request_headers(image_server: ImageServer, tmp_path: Path) -> None:
    settings = make_settings(user_agent="TestAgent/9")
    assert fetch_one(settings, tmp_path, image_server.url("img/h.jpg")).ok
    (record,) = image_server.requests
    assert record.headers["user-agent"] == "TestAgent/9"
    assert record.headers["accept-encoding"] == "identity"
    # originals by default: negotiating CDNs answer WebP/AVIF only when these are listed
    assert record.headers["accept"].startswith("image/jpeg")
    assert "webp" not in record.headers["accept"] and "avif" not in record.headers["accept"]
    assert "cookie" not in record.headers


def test_request_head_is_what_httpx_would_send(image_server: ImageServer, tmp_path: Path) -> None:
    """The fetcher writes its request head itself (no httpx.Request): Host names the address
    and port, the query is kept, and what a URL may not hold is percent-encoded as httpx does."""
    url = image_server.url("img/a b é.jpg") + "?v=1&w=2"
    assert fetch_one(make_settings(), tmp_path, url).ok
    (record,) = image_server.requests
    assert record.method == "GET"
    assert record.headers["host"] == record.host
    assert record.path == "/img/a%20b%20%C3%A9.jpg"
    assert record.query == {"v": "1", "w": "2"}


def test_cookies_are_not_kept(image_server: ImageServer, tmp_path: Path) -> None:
    image_server.add_route(
        r"/cookie/.*",
        lambda req: Reply.image("c", headers=[("Set-Cookie", "session=abc; Path=/")]),
    )

    async def main() -> None:
        async with Fetcher(make_settings(), tmp_path) as fetcher:
            assert (await fetcher.fetch(image_server.url("cookie/1"))).ok
            assert (await fetcher.fetch(image_server.url("cookie/2"))).ok

    asyncio.run(main())
    assert [r.headers.get("cookie") for r in image_server.requests] == [None, None]


def test_runs_under_uvloop(image_server: ImageServer, tmp_path: Path) -> None:
    async def main() -> FetchOutcome:
        async with Fetcher(make_settings(), tmp_path) as fetcher:
            return await fetcher.fetch(image_server.url("img/uv.webp"))

    assert uvloop.run(main()).ok


def test_stats_count_requests_retries_and_bytes(image_server: ImageServer, tmp_path: Path) -> None:
    async def main() -> Fetcher:
        async with Fetcher(make_settings(), tmp_path) as fetcher:
            await fetcher.fetch(image_server.url("img/s.jpg"))
            await fetcher.fetch(image_server.url("flaky/s?fails=1"))
            await fetcher.fetch(image_server.url("redirect/2"))
            await fetcher.fetch(image_server.url("status/404"))
            return fetcher

    stats = asyncio.run(main()).stats
    assert stats.requests == 1 + 2 + 3 + 1
    assert stats.retries == 1
    assert stats.redirects == 2
    assert stats.ok == 3 and stats.failed == 1
    expected = sum(len(image_bytes(n)) for n in ("s", "flaky-s", "redirected"))
    assert stats.bytes == expected
    assert stats.in_flight == 0 and stats.active == 0
    assert stats.as_dict()["requests"] == 7


def test_big_bodies_are_written_in_pieces(image_server: ImageServer, tmp_path: Path) -> None:
    data = image_bytes("large", "png", 700, 500)
    assert len(data) > 3 * SPOOL_BYTES
    image_server.add_route(r"/large", lambda req: Reply(body=data, content_type="image/png"))
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("large"))
    assert outcome.ok and (outcome.width, outcome.height) == (700, 500)
    assert outcome.temp_path is not None and outcome.temp_path.read_bytes() == data
    assert outcome.body is None  # over the spool: written to the temp file in pieces
    assert outcome.temp_path.parent == tmp_path
    assert re.fullmatch(rf"{os.getpid()}-[0-9a-f]{{32}}\.part", outcome.temp_path.name)
    assert outcome.sha256 == hashlib.sha256(data).hexdigest()


def test_many_images_concurrently(image_server: ImageServer, tmp_path: Path) -> None:
    settings = make_settings(max_global_concurrency=16, max_per_host_concurrency=4)
    urls = [image_server.url(f"img/n{i}.jpg", i % 3) for i in range(60)]
    outcomes = fetch_all(settings, tmp_path, urls)
    assert all(o.ok for o in outcomes)
    assert len({o.sha256 for o in outcomes}) == 60
    assert len({o.body for o in outcomes}) == 60  # small bodies: bytes, no temp files
    assert leftovers(tmp_path) == []


# -- redirects ----------------------------------------------------------------------------------


def test_redirects_are_followed(image_server: ImageServer, tmp_path: Path) -> None:
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("redirect/3"))
    assert outcome.ok and outcome.attempts == 1
    assert outcome.final_url == image_server.url("img/redirected.jpg")
    assert [r.path for r in image_server.requests] == [
        "/redirect/3",
        "/redirect/2",
        "/redirect/1",
        "/img/redirected.jpg",
    ]


def test_redirect_to_another_host(image_server: ImageServer, tmp_path: Path) -> None:
    target = image_server.url("img/elsewhere.png", 2)
    outcome = fetch_one(
        make_settings(), tmp_path, image_server.url(f"redirect-to?url={target}&status=301")
    )
    assert outcome.ok and outcome.final_url == target
    assert image_server.count(host=0) == 1 and image_server.count(host=2) == 1


def test_too_many_redirects(image_server: ImageServer, tmp_path: Path) -> None:
    settings = make_settings(max_redirects=4)
    outcome = fetch_one(settings, tmp_path, image_server.url("redirect/9"))
    assert_failed(outcome, "too_many_redirects")
    assert outcome.error == "The server redirected more than 4 times."
    assert image_server.count() == 5


def test_redirect_loop(image_server: ImageServer, tmp_path: Path) -> None:
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("redirect-loop"))
    assert_failed(outcome, "too_many_redirects")
    assert "loop" in (outcome.error or "")
    assert image_server.count() == 2


def test_redirect_with_zero_allowed(image_server: ImageServer, tmp_path: Path) -> None:
    outcome = fetch_one(make_settings(max_redirects=0), tmp_path, image_server.url("redirect/1"))
    assert_failed(outcome, "too_many_redirects")


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.2/a.jpg", "gopher://x/"])
def test_redirect_to_other_schemes(image_server: ImageServer, tmp_path: Path, target: str) -> None:
    outcome = fetch_one(make_settings(), tmp_path, image_server.url(f"redirect-to?url={target}"))
    assert_failed(outcome, "bad_url")
    assert image_server.count() == 1


# -- cancellation and temp files --------------------------------------------------------------


@pytest.mark.parametrize("spilled", [False, True])
def test_cancellation_propagates_and_removes_the_temp_file(
    image_server: ImageServer, tmp_path: Path, spilled: bool
) -> None:
    """Cancelled mid-body: small bodies are still in memory, big ones already in a file."""
    first = big_body(SPOOL_BYTES + 1000 if spilled else 1000)
    image_server.add_route(
        r"/stall",
        lambda req: Reply(body=[first, *[b"x"] * 50], length=len(first) + 50, interval=0.1),
    )

    async def main() -> Fetcher:
        async with Fetcher(make_settings(), tmp_path) as fetcher:
            task = asyncio.create_task(fetcher.fetch(image_server.url("stall")))
            for _ in range(200):  # wait until the body is arriving
                await asyncio.sleep(0.02)
                if fetcher.stats.bytes >= len(first):
                    break
            assert fetcher.stats.bytes >= len(first)
            assert bool(list(tmp_path.glob("*.part"))) == spilled
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return fetcher

    fetcher = asyncio.run(main())
    assert leftovers(tmp_path) == []
    assert fetcher.stats.in_flight == 0 and fetcher.stats.active == 0


def test_fetch_needs_an_open_fetcher(tmp_path: Path) -> None:
    fetcher = Fetcher(make_settings(), tmp_path)
    with pytest.raises(RuntimeError):
        asyncio.run(fetcher.fetch("http://127.0.0.2/a.jpg"))
