"""HTTP fetch layer: politeness limits, retries, redirects, SSRF guard, verified temp files.

The engine uses `Fetcher` and `FetchOutcome`; the other modules are its parts:
client (httpx over a guarded aiohttp transport), limits (slots, pacer, circuit breaker),
retry (policy, backoff, Retry-After) and sniff (type and dimensions from the bytes).
"""

from downloader.fetch.fetcher import Fetcher, FetchOutcome, FetchStats, remove_leftovers

ERROR_CODES = (
    "http_<status>",
    "timeout",
    "too_large",
    "not_an_image",
    "blocked_address",
    "connection_error",
    "too_many_redirects",
    "empty_body",
    "truncated",
    "bad_url",
    "circuit_open",
    "decompression_bomb",
    "bad_encoding",
    "internal_error",
    "cancelled",
)

__all__ = ["ERROR_CODES", "FetchOutcome", "FetchStats", "Fetcher", "remove_leftovers"]
