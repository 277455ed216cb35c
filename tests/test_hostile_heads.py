"""Hostile response heads and framing (issue 18): what a server sends cannot freeze the event
loop, grow memory without bound, outlive DOWNLOAD_DEADLINE, or leak bytes into a stored file.

The hostile servers are raw asyncio servers on 127.0.0.6, each in its own thread and event
loop (so a client that hogs its own loop cannot slow the server down), answering every request
with a scripted misbehaviour. The tests go through `Fetcher.fetch` only (URL in, outcome out),
so they hold for any wire implementation under it. Meanwhile an asyncio ticker in the fetcher's
loop records the longest stall of that loop, and good images from the `image_server` fixture
are fetched alongside, to show the rest of the work carries on.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from downloader.fetch import Fetcher, FetchOutcome
from downloader.settings import Settings
from tests.support.fetching import assert_failed, leftovers, make_settings
from tests.support.imageserver import ImageServer, image_bytes

HOST = "127.0.0.6"
Handler = Callable[[str, "HostileServer", asyncio.StreamWriter], Awaitable[bool]]
STALL_BOUND = 2.0  # the fetcher's loop never stops ticking for this long (the bug: minutes)
PNG = image_bytes("hostile", "png", 8, 8)
CHUNKED_PNG = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(PNG), PNG)


class HostileServer:
    """Answers each request with `handler(path, server, writer)`; the handler returns True to
    keep the connection for the next request. Counts connections and bytes sent."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.sent = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="hostile-server", daemon=True)

    def __enter__(self) -> HostileServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def url(self, path: str = "/x.png") -> str:
        return f"http://{HOST}:{self.port}{path}"

    def _run(self) -> None:
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode("ascii")
                if not await self.handler(path, self, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()
        self.sent += len(data)


def answer(body: bytes, *extra: str, status: str = "200 OK") -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def run_beside_good_images(
    settings: Settings, tmp_path: Path, url: str, good: list[str]
) -> tuple[FetchOutcome, list[FetchOutcome], float, float]:
    """Fetch `url` and the `good` URLs concurrently with one Fetcher while a ticker runs in the
    same loop: the hostile outcome, the good ones, the seconds the hostile fetch took, and the
    longest gap between two ticks."""

    async def main() -> tuple[FetchOutcome, list[FetchOutcome], float, float]:
        loop = asyncio.get_running_loop()
        longest = 0.0

        async def ticker() -> None:
            nonlocal longest
            last = loop.time()
            while True:
                await asyncio.sleep(0.02)
                now = loop.time()
                longest = max(longest, now - last)
                last = now

        took = 0.0

        async def hostile(fetcher: Fetcher) -> FetchOutcome:
            nonlocal took
            started = loop.time()
            outcome = await fetcher.fetch(url)
            took = loop.time() - started
            return outcome

        tick = asyncio.create_task(ticker())
        try:
            async with Fetcher(settings, tmp_path) as fetcher:
                outcome, *others = await asyncio.gather(
                    hostile(fetcher), *(fetcher.fetch(u) for u in good)
                )
        finally:
            tick.cancel()
        return outcome, others, took, longest

    return asyncio.run(main())


def check_bounded(
    image_server: ImageServer, tmp_path: Path, settings: Settings, url: str, code: str
) -> FetchOutcome:
    good = [image_server.url(f"img/good{i}.png") for i in range(4)]
    outcome, others, took, stall = run_beside_good_images(settings, tmp_path, url, good)
    assert took < 10, took  # DOWNLOAD_DEADLINE is 2 s in these tests
    assert stall < STALL_BOUND, stall
    assert_failed(outcome, code)
    assert all(o.ok for o in others), others
    assert leftovers(tmp_path) == []  # the good images are small: kept in memory
    return outcome


# -- caps on the head --------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_many_repeated_headers_fail_at_once_as_bad_response(
    image_server: ImageServer, tmp_path: Path
) -> None:
    # 300,000 copies of one header (2.4 MB): joining them one by one was quadratic and held
    # the event loop for minutes, where no deadline could fire.
    head = b"HTTP/1.1 200 OK\r\n" + b"X-Dup: value\r\n" * 300_000
    reply = head + f"Content-Length: {len(PNG)}\r\n\r\n".encode() + PNG

    async def handler(path: str, server: HostileServer, writer: asyncio.StreamWriter) -> bool:
        await server.send(writer, reply)
        return False

    settings = make_settings(download_deadline=2, http_read_timeout=5, max_retries=0)
    with HostileServer(handler) as server:
        outcome = check_bounded(image_server, tmp_path, settings, server.url(), "bad_response")
    assert "more than 100 headers" in (outcome.error or ""), outcome.error


