"""Pure logic of the fetch layer: retry policy, Retry-After, slots, pacer, breaker, sniffing,
the guard in the transport. No network (the transport itself: test_fetch_transport.py)."""

from __future__ import annotations

import asyncio
import io
import itertools
import random
import struct
import subprocess
import sys
import time
import zlib
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from PIL import Image

from downloader.fetch.client import BlockedAddress, build_client, header_map
from downloader.fetch.limits import CircuitBreaker, HostSlots, Pacer, Slots, scaled
from downloader.fetch.retry import RetryPolicy, is_retryable_status, parse_retry_after
from downloader.fetch.sniff import SniffError, describe_non_image, image_info, sniff_format
from downloader.guard import Guard
from downloader.settings import load_settings
from tests.support.imageserver import bomb_png, image_bytes

# -- retry policy --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_retryable_statuses(status: int) -> None:
    assert is_retryable_status(status)


@pytest.mark.parametrize("status", [200, 301, 400, 401, 403, 404, 410, 418, 451])
def test_not_retryable_statuses(status: int) -> None:
    assert not is_retryable_status(status)


def test_parse_retry_after_seconds_and_dates() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("5", now) == 5
    assert parse_retry_after(" 120 ", now) == 120
    assert parse_retry_after("1.5", now) == 1.5
    assert parse_retry_after("-3", now) == 0
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(later, now) == 90
    earlier = format_datetime(now - timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(earlier, now) == 0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now) == 0
    for junk in (None, "", "soon", "NaN", "Mon, 99 Foo 2026"):
        assert parse_retry_after(junk, now) is None


def test_backoff_is_exponential_with_full_jitter() -> None:
    policy = RetryPolicy(max_retries=5, backoff_base=0.5, retry_after_cap=10, backoff_max=3)
    rng = random.Random(42)
    for retry, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (10, 3.0)]:
        samples = [policy.backoff(retry, rng) for _ in range(300)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > 0.8 * ceiling  # spread over the whole range
        assert min(samples) < 0.2 * ceiling
        assert len(set(samples)) > 250  # jitter: no two clients in lock step


def test_retry_after_wins_over_backoff_and_is_capped() -> None:
    policy = RetryPolicy(max_retries=3, backoff_base=0.5, retry_after_cap=10)
    assert policy.delay(1, 4.0) == 4.0
    assert policy.delay(1, 300.0) == 10.0
    assert policy.delay(1, 0.0) == 0.0
    assert 0 <= policy.delay(2, None) <= 1.0


# -- slots, pacer ---------------------------------------------------------------------------------


def test_slots_are_fifo_and_resizable() -> None:
    async def main() -> None:
        slots = Slots(2)
        order: list[int] = []

        async def worker(i: int, hold: float) -> None:
            await slots.acquire()
            order.append(i)
            await asyncio.sleep(hold)
            slots.release()

        tasks = [asyncio.create_task(worker(i, 0.05)) for i in range(6)]
        await asyncio.sleep(0.01)
        assert slots.in_use == 2
        slots.set_capacity(3)  # a waiter is let in at once
        await asyncio.sleep(0)
        assert slots.in_use == 3
        await asyncio.gather(*tasks)
        assert order == list(range(6))
        assert slots.in_use == 0 and slots.idle

    asyncio.run(main())


def test_slots_capacity_decrease_waits_for_holders() -> None:
    async def main() -> None:
        slots = Slots(3)
        for _ in range(3):
            await slots.acquire()
        slots.set_capacity(1)
        waiter = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0.01)
        slots.release()
        slots.release()
        await asyncio.sleep(0.01)
        assert not waiter.done()  # 1 holder left = the new capacity
        slots.release()
        await asyncio.wait_for(waiter, 1)
        assert slots.in_use == 1

    asyncio.run(main())


def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    async def main() -> None:
        slots = Slots(1)
        await slots.acquire()
        waiter = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0)
        slots.release()  # hands the slot to the waiter ...
        waiter.cancel()  # ... which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert slots.in_use == 0
        plain = asyncio.create_task(slots.acquire())
        await asyncio.wait_for(plain, 1)
        assert slots.in_use == 1

    asyncio.run(main())


def test_host_slots_forget_idle_hosts() -> None:
    async def main() -> None:
        hosts = HostSlots(1)
        await hosts.acquire("a:80")
        await hosts.acquire("b:80")
        assert len(hosts) == 2 and hosts.in_use("a:80") == 1
        blocked = asyncio.create_task(hosts.acquire("a:80"))
        await asyncio.sleep(0)
        assert not blocked.done()
        hosts.release("a:80")
        await blocked
        hosts.release("a:80")
        hosts.release("b:80")
        assert len(hosts) == 0

    asyncio.run(main())


