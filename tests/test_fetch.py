"""Fetcher behaviour per URL against real HTTP servers on 127.0.0.x (tests/support/imageserver).

Politeness limits (concurrency, QPS, circuit breaker) are in test_fetch_limits.py, pure logic in
test_fetch_units.py, the SSRF guard in test_guard.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import uvloop

from downloader.fetch import Fetcher, FetchOutcome, remove_leftovers
from downloader.fetch.fetcher import DECODE_STEP, SPOOL_BYTES
from downloader.settings import Settings
from tests.support import imageserver
from tests.support.fetching import fetch_all, make_settings
from tests.support.imageserver import (
    HTML_PAGE,
    ImageServer,
    Reply,
    Req,
    big_body,
    closed_port_url,
    image_bytes,
)

MB = 1024 * 1024

image_server = imageserver.image_server  # the fixture


def fetch_one(settings: Settings, tmp_path: Path, url: str) -> FetchOutcome:
    return fetch_all(settings, tmp_path, [url])[0]


def leftovers(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.iterdir())


def assert_failed(outcome: FetchOutcome, code: str) -> None:
    assert not outcome.ok
    assert outcome.error_code == code, (outcome.error_code, outcome.error)
    assert outcome.error and outcome.error.endswith(".")
    assert outcome.temp_path is None and outcome.sha256 is None


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
    assert outcome.temp_path is not None and outcome.temp_path.read_bytes() == served
    assert outcome.temp_path.parent == tmp_path
    assert re.fullmatch(rf"{os.getpid()}-[0-9a-f]{{32}}\.part", outcome.temp_path.name)


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
    assert a.temp_path != b.temp_path


def test_request_headers(image_server: ImageServer, tmp_path: Path) -> None:
    settings = make_settings(user_agent="TestAgent/9")
    assert fetch_one(settings, tmp_path, image_server.url("img/h.jpg")).ok
    (record,) = image_server.requests
    assert record.headers["user-agent"] == "TestAgent/9"
    assert record.headers["accept-encoding"] == "identity"
    assert "image/avif" in record.headers["accept"]
    assert "cookie" not in record.headers


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


# -- HTTP errors and retries -----------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 451])
def test_other_4xx_fail_at_once(image_server: ImageServer, tmp_path: Path, status: int) -> None:
    outcome = fetch_one(make_settings(), tmp_path, image_server.url(f"status/{status}"))
    assert_failed(outcome, f"http_{status}")
    assert outcome.http_status == status and outcome.attempts == 1
    assert image_server.count() == 1
    assert leftovers(tmp_path) == []


def test_404_message(image_server: ImageServer, tmp_path: Path) -> None:
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("status/404"))
    assert outcome.error == "The server answered 404 Not Found."


def test_503_then_ok_is_retried(image_server: ImageServer, tmp_path: Path) -> None:
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("flaky/a?fails=2"))
    assert outcome.ok and outcome.attempts == 3
    assert outcome.sha256 == hashlib.sha256(image_bytes("flaky-a")).hexdigest()
    assert [r.status for r in image_server.requests] == [503, 503, 200]


@pytest.mark.parametrize("status", [408, 429, 500, 502, 504])
def test_retryable_statuses(image_server: ImageServer, tmp_path: Path, status: int) -> None:
    url = image_server.url(f"flaky/s{status}?fails=1&status={status}")
    outcome = fetch_one(make_settings(), tmp_path, url)
    assert outcome.ok and outcome.attempts == 2


def test_retries_are_limited(image_server: ImageServer, tmp_path: Path) -> None:
    settings = make_settings(max_retries=2)
    outcome = fetch_one(settings, tmp_path, image_server.url("flaky/b?fails=10"))
    assert_failed(outcome, "http_503")
    assert outcome.attempts == 3 and outcome.http_status == 503
    assert image_server.count() == 3


def test_no_retries_when_max_retries_is_zero(image_server: ImageServer, tmp_path: Path) -> None:
    outcome = fetch_one(make_settings(max_retries=0), tmp_path, image_server.url("flaky/z"))
    assert_failed(outcome, "http_503")
    assert outcome.attempts == 1


def test_retry_after_seconds_is_honoured(image_server: ImageServer, tmp_path: Path) -> None:
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("ratelimit/a?after=1"))
    assert outcome.ok and outcome.attempts == 2
    first, second = image_server.requests
    assert first.status == 429 and second.status == 200
    assert first.end is not None
    assert second.start - first.end >= 0.9


def test_503_with_retry_after_is_honoured(image_server: ImageServer, tmp_path: Path) -> None:
    def unavailable_once(req: Req) -> Reply:
        if req.server.bump(f"503-{req.param('id')}") == 1:
            return Reply.text(503, "maintenance", headers=[("Retry-After", "1")])
        return Reply.image("after-503", "jpg")

    image_server.add_route(r"^/maintenance/(?P<id>\w+)$", unavailable_once)
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("maintenance/a"))
    assert outcome.ok and outcome.attempts == 2
    first, second = image_server.requests
    assert first.status == 503 and second.status == 200
    assert first.end is not None
    assert second.start - first.end >= 0.9  # the server's Retry-After, not the 20 ms backoff


def test_retry_after_http_date_is_honoured(image_server: ImageServer, tmp_path: Path) -> None:
    # HTTP dates have whole seconds: "now + 2 s" is between 1 and 2 s away when sent
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("ratelimit/d?after=2&date=1"))
    assert outcome.ok and outcome.attempts == 2
    first, second = image_server.requests
    assert first.end is not None
    assert second.start - first.end >= 0.9


def test_retry_after_is_capped(image_server: ImageServer, tmp_path: Path) -> None:
    settings = make_settings(retry_after_cap=0.5)
    started = time.monotonic()
    outcome = fetch_one(settings, tmp_path, image_server.url("ratelimit/c?after=30"))
    assert outcome.ok and outcome.attempts == 2
    first, second = image_server.requests
    assert first.end is not None
    assert second.start - first.end >= 0.4
    assert time.monotonic() - started < 20  # not the 30 s asked for


def test_retry_that_cannot_fit_the_deadline_is_not_attempted(
    image_server: ImageServer, tmp_path: Path
) -> None:
    settings = make_settings(download_deadline=3)
    started = time.monotonic()
    outcome = fetch_one(settings, tmp_path, image_server.url("ratelimit/e?after=20"))
    assert_failed(outcome, "http_429")
    assert outcome.attempts == 1
    assert image_server.count() == 1
    assert time.monotonic() - started < 15


# -- timeouts ----------------------------------------------------------------------------------


def test_deadline_ends_a_trickling_server(image_server: ImageServer, tmp_path: Path) -> None:
    settings = make_settings(download_deadline=1.5, http_read_timeout=10)
    started = time.monotonic()
    outcome = fetch_one(settings, tmp_path, image_server.url("trickle?bytes=100&interval=0.2"))
    elapsed = time.monotonic() - started
    assert_failed(outcome, "timeout")
    assert "1.5 s deadline" in (outcome.error or "")
    assert outcome.attempts == 1
    assert 1.3 <= elapsed < 10
    assert leftovers(tmp_path) == []


def test_deadline_covers_retries_and_backoff(image_server: ImageServer, tmp_path: Path) -> None:
    # each attempt trickles past the read timeout; the deadline stops the sequence
    settings = make_settings(
        download_deadline=2, http_read_timeout=0.4, max_retries=10, backoff_base=0.01
    )
    started = time.monotonic()
    outcome = fetch_one(settings, tmp_path, image_server.url("slow/1/x"))
    elapsed = time.monotonic() - started
    assert_failed(outcome, "timeout")
    assert 2 <= outcome.attempts < 11
    assert elapsed < 10


def test_read_timeout_is_retried(image_server: ImageServer, tmp_path: Path) -> None:
    settings = make_settings(http_read_timeout=0.3, max_retries=1)
    outcome = fetch_one(settings, tmp_path, image_server.url("hang"))
    assert_failed(outcome, "timeout")
    assert outcome.attempts == 2
    assert "did not answer within 0.3 s" in (outcome.error or "")
    assert image_server.count("/hang") == 2


def test_slow_answer_within_limits_is_fine(image_server: ImageServer, tmp_path: Path) -> None:
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("slow/0.3/y"))
    assert outcome.ok and outcome.attempts == 1


# -- size limits and encodings ------------------------------------------------------------------


def test_content_length_over_the_limit_is_refused_before_reading(
    image_server: ImageServer, tmp_path: Path
) -> None:
    async def main() -> tuple[FetchOutcome, int]:
        async with Fetcher(make_settings(max_image_size_mb=1), tmp_path) as fetcher:
            outcome = await fetcher.fetch(image_server.url("big"))
            return outcome, fetcher.stats.bytes

    outcome, received = asyncio.run(main())
    assert_failed(outcome, "too_large")
    assert "announced 3 MB" in (outcome.error or "")
    assert received == 0
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("mode", ["chunked", "close"])
def test_body_without_length_stops_at_the_limit(
    image_server: ImageServer, tmp_path: Path, mode: str
) -> None:
    async def main() -> tuple[FetchOutcome, int]:
        async with Fetcher(make_settings(max_image_size_mb=1), tmp_path) as fetcher:
            outcome = await fetcher.fetch(image_server.url(f"big/{mode}?size={20 * MB}"))
            return outcome, fetcher.stats.bytes

    outcome, received = asyncio.run(main())
    assert_failed(outcome, "too_large")
    assert "larger than the 1 MB limit" in (outcome.error or "")
    assert received < 2 * MB  # stopped near the limit, not after 20 MB
    assert leftovers(tmp_path) == []


def test_gzip_bomb_ends_as_too_large(image_server: ImageServer, tmp_path: Path) -> None:
    async def main() -> tuple[FetchOutcome, int]:
        async with Fetcher(make_settings(max_image_size_mb=1), tmp_path) as fetcher:
            outcome = await fetcher.fetch(image_server.url("gzip-bomb?mb=256"))
            return outcome, fetcher.stats.bytes

    outcome, decoded = asyncio.run(main())
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
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("brotli/b.jpg"))
    assert_failed(outcome, "bad_encoding")
    assert "(br)" in (outcome.error or "")
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


# -- connections ----------------------------------------------------------------------------------


def test_connection_refused_is_retried(tmp_path: Path) -> None:
    outcome = fetch_one(make_settings(max_retries=2), tmp_path, closed_port_url())
    assert_failed(outcome, "connection_error")
    assert outcome.attempts == 3
    assert outcome.error is not None and outcome.error.startswith("Could not connect")


def test_dropped_connection_is_retried(image_server: ImageServer, tmp_path: Path) -> None:
    outcome = fetch_one(make_settings(max_retries=1), tmp_path, image_server.url("drop"))
    assert_failed(outcome, "connection_error")
    assert outcome.attempts == 2
    assert image_server.count("/drop") == 2


@pytest.mark.parametrize(
    "url",
    ["ftp://127.0.0.2/a.jpg", "http://", "http:///a.jpg", "http://127.0.0.2:99999/a", "nonsense"],
)
def test_bad_urls(tmp_path: Path, url: str) -> None:
    outcome = fetch_one(make_settings(), tmp_path, url)
    assert_failed(outcome, "bad_url")
    assert outcome.attempts == 0


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


def test_big_bodies_are_written_in_pieces(image_server: ImageServer, tmp_path: Path) -> None:
    data = image_bytes("large", "png", 700, 500)
    assert len(data) > 3 * SPOOL_BYTES
    image_server.add_route(r"/large", lambda req: Reply(body=data, content_type="image/png"))
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("large"))
    assert outcome.ok and (outcome.width, outcome.height) == (700, 500)
    assert outcome.temp_path is not None and outcome.temp_path.read_bytes() == data
    assert outcome.sha256 == hashlib.sha256(data).hexdigest()


def test_non_image_is_refused_before_it_is_all_read(
    image_server: ImageServer, tmp_path: Path
) -> None:
    page = HTML_PAGE * 100_000  # 9 MB of HTML
    image_server.add_route(r"/page", lambda req: Reply(body=[page[:1000], page[1000:]]))

    async def main() -> tuple[FetchOutcome, int]:
        async with Fetcher(make_settings(), tmp_path) as fetcher:
            outcome = await fetcher.fetch(image_server.url("page"))
            return outcome, fetcher.stats.bytes

    outcome, received = asyncio.run(main())
    assert_failed(outcome, "not_an_image")
    assert received < len(page) // 2
    assert leftovers(tmp_path) == []


def test_fetch_needs_an_open_fetcher(tmp_path: Path) -> None:
    fetcher = Fetcher(make_settings(), tmp_path)
    with pytest.raises(RuntimeError):
        asyncio.run(fetcher.fetch("http://127.0.0.2/a.jpg"))


def test_remove_leftovers_only_touches_dead_processes(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    mine = tmp_path / f"{os.getpid()}-{'a' * 32}.part"
    theirs = tmp_path / f"{dead_pid}-{'b' * 32}.part"
    other = tmp_path / "notes.txt"
    for path in (mine, theirs, other):
        path.write_bytes(b"x")
    assert remove_leftovers(tmp_path) == 1
    assert mine.exists() and other.exists() and not theirs.exists()
    assert remove_leftovers(tmp_path, all_pids=True) == 1
    assert not mine.exists() and other.exists()


def test_many_images_concurrently(image_server: ImageServer, tmp_path: Path) -> None:
    settings = make_settings(max_global_concurrency=16, max_per_host_concurrency=4)
    urls = [image_server.url(f"img/n{i}.jpg", i % 3) for i in range(60)]
    outcomes = fetch_all(settings, tmp_path, urls)
    assert all(o.ok for o in outcomes)
    assert len({o.sha256 for o in outcomes}) == 60
    assert len(leftovers(tmp_path)) == 60


def test_route_errors_are_visible(image_server: ImageServer, tmp_path: Path) -> None:
    def broken(req: Req) -> Reply:
        raise ValueError("oops")

    image_server.add_route(r"/broken", broken)
    outcome = fetch_one(make_settings(max_retries=0), tmp_path, image_server.url("broken"))
    assert outcome.error_code == "http_500"


# -- TLS ----------------------------------------------------------------------------------------


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.2")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.2"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_certificates_are_verified(tmp_path: Path) -> None:
    """An untrusted certificate fails the download (and is not retried): verification is on."""
    import ssl

    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    temp = tmp_path / "temp"
    handshakes: list[bool] = []

    async def main() -> FetchOutcome:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            handshakes.append(True)
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.2", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            async with Fetcher(make_settings(), temp) as fetcher:
                return await fetcher.fetch(f"https://127.0.0.2:{port}/img/a.jpg")
        finally:
            server.close()
            await server.wait_closed()

    outcome = asyncio.run(main())
    assert_failed(outcome, "connection_error")
    assert outcome.error is not None and outcome.error.startswith("The secure connection failed")
    assert "certificate" in outcome.error.lower()
    assert outcome.attempts == 1
    assert handshakes == []  # no request was ever served
