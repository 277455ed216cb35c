"""HTTP client construction: a thin aiohttp transport with the SSRF guard, under httpx's API.

httpx stays the API (httpx.Request in, httpx.Response out: the transport is the one I/O seam);
aiohttp does the wire work because it is much faster than httpcore (see
benchmarks/bench_fetch.py). The fetcher sends its requests through the transport directly;
`build_client` wraps it in an httpx.AsyncClient for everything else. Compared with httpx-aiohttp's
transport this one

* vets the connect target: names through `GuardedResolver` (every resolved address is checked
  and only vetted ones are connected to), IP-literal hosts - which aiohttp never passes to a
  resolver - with `Guard.check_host` on the exact URL aiohttp will use;
* streams the body with `readany` (whatever is buffered, up to `read_bufsize`) instead of
  fixed 16 KB pieces;
* maps aiohttp errors to precise httpx exceptions (connect vs read timeout, refused vs reset,
  TLS, truncated body, blocked address).

No proxy from the environment (trust_env=False): a proxy would make the guard check the proxy's
address instead of the target's. No cookies are kept between requests. The body is passed
through undecoded (auto_decompress=False): the fetcher decodes it itself so that decoded bytes
count against the size limit.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import aiohttp
import certifi
import httpx
from yarl import URL

from downloader.guard import AddressBlockedError, Guard

if TYPE_CHECKING:
    from downloader.settings import Settings

READ_BUFSIZE = 2**18  # aiohttp's per-response buffer high-water mark (its default is 64 KiB)
DNS_CACHE_SECONDS = 30  # only vetted addresses are cached
KEEPALIVE_SECONDS = 4.0  # idle pooled connections are closed before most servers close them


class BlockedAddress(httpx.ConnectError):
    """The guard refused the address the request would connect to."""

    def __init__(self, reason: str, *, request: httpx.Request | None = None) -> None:
        super().__init__(reason, request=request)
        self.reason = reason


class TLSError(httpx.ConnectError):
    """TLS handshake or certificate verification failed (not retried)."""


class TruncatedBody(httpx.RemoteProtocolError):
    """The connection ended before the whole body (Content-Length or chunked) arrived."""


def _blocked_reason(exc: BaseException) -> str | None:
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return None
        if isinstance(seen, AddressBlockedError):
            return seen.reason
        os_error = getattr(seen, "os_error", None)
        if isinstance(os_error, AddressBlockedError):
            return os_error.reason
        seen = seen.__cause__ or seen.__context__
    return None


def map_aiohttp_error(exc: Exception, request: httpx.Request) -> Exception:
    """The httpx exception for an aiohttp (or OS) error; returns `exc` if it is unknown."""
    reason = _blocked_reason(exc)
    if reason is not None:
        return BlockedAddress(reason, request=request)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(str(exc) or "connect timeout", request=request)
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return httpx.ReadTimeout(str(exc) or "read timeout", request=request)
    if isinstance(exc, (aiohttp.ClientSSLError, ssl.SSLError)):
        return TLSError(str(exc), request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        detail = exc.os_error.strerror or str(exc.os_error) or str(exc)
        return httpx.ConnectError(detail, request=request)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return TruncatedBody(str(exc), request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError("server disconnected", request=request)
    if isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
        return httpx.UnsupportedProtocol(str(exc), request=request)
    if isinstance(exc, aiohttp.ClientResponseError):  # malformed response head
        return httpx.RemoteProtocolError(exc.message or str(exc), request=request)
    if isinstance(exc, (aiohttp.ClientOSError, OSError)):
        return httpx.ReadError(getattr(exc, "strerror", None) or str(exc), request=request)
    if isinstance(exc, aiohttp.ClientError):
        return httpx.TransportError(str(exc) or type(exc).__name__, request=request)
    return exc


class AiohttpResponseStream(httpx.AsyncByteStream):
    __slots__ = ("_request", "_response")

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except (aiohttp.ClientError, OSError) as exc:
            raise map_aiohttp_error(exc, self._request) from exc

    async def aclose(self) -> None:
        # Returns the connection to the pool when the body was read to the end; otherwise
        # aiohttp closes it (never reuses a half-read connection).
        self._response.release()


class GuardedAiohttpTransport(httpx.AsyncBaseTransport):
    """httpx transport over an aiohttp session; vets IP-literal hosts with the guard."""

    def __init__(self, session: aiohttp.ClientSession, guard: Guard | None) -> None:
        self.session = session
        self.guard = guard
        self._timeouts: dict[tuple[float | None, ...], aiohttp.ClientTimeout] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = URL(str(request.url), encoded=True)
        if self.guard is not None:
            reason = self.guard.check_host(url.raw_host or "")
            if reason is not None:
                raise BlockedAddress(reason, request=request)
        timeout = request.extensions.get("timeout") or {}
        key = (timeout.get("pool"), timeout.get("connect"), timeout.get("read"))
        client_timeout = self._timeouts.get(key)
        if client_timeout is None:
            client_timeout = self._timeouts[key] = aiohttp.ClientTimeout(
                total=None, connect=key[0], sock_connect=key[1], sock_read=key[2]
            )
        try:
            response = await self.session.request(
                request.method,
                url,
                headers=request.headers.multi_items(),
                data=request.content or None,
                allow_redirects=False,
                timeout=client_timeout,
            )
        except (aiohttp.ClientError, OSError) as exc:
            raise map_aiohttp_error(exc, request) from exc
        extensions = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode("latin-1", "replace")
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=AiohttpResponseStream(response, request),
            request=request,
            extensions=extensions,
        )

    async def aclose(self) -> None:
        await self.session.close()


class IgnoredCookies(httpx.Cookies):
    """A cookie store that keeps nothing: images need no cookies, a big job would otherwise grow
    the jar without bound, and skipping httpx's urllib-based cookie parsing saves time."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