def test_pacer_spaces_requests() -> None:
    pacer = Pacer(10)
    assert pacer.take(now=100.0) == 0.0
    assert pacer.take(now=100.0) == pytest.approx(0.1)  # asking again counts nothing
    assert pacer.take(now=100.05) == pytest.approx(0.05)
    assert pacer.take(now=100.1) == 0.0
    assert pacer.take(now=200.0) == 0.0  # idle time is not banked beyond the burst
    assert pacer.take(now=200.0) == pytest.approx(0.1)
    pacer.set_rate(0)
    assert pacer.take(now=200.0) == 0.0
    burst = Pacer(10, burst=3)
    assert [burst.take(now=0.0) for _ in range(4)] == pytest.approx([0.0, 0.0, 0.0, 0.1])
    assert Pacer(20).burst == 1  # the default rate: evenly spaced
    fast = Pacer(1000)  # a 50-request bucket absorbs timer lag
    assert fast.burst == 50
    assert [fast.take(now=0.0) for _ in range(50)] == pytest.approx([0.0] * 50)
    assert fast.take(now=0.0) == pytest.approx(0.001)


def test_pacer_does_not_burst_after_the_event_loop_stalls() -> None:
    """Waiters woken late by a blocked event loop still go one interval apart: a send time is
    granted against the clock when a waiter's turn comes, never booked when it starts waiting
    (booked times would all be due at once after the stall)."""
    qps = 20
    sent: list[float] = []

    async def main() -> None:
        pacer = Pacer(qps)
        loop = asyncio.get_running_loop()

        async def send() -> None:
            await pacer.acquire()
            sent.append(loop.time())

        tasks = [asyncio.create_task(send()) for _ in range(8)]
        await asyncio.sleep(0)  # every task is waiting now; the first has sent
        time.sleep(0.3)  # the loop is blocked for six intervals
        await asyncio.gather(*tasks)

    asyncio.run(main())
    gaps = [later - earlier for earlier, later in itertools.pairwise(sent)]
    assert len(sent) == 8
    assert min(gaps) >= 1 / qps - 0.002, gaps  # loop.time() against loop.time(): no jitter


def test_pacer_waiters_take_turns_and_a_cancelled_one_gives_up_its_turn() -> None:
    order: list[str] = []

    async def main() -> None:
        pacer = Pacer(50)

        async def send(name: str) -> None:
            await pacer.acquire()
            order.append(name)

        first = asyncio.create_task(send("a"))
        await asyncio.sleep(0)
        waiting = {name: asyncio.create_task(send(name)) for name in "bcd"}
        await asyncio.sleep(0)
        waiting["c"].cancel()
        await asyncio.gather(first, waiting["b"], waiting["d"])
        assert waiting["c"].cancelled()

    asyncio.run(main())
    assert order == ["a", "b", "d"]


def test_scaled_never_below_one() -> None:
    assert scaled(32, 1.0) == 32
    assert scaled(32, 0.5) == 16
    assert scaled(4, 1 / 3) == 1
    assert scaled(4, 0.01) == 1
    assert scaled(10, 0.3) == 3
    assert scaled(7, 3 / 7) == 3  # float error does not lose a slot


# -- circuit breaker ------------------------------------------------------------------------------


def test_breaker_cycle() -> None:
    breaker = CircuitBreaker(threshold=3, cooldown=10)
    assert breaker.admit("h", 0) == (True, False)
    breaker.failure("h", 0)
    breaker.failure("h", 1)
    assert not breaker.is_open("h", 1)
    breaker.failure("h", 2)
    assert breaker.is_open("h", 2)
    assert breaker.admit("h", 5) == (False, False)
    assert breaker.retry_in("h", 5) == 7
    assert breaker.admit("h", 12) == (True, True)  # cooldown over: one probe
    assert breaker.admit("h", 12) == (False, False)  # and only one
    breaker.failure("h", 13, probe=True)
    assert breaker.admit("h", 14) == (False, False)  # open again for a new cooldown
    assert breaker.admit("h", 23.5) == (True, True)
    breaker.success("h")
    assert breaker.admit("h", 24) == (True, False)
    assert not breaker.is_open("h", 24)


def test_breaker_success_resets_the_count_and_abandon_frees_the_probe() -> None:
    breaker = CircuitBreaker(threshold=2, cooldown=1)
    breaker.failure("h", 0)
    breaker.success("h")
    breaker.failure("h", 0)
    assert not breaker.is_open("h", 0)
    breaker.failure("h", 0)
    assert breaker.is_open("h", 0)
    assert breaker.admit("h", 2) == (True, True)
    breaker.abandon("h", probe=True)
    assert breaker.admit("h", 2) == (True, True)
    assert breaker.admit("other", 2) == (True, False)


