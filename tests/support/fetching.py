"""Helpers shared by the fetch tests: test settings and running a Fetcher on a URL list."""

from __future__ import annotations

import asyncio
from pathlib import Path

from downloader.fetch import Fetcher, FetchOutcome
from downloader.settings import Settings, load_settings


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


def fetch_all(settings: Settings, tmp_path: Path, urls: list[str]) -> list[FetchOutcome]:
    async def main() -> list[FetchOutcome]:
        async with Fetcher(settings, tmp_path) as fetcher:
            return list(await asyncio.gather(*(fetcher.fetch(u) for u in urls)))

    return asyncio.run(main())
