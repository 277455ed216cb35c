"""Helpers shared by the fetch tests: settings, running a Fetcher on URLs, checking failures."""

from __future__ import annotations

import asyncio
from pathlib import Path

from downloader.fetch import Fetcher, FetchOutcome
from downloader.guard import Guard
from downloader.settings import Settings, load_settings

MB = 1024 * 1024


def make_settings(**overrides: object) -> Settings:
    """Loopback allowed, no rate limit, short backoff and timeouts, a lenient breaker."""
    base: dict[str, object] = {
        "allowed_private_networks": ["127.0.0.0/8"],
        "max_retries": 3,
        "backoff_base": 0.02,
        "download_qps": 0,
        "http_connect_timeout": 2,
        "http_read_timeout": 5,
        "download_deadline": 30,
        "circuit_breaker_failures": 50,
    }
    base.update(overrides)
    return load_settings(**base)


def fetch_all(
    settings: Settings, tmp_path: Path, urls: list[str], *, guard: Guard | None = None
) -> list[FetchOutcome]:
    """Fetch `urls` concurrently with one Fetcher (`guard`: None = the settings' own)."""

    async def main() -> list[FetchOutcome]:
        async with Fetcher(settings, tmp_path, guard=guard) as fetcher:
            return list(await asyncio.gather(*(fetcher.fetch(u) for u in urls)))

    return asyncio.run(main())


def fetch_one(settings: Settings, tmp_path: Path, url: str) -> FetchOutcome:
    return fetch_all(settings, tmp_path, [url])[0]


def fetch_counting_bytes(settings: Settings, tmp_path: Path, url: str) -> tuple[FetchOutcome, int]:
    """Fetch `url`, and the body bytes the Fetcher took in for it (after decoding, if encoded).

    For checking that a refused body was cut short rather than read to its end.
    """

    async def main() -> tuple[FetchOutcome, int]:
        async with Fetcher(settings, tmp_path) as fetcher:
            outcome = await fetcher.fetch(url)
            return outcome, fetcher.stats.bytes

    return asyncio.run(main())


def leftovers(tmp_path: Path) -> list[Path]:
    """What a fetch left in its temp folder (failed fetches must leave nothing)."""
    return sorted(tmp_path.iterdir())


def assert_failed(outcome: FetchOutcome, code: str) -> None:
    """`outcome` failed with `code`, a full-sentence message, and no file or hash.

    Plain asserts with messages: pytest does not rewrite asserts outside test modules.
    """
    assert not outcome.ok, outcome
    assert outcome.error_code == code, (outcome.error_code, outcome.error)
    assert outcome.error and outcome.error.endswith("."), outcome.error
    assert outcome.temp_path is None and outcome.body is None, outcome
    assert outcome.sha256 is None, outcome