ENDLESS = {
    # one header whose value never ends
    "endless_value": (b"HTTP/1.1 200 OK\r\nX-Long: ", b"v" * 8192, "longer than 8 KiB"),
    # distinct headers forever
    "endless_headers": (b"HTTP/1.1 200 OK\r\n", b"X-Header-Name: a-value\r\n" * 400, "headers"),
    # a reason phrase that never ends
    "endless_reason": (b"HTTP/1.1 200 ", b"R" * 8192, "status line"),
    # interim answers forever: each is a small head, together they are endless
    "endless_interim": (b"", b"HTTP/1.1 100 Continue\r\n\r\n" * 300, "larger than 64 KiB"),
    # a whole chunked image, then a trailer whose value never ends
    "endless_trailer": (CHUNKED_PNG + b"0\r\nX-Trailer: ", b"t" * 8192, "trailers"),
    # a whole chunked image, then trailers forever
    "endless_trailers": (CHUNKED_PNG + b"0\r\n", b"X-Trailer: t\r\n" * 400, "100 headers"),
    # a chunk-size line whose extension never ends
    "endless_chunk_extension": (CHUNKED_PNG + b"1;ext=", b"e" * 8192, "chunk framing"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(ENDLESS))
def test_an_endless_head_or_trailer_is_cut_at_the_cap(
    image_server: ImageServer, tmp_path: Path, case: str
) -> None:
    start, repeat, wording = ENDLESS[case]

    async def handler(path: str, server: HostileServer, writer: asyncio.StreamWriter) -> bool:
        await server.send(writer, start)
        while True:  # until the client hangs up
            await server.send(writer, repeat)

    settings = make_settings(download_deadline=2, http_read_timeout=5, max_retries=0)
    with HostileServer(handler) as server:
        outcome = check_bounded(image_server, tmp_path, settings, server.url(), "bad_response")
        sent = server.sent
    assert wording in (outcome.error or ""), outcome.error
    assert outcome.attempts == 1
    # The client stopped reading near the cap: what the server got rid of is the cap plus
    # what the sockets' buffers hold, far from the hundreds of MB an unbounded read takes in.
    assert sent < 64 * 1024 * 1024, sent


# -- DOWNLOAD_DEADLINE bounds every image ------------------------------------------------------


async def trickle_head(path: str, server: HostileServer, writer: asyncio.StreamWriter) -> bool:
    await server.send(writer, b"HTTP/1.1 200 OK\r\nX-Slow: ")
    while True:  # one byte at a time, each well within the read timeout; the head stays small
        await asyncio.sleep(0.1)
        await server.send(writer, b"s")


async def trickle_body(path: str, server: HostileServer, writer: asyncio.StreamWriter) -> bool:
    await server.send(writer, b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + PNG[:16])
    while True:
        await asyncio.sleep(0.1)
        await server.send(writer, b"\0")


async def endless_chunked(path: str, server: HostileServer, writer: asyncio.StreamWriter) -> bool:
    await server.send(writer, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    await server.send(writer, b"%x\r\n%s\r\n" % (len(PNG) - 1, PNG[:-1]))
    while True:  # one-byte chunks, as fast as the client takes them
        await server.send(writer, b"1\r\n\0\r\n" * 2000)


async def slow_redirects(path: str, server: HostileServer, writer: asyncio.StreamWriter) -> bool:
    await asyncio.sleep(0.4)  # below the read timeout, every hop to a new address
    hop = int(path.rsplit("/", 1)[1] or 0) + 1
    await server.send(writer, answer(b"", f"Location: /r/{hop}", status="302 Found"))
    return True


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "handler",
    [trickle_head, trickle_body, endless_chunked, slow_redirects],
    ids=lambda h: h.__name__,
)
def test_the_deadline_ends_every_hostile_server(
    image_server: ImageServer, tmp_path: Path, handler: Handler
) -> None:
    settings = make_settings(
        download_deadline=2,
        http_read_timeout=5,  # above the deadline: every case is below the read timeout
        max_retries=0,
        max_redirects=20,
        max_image_size_mb=1000,  # the endless body must meet the deadline, not the size limit
    )
    with HostileServer(handler) as server:
        outcome = check_bounded(image_server, tmp_path, settings, server.url("/r/0"), "timeout")
    assert "2 s deadline" in (outcome.error or ""), outcome.error


# -- bytes after Content-Length ----------------------------------------------------------------


SECOND = answer(b"NOT-PART-OF-THE-IMAGE")


async def extra_in_the_same_write(
    path: str, server: HostileServer, writer: asyncio.StreamWriter
) -> bool:
    # a whole second answer nobody asked for, right behind the declared body
    await server.send(writer, answer(PNG) + SECOND)
    return True


async def extra_garbage(path: str, server: HostileServer, writer: asyncio.StreamWriter) -> bool:
    await server.send(writer, answer(PNG) + b"garbage after the body")
    return True


async def extra_a_moment_later(
    path: str, server: HostileServer, writer: asyncio.StreamWriter
) -> bool:
    await server.send(writer, answer(PNG))
    await asyncio.sleep(0.05)
    await server.send(writer, SECOND)
    return True


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "handler",
    [extra_in_the_same_write, extra_garbage, extra_a_moment_later],
    ids=lambda h: h.__name__,
)
def test_bytes_after_content_length_are_not_stored_and_the_connection_is_dropped(
    tmp_path: Path, handler: Handler
) -> None:
    settings = make_settings(max_retries=0)

    async def main(server: HostileServer) -> list[FetchOutcome]:
        async with Fetcher(settings, tmp_path) as fetcher:
            first = await fetcher.fetch(server.url("/a.png"))
            await asyncio.sleep(0.2)  # any late bytes have arrived
            second = await fetcher.fetch(server.url("/b.png"))
            return [first, second]

    with HostileServer(handler) as server:
        outcomes = asyncio.run(main(server))
        connections = server.connections
    for outcome in outcomes:
        if handler is extra_garbage and not outcome.ok:
            # Garbage in the same packet as the answer's end: aiohttp's parser fails the
            # whole answer (bad_response) rather than splitting the packet. Nothing is stored.
            assert_failed(outcome, "bad_response")
            continue
        # The declared body arrived whole: the image is good, and exactly those bytes.
        assert outcome.ok, outcome
        assert outcome.size == len(PNG)
        assert outcome.body == PNG
        assert outcome.sha256 == hashlib.sha256(PNG).hexdigest()
    assert connections == 2  # the first connection was not reused


# -- quoting the server's words ----------------------------------------------------------------


def test_a_long_reason_phrase_is_quoted_short(tmp_path: Path) -> None:
    reason = "Reason" + "x" * 594  # 600 characters, with a status code that has no phrase

    async def handler(path: str, server: HostileServer, writer: asyncio.StreamWriter) -> bool:
        await server.send(writer, answer(b"", status=f"599 {reason}"))
        return True

    settings = make_settings(max_retries=0)

    async def main(server: HostileServer) -> FetchOutcome:
        async with Fetcher(settings, tmp_path) as fetcher:
            return await fetcher.fetch(server.url())

    with HostileServer(handler) as server:
        started = time.monotonic()
        outcome = asyncio.run(main(server))
        assert time.monotonic() - started < 30
    assert_failed(outcome, "http_599")
    error = outcome.error or ""
    assert error.startswith("The server answered 599 Reasonxxx"), error
    assert "…" in error and len(error) <= 160, (len(error), error)
