"""Politeness that learns (issue 22): a host that throttles (429 + Retry-After, 503) slows down
as a whole, its rate is learned, PER_HOST_QPS caps it, 429s are not failed attempts, an image
fails only past THROTTLE_PATIENCE, the breaker opens on server errors, and `run` downloads
every image of hosts that allow 5 requests per second.

Every server is a real HTTP server on loopback; the token bucket counts at the server.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from downloader.fetch import Fetcher
from tests.support.fetching import fetch_all, fetch_one, make_settings
from tests.support.imageserver import ImageServer, Reply, Req
from tests.test_cli import Cli, last_json, write_input

THROTTLE_HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]


@dataclass
class TokenBuckets:
    """Per host: `rate` requests per second, a bucket of `rate` tokens; above it 429 with
    `Retry-After: 1`. Counts answers per host and status."""

    rate: float = 5.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    tokens: dict[str, float] = field(default_factory=dict)
    stamp: dict[str, float] = field(default_factory=dict)
    answers: Counter[tuple[str, int]] = field(default_factory=Counter)
    arrivals: dict[str, list[float]] = field(default_factory=dict)

    def handler(self, req: Req) -> Reply:
        now = time.monotonic()
        with self.lock:
            host = req.host
            self.arrivals.setdefault(host, []).append(now)
            tokens = self.tokens.get(host, self.rate)
            tokens = min(self.rate, tokens + (now - self.stamp.get(host, now)) * self.rate)
            self.stamp[host] = now
            allowed = tokens >= 1.0
            self.tokens[host] = tokens - 1.0 if allowed else tokens
            self.answers[(host, 200 if allowed else 429)] += 1
        if not allowed:
            return Reply(status=429, body=b"slow down\n", headers=[("Retry-After", "1")])
        return Reply.image(req.param("name") or "x")

    @property
    def throttled(self) -> int:
        return sum(n for (_, status), n in self.answers.items() if status == 429)


@pytest.fixture
def throttling() -> Iterator[tuple[ImageServer, TokenBuckets]]:
    with ImageServer(THROTTLE_HOSTS) as server:
        buckets = TokenBuckets()
        server.add_route(r"^/tb/(?P<name>[A-Za-z0-9_-]+)\.jpg$", buckets.handler)
        yield server, buckets


def throttled_rows(server: ImageServer, per_host: int) -> list[tuple[str, str]]:
    return [
        (f"P{i % 40}", server.url(f"/tb/h{h}-{i}.jpg", host=h))
        for i in range(per_host)
        for h in range(len(server.hosts))
    ]


# ---------------------------------------------------------------- the bar, for `run`


def test_run_downloads_every_image_of_throttling_hosts(
    tmp_path: Path, throttling: tuple[ImageServer, TokenBuckets]
) -> None:
    """4 hosts that allow 5 requests/s each, 400 images, 4 per host: all done, at most 40
    answers of 429, within 40 s (100 images per host at 5/s take 20 s)."""
    server, buckets = throttling
    src = write_input(tmp_path / "in.csv", throttled_rows(server, 100))
    cli = Cli(tmp_path)
    started = time.monotonic()
    result = cli("run", str(src), "--quiet", MAX_PER_HOST_CONCURRENCY="4", DOWNLOAD_QPS="0")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    payload = last_json(result.stdout)
    print(f"run: {elapsed:.1f} s, {buckets.throttled} answers of 429, {payload}")
    assert payload["done"] == 400 and payload["failed"] == 0, payload
    assert buckets.throttled <= 40, dict(buckets.answers)
    assert elapsed < 40


# ---------------------------------------------------------------- the fetcher


def test_a_429_pauses_the_whole_host_for_its_retry_after(
    image_server: ImageServer, tmp_path: Path
) -> None:
    """After one image got `429, Retry-After: 1`, no request goes to that host for a second;
    another host is not held up."""
    settings = make_settings(max_per_host_concurrency=4)

    async def main() -> None:
        async with Fetcher(settings, tmp_path) as fetcher:
            limited = asyncio.create_task(fetcher.fetch(image_server.url("ratelimit/w?after=1")))
            await asyncio.sleep(0.3)  # the 429 has been answered
            others = [fetcher.fetch(image_server.url(f"img/o{i}.jpg")) for i in range(3)]
            elsewhere = fetcher.fetch(image_server.url("img/e.jpg", host=1))
            states = fetcher.host_states()
            assert states and states[0].paused_for > 0 and states[0].rate > 0
            outcomes = await asyncio.gather(limited, elsewhere, *others)
            assert all(o.ok for o in outcomes)

    asyncio.run(main())
    first = image_server.requests_to("/ratelimit/w")[0]
    assert first.end is not None
    same_host = [r for r in image_server.requests_to(host=0) if r.path.startswith("/img/")]
    assert all(r.start >= first.end + 0.9 for r in same_host)
    other_host = image_server.requests_to(host=1)
    assert other_host and other_host[0].start < first.end + 0.9


def test_429s_are_not_failed_attempts(image_server: ImageServer, tmp_path: Path) -> None:
    """Five 429s in a row with MAX_RETRIES=1: the image is downloaded (attempts = 1)."""
    settings = make_settings(max_retries=1, retry_after_cap=0.2)
    outcome = fetch_one(settings, tmp_path, image_server.url("ratelimit/n?fails=5&after=0"))
    assert outcome.ok and outcome.attempts == 1
    assert image_server.count("/ratelimit/n") == 6


def test_waiting_out_a_throttled_host_does_not_burn_the_deadline(
    image_server: ImageServer, tmp_path: Path
) -> None:
    settings = make_settings(download_deadline=1)
    outcome = fetch_one(settings, tmp_path, image_server.url("ratelimit/d?fails=1&after=2"))
    assert outcome.ok, outcome.error


def test_a_host_throttling_past_the_patience_fails_with_a_reason(
    image_server: ImageServer, tmp_path: Path
) -> None:
    settings = make_settings(throttle_patience=1.5, retry_after_cap=0.3)
    started = time.monotonic()
    outcome = fetch_one(settings, tmp_path, image_server.url("ratelimit/p?fails=1000&after=1"))
    assert not outcome.ok and outcome.error_code == "throttled"
    assert "429" in (outcome.error or "") and "THROTTLE_PATIENCE" in (outcome.error or "")
    assert outcome.http_status == 429
    assert time.monotonic() - started < 20


def test_per_host_qps_is_a_ceiling_at_the_server(image_server: ImageServer, tmp_path: Path) -> None:
    settings = make_settings(per_host_qps=4, max_per_host_concurrency=4)
    urls = [image_server.url(f"img/q{i}.jpg", host=i % 2) for i in range(16)]
    assert all(o.ok for o in fetch_all(settings, tmp_path, urls))
    for host in (0, 1):
        starts = sorted(r.start for r in image_server.requests_to(host=host))
        assert len(starts) == 8
        # never more than 4 in any second (20 ms of server-side stamping jitter allowed)
        assert all(starts[i + 4] - starts[i] >= 0.98 for i in range(len(starts) - 4)), starts


def test_the_breaker_opens_on_repeated_server_errors(
    image_server: ImageServer, tmp_path: Path
) -> None:
    settings = make_settings(
        circuit_breaker_failures=3,
        circuit_breaker_cooldown=60,
        max_retries=0,
        max_per_host_concurrency=1,
    )
    urls = [image_server.url(f"status/500?n={i}") for i in range(8)]
    codes = [o.error_code for o in fetch_all(settings, tmp_path, urls)]
    assert codes[:3] == ["http_500"] * 3
    assert codes[3:] == ["circuit_open"] * 5
    assert image_server.count("/status/500") == 3


# ---------------------------------------------------------------- "Retry failed", split


def test_retry_failed_splits_transient_from_permanent_failures(
    tmp_path: Path, image_server: ImageServer
) -> None:
    """A 404, a 410 and a text page are permanent; a 500 and a dead port are transient: the
    transient ones are queued again first, the permanent ones only when asked for."""
    from downloader import jobs
    from downloader.jobs.control import retry_counts
    from tests.support.imageserver import closed_port_url
    from tests.test_engine import make_services, run_job

    services = make_services(
        tmp_path, max_retries=0, circuit_breaker_failures=50, http_connect_timeout=1
    )
    s = image_server
    rows = [
        ("A", s.url("/status/404")),
        ("A", s.url("/status/410", host=1)),
        ("B", s.url("/html-as-jpeg", host=2)),
        ("B", s.url("/status/500?x=1")),
        ("C", closed_port_url()),
        ("C", s.url("/img/fine.jpg")),
    ]
    text = "Product Number\tImage URL\n" + "\n".join(f"{p}\t{u}" for p, u in rows)
    job_id = run_job(services, text)
    db = services.db
    assert jobs.job_counts(db, job_id).failed == 5
    assert retry_counts(db, job_id) == (2, 3)
    assert jobs.retry_failed(db, job_id, kind="transient") == 2
    assert jobs.job_counts(db, job_id).failed == 3
    assert retry_counts(db, job_id) == (0, 3)
    assert jobs.retry_failed(db, job_id, kind="permanent") == 3
    assert retry_counts(db, job_id) == (0, 0)