# -- sniffing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp", "avif", "gif"])
def test_sniff_format_from_magic(fmt: str) -> None:
    assert sniff_format(image_bytes("m", fmt)[:64]) == fmt


def test_sniff_avif_by_compatible_brand() -> None:
    head = struct.pack(">I", 28) + b"ftypmif1" + b"\x00\x00\x00\x00" + b"mif1miafavif"
    assert sniff_format(head) == "avif"
    heic = struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic"
    assert sniff_format(heic) == "heic"  # HEIF is accepted too (issue 26)
    mp4 = struct.pack(">I", 24) + b"ftypisom" + b"\x00\x00\x00\x00" + b"isomavc1"
    assert sniff_format(mp4) is None and "ISO media" in describe_non_image(mp4)


@pytest.mark.parametrize(
    "head",
    [b"", b"<html>", b"GIF8", b"RIFF\x00\x00\x00\x00WAVE", b"\x89PNG\r\n", b"\xff\xd8"],
)
def test_sniff_rejects(head: bytes) -> None:
    assert sniff_format(head) is None


def test_image_info_reads_dimensions(tmp_path: Path) -> None:
    path = tmp_path / "a.part"
    data = image_bytes("dims", "webp", 101, 7)
    path.write_bytes(data)
    info = image_info(path, data[:64])
    assert (info.format, info.width, info.height) == ("webp", 101, 7)


def test_image_info_does_not_decode_pixels(tmp_path: Path) -> None:
    # a valid PNG header whose pixel data is garbage: dimensions still come out
    ihdr = struct.pack(">IIBBBBB", 640, 480, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", b"garbage")
        + chunk(b"IEND", b"")
    )
    path = tmp_path / "x.part"
    path.write_bytes(data)
    info = image_info(path, data[:64])
    assert (info.width, info.height) == (640, 480)


@pytest.mark.parametrize(
    ("size", "words"), [((100_000, 100_000), "more than"), ((10_000, 10_000), "10000x10000")]
)
def test_image_info_refuses_bombs(tmp_path: Path, size: tuple[int, int], words: str) -> None:
    data = bomb_png(*size)
    path = tmp_path / "b.part"
    path.write_bytes(data)
    with pytest.raises(SniffError) as info:
        image_info(path, data[:64])
    assert info.value.code == "decompression_bomb"
    assert words in info.value.message


def test_pixel_limit_is_pillows_own_and_the_fetch_layer_loads_pillow_only_when_needed() -> None:
    """The limit is Pillow's default; the fetch layer (every image's path) loads Pillow only
    for an image that needs it. (The engine itself loads it with the conversion pool.)"""
    script = (
        "import sys\n"
        "import downloader.fetch, downloader.fetch.sniff as sniff\n"
        "assert 'PIL' not in sys.modules, 'Pillow loaded by the fetch layer'\n"
        "from PIL import Image\n"
        "assert sniff.MAX_IMAGE_PIXELS == Image.MAX_IMAGE_PIXELS\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


def test_image_info_refuses_text(tmp_path: Path) -> None:
    path = tmp_path / "t.part"
    path.write_bytes(b"hello world\n")
    with pytest.raises(SniffError) as info:
        image_info(path, b"hello world\n")
    assert info.value.code == "not_an_image" and "plain text" in info.value.message


def test_pillow_would_agree(tmp_path: Path) -> None:
    for fmt in ("jpg", "png", "webp", "avif", "gif"):
        data = image_bytes("agree", fmt, 30, 20)
        with Image.open(io.BytesIO(data)) as im:
            assert im.size == (30, 20)


# -- the guard in the transport ------------------------------------------------------------------


def test_transport_refuses_ip_literals_before_connecting(tmp_path: Path) -> None:
    """IP-literal hosts need no resolver: the transport vets them itself before connecting."""
    settings = load_settings(allowed_private_networks=[])

    async def main() -> None:
        async with build_client(settings, Guard(settings)) as client:
            with pytest.raises(BlockedAddress) as info:
                await client.get("http://127.0.0.2:9/x")
            assert "loopback" in info.value.reason

    asyncio.run(main())


# -- response headers ----------------------------------------------------------------------------


def test_header_map_reads_headers_as_httpx_does() -> None:
    """Lower-cased names; a repeated header's values joined (so stacked encodings stay
    visible); UTF-8 where the bytes are UTF-8, Latin-1 otherwise."""
    mapped = header_map(
        [
            (b"Content-Encoding", b"gzip"),
            (b"content-encoding", b"br"),
            (b"Location", "/caf\u00e9.jpg".encode()),
            (b"X-Old", b"caf\xe9"),
        ]
    )
    assert mapped == {
        "content-encoding": "gzip, br",
        "location": "/caf\u00e9.jpg",
        "x-old": "caf\u00e9",
    }