def ssl_context() -> ssl.SSLContext:
    """Certificate and host-name verification against certifi's CA bundle."""
    return ssl.create_default_context(cafile=certifi.where())


def build_session(settings: Settings, guard: Guard | None) -> aiohttp.ClientSession:
    """The aiohttp session under the transport (must be called inside the event loop)."""
    connector = aiohttp.TCPConnector(
        resolver=guard.resolver() if guard is not None else None,
        limit=settings.max_global_concurrency + 8,  # the fetcher's own slots are the real cap
        limit_per_host=0,
        ttl_dns_cache=DNS_CACHE_SECONDS,
        keepalive_timeout=KEEPALIVE_SECONDS,
        ssl=ssl_context(),
    )
    session = aiohttp.ClientSession(
        connector=connector,
        trust_env=False,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        read_bufsize=READ_BUFSIZE,
        raise_for_status=False,
        skip_auto_headers=("User-Agent",),
    )
    # aiohttp silently re-sends an idempotent request once when the connection drops before
    # the answer. The fetcher's retry policy owns re-sending (it counts attempts, backs off,
    # feeds the circuit breaker), so turn that off; the short keep-alive above makes reusing
    # a connection the server already closed unlikely.
    if hasattr(session, "_retry_connection"):
        session._retry_connection = False
    return session


def default_headers(settings: Settings) -> dict[str, str]:
    return {
        "User-Agent": settings.user_agent,
        "Accept": "image/avif,image/webp,image/png,image/jpeg,image/gif,image/*;q=0.8,*/*;q=0.5",
        "Accept-Encoding": "identity",
    }


def build_transport(settings: Settings, guard: Guard | None) -> GuardedAiohttpTransport:
    """The transport alone (call inside the event loop). The fetcher sends through it
    directly: every request it builds is complete (headers, timeouts; no cookies, auth or
    redirects to handle), so the client layer would only add work to each image."""
    return GuardedAiohttpTransport(build_session(settings, guard), guard)


def build_client(settings: Settings, guard: Guard | None) -> httpx.AsyncClient:
    """httpx.AsyncClient over `GuardedAiohttpTransport` (call inside the event loop)."""
    transport = build_transport(settings, guard)
    client = httpx.AsyncClient(
        transport=transport,
        headers=default_headers(settings),
        timeout=httpx.Timeout(
            connect=settings.http_connect_timeout,
            read=settings.http_read_timeout,
            write=settings.http_read_timeout,
            pool=None,
        ),
        follow_redirects=False,
        trust_env=False,
    )
    # The public `cookies` setter copies into a plain Cookies; set the store itself
    # (tests/test_fetch.py checks that no cookie is kept).
    client._cookies = IgnoredCookies()
    return client
