"""HTTP fetch layer: politeness limits, retries, redirects, SSRF guard, verified temp files.

The engine uses `Fetcher` and `FetchOutcome` (`fetch(url, headers=None)`); the other modules are
its parts: client (aiohttp's HTTP client under the guard: vetted addresses only, happy eyeballs,
keep-alive, errors mapped once to httpx's types; httpx's API for other callers), protocol
(aiohttp's connection protocol with our caps on heads and stray bytes), proxies (HTTP_PROXY,
HTTPS_PROXY, NO_PROXY), trust (TLS_TRUST, SSL_CERT_FILE, SSL_CERT_DIR), limits (slots, pacer,
circuit breaker, the bounded DNS cache), retry (policy, backoff, Retry-After), body (reading,
decoding gzip/deflate/br/zstd in bounded steps, hashing and spooling a response body), sniff
and frames (type and dimensions from the bytes), structure and structure_more (the whole-file
check), verify (the check a finished body goes through; VERIFY_IMAGES=full decodes in a process
pool), metadata (ICC description, EXIF orientation, bounded inflation), tempfiles (the ``.part``
files and their clean-up) and outcomes (FetchOutcome, FetchStats, failures and their wording).
How it behaves on company networks: docs/network.md.
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
    "truncated_image",
    "corrupt_image",
    "bad_encoding",
    "bad_response",
    "internal_error",
    "cancelled",
)

__all__ = ["ERROR_CODES", "FetchOutcome", "FetchStats", "Fetcher"]
