"""The fetch layer on real networks (issue 20): original formats from negotiating CDNs, per-request
headers (and what a redirect to another host keeps of them), br/zstd bodies and their bombs,
and happy eyeballs past a black-holed address. Real servers on loopback only."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import brotli
import pytest
import zstandard

from downloader.fetch import Fetcher, FetchOutcome
from downloader.fetch.body import DECODE_STEP
from downloader.guard import Guard, GuardedResolver, Resolver, ResolveResult
from downloader.settings import Settings
from tests.support.fetching import (
    MB,
    assert_failed,
    fetch_counting_bytes,
    fetch_one,
    make_settings,
)
from tests.support.imageserver import ImageServer, Reply, Req, image_bytes

JPEG = image_bytes("original", "jpg", 40, 30)
WEBP = image_bytes("converted", "webp", 40, 30)


# -- originals by default ------------------------------------------------------------------------


def negotiate(req: Req) -> Reply:
    """What Cloudinary f_auto, Shopify's CDN and imgix auto=format do: WebP (or AVIF) only for
    a client whose Accept lists it, the original otherwise."""
    if "image/webp" in req.record.headers.get("accept", ""):
        return Reply(body=WEBP, content_type="image/webp", headers=[("Vary", "Accept")])
    return Reply(body=JPEG, content_type="image/jpeg", headers=[("Vary", "Accept")])


def test_a_negotiating_cdn_sends_the_original_jpeg_by_default(
    image_server: ImageServer, tmp_path: Path
) -> None:
    image_server.add_route(r"/cdn/.*", negotiate)
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("cdn/shoe"))
    assert outcome.ok and outcome.format == "jpg" and outcome.body == JPEG


def test_accept_any_format_lets_the_cdn_convert(image_server: ImageServer, tmp_path: Path) -> None:
    image_server.add_route(r"/cdn/.*", negotiate)
    settings = make_settings(accept_any_format=True)
    outcome = fetch_one(settings, tmp_path, image_server.url("cdn/shoe"))
    assert outcome.ok and outcome.format == "webp" and outcome.body == WEBP


# -- per-request headers -------------------------------------------------------------------------


def fetch_with(
    settings: Settings, tmp_path: Path, url: str, headers: dict[str, str]
) -> FetchOutcome:
    async def main() -> FetchOutcome:
        async with Fetcher(settings, tmp_path) as fetcher:
            return await fetcher.fetch(url, headers=headers)

    return asyncio.run(main())


SECRETS = {
    "Referer": "https://shop.example/",
    "Cookie": "session=s3cr3t",
    "Authorization": "Bearer t0ken",
    "user-agent": "Mozilla/5.0 (shop)",  # overrides the default, whatever its case
}


def test_a_hotlink_protected_image_needs_the_shops_referer(
    image_server: ImageServer, tmp_path: Path
) -> None:
    def hotlink(req: Req) -> Reply:
        if req.record.headers.get("referer") != "https://shop.example/":
            return Reply.text(403, "hotlinking not allowed")
        return Reply(body=JPEG, content_type="image/jpeg")

    image_server.add_route(r"/protected/.*", hotlink)
    url = image_server.url("protected/a.jpg")
    assert_failed(fetch_one(make_settings(), tmp_path, url), "http_403")
    outcome = fetch_with(make_settings(), tmp_path, url, SECRETS)
    assert outcome.ok, outcome
    seen = image_server.requests[-1].headers
    assert seen["user-agent"] == "Mozilla/5.0 (shop)"
    assert seen["cookie"] == "session=s3cr3t" and seen["authorization"] == "Bearer t0ken"
    assert seen["accept"].startswith("image/jpeg")  # the defaults not overridden stay


def test_credentials_are_not_carried_to_another_host_by_a_redirect(
    image_server: ImageServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = image_server.url("img/other.jpg", host=1)  # 127.0.0.3: another host
    image_server.add_route(r"/away", lambda req: Reply.redirect(other))
    image_server.add_route(r"/stay", lambda req: Reply.redirect("/img/same.jpg"))
    settings = make_settings()
    caplog.set_level("DEBUG")

    assert fetch_with(settings, tmp_path, image_server.url("away"), SECRETS).ok
    first, second = image_server.requests
    assert first.headers["cookie"] == "session=s3cr3t"
    assert "cookie" not in second.headers and "authorization" not in second.headers
    assert second.headers["referer"] == "https://shop.example/"  # not a credential: kept
    assert second.headers["user-agent"] == "Mozilla/5.0 (shop)"

    image_server.reset()
    assert fetch_with(settings, tmp_path, image_server.url("stay"), SECRETS).ok
    first, second = image_server.requests
    assert second.headers["cookie"] == "session=s3cr3t"  # same host: kept
    assert second.headers["authorization"] == "Bearer t0ken"
    assert "s3cr3t" not in caplog.text and "t0ken" not in caplog.text


# -- br and zstd ---------------------------------------------------------------------------------


def encoded(data: bytes, encoding: str) -> bytes:
    if encoding == "br":
        return brotli.compress(data)
    return zstandard.ZstdCompressor().compress(data)


@pytest.mark.parametrize("encoding", ["br", "zstd"])
def test_br_and_zstd_bodies_are_decoded(
    image_server: ImageServer, tmp_path: Path, encoding: str
) -> None:
    body = image_bytes("encoded", "png", 300, 200)
    image_server.add_route(
        r"/enc",
        lambda req: Reply(body=encoded(body, encoding), headers=[("Content-Encoding", encoding)]),
    )
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("enc"))
    assert outcome.ok, outcome
    assert outcome.body == body and outcome.size == len(body) and outcome.format == "png"


@pytest.mark.parametrize("encoding", ["br", "zstd"])
@pytest.mark.parametrize("chunked", [False, True])
def test_br_and_zstd_bombs_end_as_too_large(
    image_server: ImageServer, tmp_path: Path, encoding: str, chunked: bool
) -> None:
    # A PNG signature, then 200 MB of zeros: a few hundred KB (br) or a few KB (zstd) on the wire.
    bomb = encoded(image_bytes("bomb", "png", 8, 8)[:64] + bytes(200 * MB), encoding)
    assert len(bomb) < MB
    image_server.add_route(
        r"/bomb",
        lambda req: Reply(
            body=bomb,
            headers=[("Content-Encoding", encoding)],
            length=None if chunked else "auto",
            chunked=chunked,
        ),
    )
    settings = make_settings(max_image_size_mb=1)
    outcome, taken = fetch_counting_bytes(settings, tmp_path, image_server.url("bomb"))
    assert_failed(outcome, "too_large")
    assert taken <= MB + 2 * DECODE_STEP  # decoding stopped near the limit


@pytest.mark.parametrize("encoding", ["br", "zstd"])
def test_corrupt_br_and_zstd_are_bad_encoding(
    image_server: ImageServer, tmp_path: Path, encoding: str
) -> None:
    garbage = (b"\x28\xb5\x2f\xfd" if encoding == "zstd" else b"\xff\xff") + b"\x99" * 300
    image_server.add_route(
        r"/corrupt", lambda req: Reply(body=garbage, headers=[("Content-Encoding", encoding)])
    )
    outcome = fetch_one(make_settings(max_retries=0), tmp_path, image_server.url("corrupt"))
    assert_failed(outcome, "bad_encoding")


def test_a_cut_br_stream_is_truncated(image_server: ImageServer, tmp_path: Path) -> None:
    whole = brotli.compress(image_bytes("cut", "png", 300, 200))
    image_server.add_route(
        r"/cut",
        lambda req: Reply(
            body=whole[: len(whole) // 2], headers=[("Content-Encoding", "br")], length=None
        ),
    )
    outcome = fetch_one(make_settings(max_retries=0), tmp_path, image_server.url("cut"))
    assert_failed(outcome, "truncated")


# -- happy eyeballs ------------------------------------------------------------------------------


@contextlib.contextmanager
def black_hole(address: str = "127.0.0.7") -> Iterator[int]:
    """A port on loopback that never answers a connection attempt: a listener with a full
    accept queue (Linux drops further SYNs), like an address whose route is black-holed."""
    listener = socket.socket()
    listener.bind((address, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect((address, port))
        fillers.append(filler)
    time.sleep(0.1)
    try:
        yield port
    finally:
        for sock in [*fillers, listener]:
            sock.close()


class TwoAddresses:
    """A DNS where dual.test resolves to the black hole first and the live server second
    (what a host with a broken IPv6 route and a working IPv4 one looks like)."""

    def __init__(self, first: tuple[str, int], second: tuple[str, int]) -> None:
        self.answers = [first, second]

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=answer_port,
                family=socket.AF_INET,
                proto=socket.IPPROTO_TCP,
                flags=socket.AI_NUMERICHOST,
            )
            for address, answer_port in self.answers
        ]

    async def close(self) -> None:
        return None


class DnsGuard(Guard):
    def __init__(self, settings: Settings, dns: Resolver) -> None:
        super().__init__(settings)
        self.dns = dns

    def resolver(self, inner: Resolver | None = None) -> GuardedResolver:
        return GuardedResolver(self, inner or self.dns)


@pytest.mark.timeout(60)
def test_a_black_holed_first_address_does_not_stall_the_connection(
    image_server: ImageServer, tmp_path: Path
) -> None:
    live_host, live_port = image_server.host(0).rsplit(":", 1)
    settings = make_settings(http_connect_timeout=10, max_retries=0)
    with black_hole() as hole_port:
        guard = DnsGuard(
            settings, TwoAddresses(("127.0.0.7", hole_port), (live_host, int(live_port)))
        )

        async def main() -> FetchOutcome:
            async with Fetcher(settings, tmp_path, guard=guard) as fetcher:
                return await fetcher.fetch(f"http://dual.test:{live_port}/img/a.jpg")

        started = time.monotonic()
        outcome = asyncio.run(main())
        took = time.monotonic() - started
    assert outcome.ok, outcome  # one attempt after the other would spend the whole timeout
    assert took < settings.http_connect_timeout, took
    assert image_server.count() == 1
