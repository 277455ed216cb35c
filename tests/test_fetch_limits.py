"""Politeness, asserted from the server side: per-host and global concurrency, QPS, slots
released during backoff, set_share, and the circuit breaker."""

from __future__ import annotations

import asyncio
import itertools
import threading
from pathlib import Path

import pytest

from downloader.fetch import Fetcher, FetchOutcome
from tests.support.fetching import fetch_all, make_settings
from tests.support.imageserver import (
    ImageServer,
    Reply,
    Req,
    RequestRecord,
    closed_port_url,
)

# The server stamps `end` after it has written the body, a few milliseconds after the client
# may already have read it and sent its next request. Overlaps shorter than this are that
# stamping lag, not concurrency (every request in these tests lasts 100 ms or more).
STAMP_LAG = 0.02


def max_overlap(records: list[RequestRecord]) -> int:
    """Most requests in progress at the same moment, from server-side start/end times."""
    events: list[tuple[float, int]] = []
    for record in records:
        assert record.end is not None
        events.append((record.start, 1))
        events.append((record.end - STAMP_LAG, -1))
    events.sort(key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


# -- concurrency ----------------------------------------------------------------------------------


def test_per_host_concurrency_is_never_exceeded(image_server: ImageServer, tmp_path: Path) -> None:
    settings = make_settings(max_per_host_concurrency=2, max_global_concurrency=32)
    urls = [image_server.url(f"slow/0.2/{host}-{i}", host) for i in range(10) for host in (0, 1)]
    outcomes = fetch_all(settings, tmp_path, urls)
    assert all(o.ok for o in outcomes)
    for host in (0, 1):
        assert image_server.peak_concurrency(host) == 2  # reached, never exceeded
        assert max_overlap(image_server.requests_to(host=host)) <= 2


def test_per_host_limit_counts_retries_and_redirect_hops(
    image_server: ImageServer, tmp_path: Path
) -> None:
    settings = make_settings(max_per_host_concurrency=1, max_global_concurrency=32)
    urls = [image_server.url(f"flaky/r{i}?fails=1") for i in range(4)]
    urls += [image_server.url("redirect/2") for _ in range(4)]
    urls += [image_server.url(f"slow/0.1/s{i}") for i in range(4)]
    assert all(o.ok for o in fetch_all(settings, tmp_path, urls))
    assert image_server.peak_concurrency(0) == 1


def test_global_concurrency_is_never_exceeded(image_server: ImageServer, tmp_path: Path) -> None:
    settings = make_settings(max_per_host_concurrency=10, max_global_concurrency=3)
    urls = [image_server.url(f"slow/0.2/g{i}", i % 3) for i in range(15)]
    assert all(o.ok for o in fetch_all(settings, tmp_path, urls))
    assert max_overlap(image_server.requests) == 3


def test_qps_is_honoured(image_server: ImageServer, tmp_path: Path) -> None:
    qps = 10
    settings = make_settings(download_qps=qps, max_global_concurrency=32)
    urls = [image_server.url(f"img/q{i}.jpg", i % 3) for i in range(16)]
    assert all(o.ok for o in fetch_all(settings, tmp_path, urls))
    starts = sorted(r.start for r in image_server.requests)
    assert len(starts) == 16
    # a token bucket of size 1: n requests take at least (n - 1) / qps
    assert starts[-1] - starts[0] >= 0.9 * (len(starts) - 1) / qps
    # and no window holds more than its share (+1 for the bucket, +1 for timer jitter)
    for i, start in enumerate(starts):
        in_window = sum(1 for s in starts[i:] if s - start < 0.5)
        assert in_window <= 0.5 * qps + 2


def test_slots_are_released_while_backing_off(image_server: ImageServer, tmp_path: Path) -> None:
    """While one image waits out a server error's Retry-After, others use the host's only
    slot. (A 429 or 503 pauses the whole host instead: tests/test_politeness.py.)"""
    settings = make_settings(max_per_host_concurrency=1)

    @image_server.route(r"/ratelimit/w")
    def bad_gateway_once(req: Req) -> Reply:
        if req.server.bump("w") == 1:
            return Reply(status=502, body=b"try later\n", headers=[("Retry-After", "1")])
        return Reply.image("w")

    async def main() -> list[FetchOutcome]:
        async with Fetcher(settings, tmp_path) as fetcher:
            limited = asyncio.create_task(fetcher.fetch(image_server.url("ratelimit/w")))
            await asyncio.sleep(0.3)  # the 429 has been answered
            others = [fetcher.fetch(image_server.url(f"img/o{i}.jpg")) for i in range(3)]
            return [*(await asyncio.gather(*others)), await limited]

    outcomes = asyncio.run(main())
    assert all(o.ok for o in outcomes)
    first, retry = image_server.requests_to("/ratelimit/w")
    others = [r for r in image_server.requests if r.path.startswith("/img/")]
    assert first.end is not None
    assert all(first.end <= r.start and r.end is not None and r.end <= retry.start for r in others)


def test_set_share_scales_concurrency(image_server: ImageServer, tmp_path: Path) -> None:
    settings = make_settings(max_per_host_concurrency=4, max_global_concurrency=32)

    async def main() -> dict[str, float]:
        async with Fetcher(settings, tmp_path) as fetcher:
            fetcher.set_share(0.5)
            urls = [image_server.url(f"slow/0.2/h{i}") for i in range(10)]
            assert all(o.ok for o in await asyncio.gather(*(fetcher.fetch(u) for u in urls)))
            return fetcher.limits

    limits = asyncio.run(main())
    # per-host limits are whole: a host belongs to one engine (downloader.host_partition)
    assert limits["per_host_concurrency"] == 4 and limits["global_concurrency"] == 16
    assert image_server.peak_concurrency(0) == 4


def test_set_share_scales_qps_and_applies_to_new_requests(
    image_server: ImageServer, tmp_path: Path
) -> None:
    settings = make_settings(download_qps=40)

    async def main() -> None:
        async with Fetcher(settings, tmp_path) as fetcher:
            assert fetcher.limits["qps"] == 40
            fetcher.set_share(0.125)  # 5 per second
            urls = [image_server.url(f"img/s{i}.png", i % 3) for i in range(8)]
            assert all(o.ok for o in await asyncio.gather(*(fetcher.fetch(u) for u in urls)))
            assert fetcher.limits["qps"] == 5

    asyncio.run(main())
    starts = sorted(r.start for r in image_server.requests)
    assert starts[-1] - starts[0] >= 0.9 * 7 / 5


def test_set_share_rejects_bad_values(tmp_path: Path) -> None:
    fetcher = Fetcher(make_settings(), tmp_path)
    for bad in (0, -0.5, 1.5):
        with pytest.raises(ValueError):
            fetcher.set_share(bad)
    fetcher.set_share(1 / 64)
    assert fetcher.limits["global_concurrency"] == 1  # never below one slot


def test_lowering_the_share_while_busy(image_server: ImageServer, tmp_path: Path) -> None:
    settings = make_settings(max_per_host_concurrency=4, max_global_concurrency=4)

    async def main() -> None:
        async with Fetcher(settings, tmp_path) as fetcher:
            first = [fetcher.fetch(image_server.url(f"slow/0.3/a{i}")) for i in range(4)]
            batch = asyncio.gather(*first)
            await asyncio.sleep(0.1)
            fetcher.set_share(0.25)  # one slot from now on
            second = [fetcher.fetch(image_server.url(f"slow/0.1/b{i}")) for i in range(4)]
            outcomes = [*(await batch), *(await asyncio.gather(*second))]
            assert all(o.ok for o in outcomes)

    asyncio.run(main())
    firsts = [r for r in image_server.requests if "/a" in r.path]
    seconds = [r for r in image_server.requests if "/b" in r.path]
    assert max_overlap(firsts) == 4
    last_first_end = max(r.end or 0 for r in firsts)
    # the new requests started only once the engine was back under its new global limit of 1
    assert all(r.start >= last_first_end - STAMP_LAG for r in seconds)
    # One slot: each request (the server waits 0.1 s before answering) starts only after the
    # previous one has finished. Compared by start times, because the server stamps `end`
    # after writing the body, which can trail the client's next request by a moment.
    starts = sorted(r.start for r in seconds)
    assert all(later - earlier >= 0.09 for earlier, later in itertools.pairwise(starts))


# -- circuit breaker ------------------------------------------------------------------------------


def test_breaker_stops_hammering_a_refusing_host(tmp_path: Path) -> None:
    settings = make_settings(
        circuit_breaker_failures=3,
        circuit_breaker_cooldown=60,
        max_retries=0,
        max_per_host_concurrency=1,
    )
    url = closed_port_url()
    outcomes = fetch_all(settings, tmp_path, [f"{url}?n={i}" for i in range(20)])
    codes = [o.error_code for o in outcomes]
    assert codes[:3] == ["connection_error"] * 3
    assert codes[3:] == ["circuit_open"] * 17
    assert all(o.attempts == 0 for o in outcomes[3:])
    assert "paused" in (outcomes[-1].error or "")


def test_breaker_counted_from_the_server_side(image_server: ImageServer, tmp_path: Path) -> None:
    settings = make_settings(
        circuit_breaker_failures=4,
        circuit_breaker_cooldown=60,
        max_retries=2,
        max_per_host_concurrency=1,  # one request at a time: exactly `failures` get through
    )
    urls = [image_server.url(f"drop?n={i}") for i in range(10)]
    outcomes = fetch_all(settings, tmp_path, urls)
    assert image_server.count("/drop") == 4
    assert sum(o.error_code == "circuit_open" for o in outcomes) >= 8
    # other hosts are not affected
    assert fetch_all(settings, tmp_path, [image_server.url("img/fine.jpg", 1)])[0].ok


def test_breaker_ignores_http_errors(image_server: ImageServer, tmp_path: Path) -> None:
    settings = make_settings(circuit_breaker_failures=2, max_retries=0)
    outcomes = fetch_all(
        settings, tmp_path, [image_server.url(f"status/503?n={i}") for i in range(6)]
    )
    assert [o.error_code for o in outcomes] == ["http_503"] * 6


def test_breaker_probes_after_the_cooldown(image_server: ImageServer, tmp_path: Path) -> None:
    healthy = threading.Event()

    def sometimes(req: Req) -> Reply:
        return Reply.image("probe") if healthy.is_set() else Reply(drop=True)

    image_server.add_route(r"/sometimes/.*", sometimes)
    settings = make_settings(
        circuit_breaker_failures=2, circuit_breaker_cooldown=0.5, max_retries=0
    )

    async def main() -> list[str | None]:
        codes: list[str | None] = []
        async with Fetcher(settings, tmp_path) as fetcher:

            async def get(i: int) -> None:
                outcome = await fetcher.fetch(image_server.url(f"sometimes/{i}"))
                codes.append(outcome.error_code)

            await get(1)
            await get(2)  # opens the breaker
            await get(3)  # refused without a request
            await asyncio.sleep(0.6)
            await get(4)  # the probe: fails, the breaker opens again
            await get(5)  # refused
            healthy.set()
            await asyncio.sleep(0.6)
            await get(6)  # the probe succeeds and closes the breaker
            await get(7)
        return codes

    codes = asyncio.run(main())
    assert codes == [
        "connection_error",
        "connection_error",
        "circuit_open",
        "connection_error",
        "circuit_open",
        None,
        None,
    ]
    assert image_server.count() == 5  # requests 1, 2, 4, 6, 7


def test_breaker_lets_one_probe_through_at_a_time(
    image_server: ImageServer, tmp_path: Path
) -> None:
    image_server.add_route(r"/slowdrop/.*", lambda req: Reply(drop=True, delay=0.3))
    settings = make_settings(
        circuit_breaker_failures=1, circuit_breaker_cooldown=0.2, max_retries=0
    )

    async def main() -> list[FetchOutcome]:
        async with Fetcher(settings, tmp_path) as fetcher:
            await fetcher.fetch(image_server.url("slowdrop/0"))  # opens
            await asyncio.sleep(0.3)
            urls = [image_server.url(f"slowdrop/{i}") for i in range(1, 6)]
            return list(await asyncio.gather(*(fetcher.fetch(u) for u in urls)))

    outcomes = asyncio.run(main())
    assert sorted(o.error_code or "" for o in outcomes) == ["circuit_open"] * 4 + [
        "connection_error"
    ]
    assert image_server.count() == 2
