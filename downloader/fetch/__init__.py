"""HTTP fetch layer: politeness limits, retries, redirects, SSRF guard, verified temp files.

The engine uses `Fetcher` and `FetchOutcome`; the other modules are its parts:
client (httpx over a guarded HTTP/1.1 transport, wire.py), limits (slots, pacer, circuit breaker),
retry (policy, backoff, Retry-After), body (reading, decoding, hashing and spooling a response
body), sniff (type and dimensions from the bytes), tempfiles (the ``.part`` files and their
clean-up) and outcomes (FetchOutcome, FetchStats, failures and their wording).
"""

from downloader.fetch.fetcher import Fetcher, FetchOutcome, FetchStats

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
    "bad_response",
    "internal_error",
    "cancelled",
)

__all__ = ["ERROR_CODES", "FetchOutcome", "FetchStats", "Fetcher"]
