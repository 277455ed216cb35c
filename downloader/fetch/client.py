"""HTTP client construction: a guarded HTTP/1.1 transport under httpx's API.

httpx stays the API (httpx.Request in, httpx.Response out: the transport is the one I/O seam).
The wire work is `wire.HttpConnection` (asyncio + httptools), which costs far less CPU per
image than httpcore or aiohttp's client (see benchmarks/bench_fetch.py). The fetcher uses the
transport's own `send` (an httpx.URL and the request's bytes in, the connection with the
response's head out), which skips building httpx's Request and Response for every image;
`handle_async_request` is `send` under httpx's API, and `build_client` wraps the transport in
an httpx.AsyncClient for everything else. The transport

* vets the connect target: names through the guard's resolver (every resolved address is
  checked and only vetted ones are connected to; vetted answers are cached for
  `DNS_CACHE_SECONDS`, at most `DNS_CACHE_SIZE` names), IP-literal hosts with `Guard.check_host`;
* keeps idle connections per (scheme, host, port) for `KEEPALIVE_SECONDS`, and never reuses
  a connection whose exchange did not end cleanly;
* maps errors to precise httpx exceptions (connect vs read timeout, refused vs reset, TLS,
  truncated body, blocked address).

No proxy (a proxy would make the guard check the proxy's address instead of the target's),
no cookies, no retries (the fetcher's retry policy owns re-sending: it counts attempts, backs
off, feeds the circuit breaker). The body is passed through undecoded: the fetcher decodes it
itself so that decoded bytes count against the size limit.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import certifi
import httpx

from downloader.fetch.limits import ExpiringLRU
from downloader.fetch.wire import HttpConnection, TruncatedBody, describe_os_error, request_bytes
from downloader.guard import AddressBlockedError, Guard, GuardedResolver, parse_ip_host

if TYPE_CHECKING:
    from downloader.settings import Settings

__all__ = ["BlockedAddress", "GuardedTransport", "TLSError", "TruncatedBody", "build_client"]

DNS_CACHE_SECONDS = 30  # only vetted addresses are cached
DNS_CACHE_SIZE = 4096  # names (and ports) kept, least recently used dropped first
KEEPALIVE_SECONDS = 4.0  # idle pooled connections are closed before most servers close them
DEFAULT_PORTS = {b"http": 80, b"https": 443}


class BlockedAddress(httpx.ConnectError):
    """The guard refused the address the request would connect to."""

    def __init__(self, reason: str, *, request: httpx.Request | None = None) -> None:
        super().__init__(reason, request=request)
        self.reason = reason


class TLSError(httpx.ConnectError):
    """TLS handshake or certificate verification failed (not retried)."""


class ConnectionStream(httpx.AsyncByteStream):
    """A response body read from its connection; closing hands the connection back."""

    __slots__ = ("_connection", "_request", "_transport")

    def __init__(
        self, transport: GuardedTransport, connection: HttpConnection, request: httpx.Request
    ) -> None:
        self._transport = transport
        self._connection = connection
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._connection.body():
                yield chunk
        except httpx.TransportError as exc:
            exc.request = self._request
            raise

    async def aclose(self) -> None:
        # Back to the pool only when the body was read to the end; otherwise closed (a
        # half-read connection is never reused).
        self._transport.release(self._connection)


Address = tuple[Any, ...]  # what asyncio's create_connection needs: family, proto, host, port


class GuardedTransport(httpx.AsyncBaseTransport):
    """httpx transport over pooled `HttpConnection`s; vets every address it connects to."""

    def __init__(self, guard: Guard | None, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.guard = guard
        self._resolver: GuardedResolver | None = guard.resolver() if guard is not None else None
        self._ssl = ssl_context
        self._idle: dict[tuple[bytes, str, int], list[HttpConnection]] = {}
        self._open: set[HttpConnection] = set()
        self._dns: ExpiringLRU[tuple[str, int], list[Address]] = ExpiringLRU(
            DNS_CACHE_SIZE, DNS_CACHE_SECONDS
        )
        self._next_sweep = 0.0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            connection = await self.send(
                request.url,
                request_bytes(request),
                request.extensions.get("timeout") or {},
                head_only=request.method == "HEAD",
            )
        except httpx.TransportError as exc:
            exc.request = request
            raise
        extensions: dict[str, Any] = {
            "http_version": b"HTTP/" + connection.http_version.encode("ascii"),
            "pool_key": connection.key,
        }
        if connection.reason:
            extensions["reason_phrase"] = connection.reason
        return httpx.Response(
            status_code=connection.status,
            headers=connection.headers,
            stream=ConnectionStream(self, connection, request),
            request=request,
            extensions=extensions,
        )

    async def send(
        self,
        url: httpx.URL,
        request: bytes,
        timeout: dict[str, float | None],
        *,
        head_only: bool = False,
    ) -> HttpConnection:
        """Send `request` (its bytes as on the wire) to `url`'s server; the connection, with
        the response's head read. The caller reads its body (`HttpConnection.body`) and hands
        it back with `release`. Without httpx's Request and Response objects: the fetcher sends
        every image this way, and building them cost ~6% of an engine's CPU."""
        scheme = url.raw_scheme
        if scheme not in DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported scheme {url.scheme!r}")
        host = url.raw_host.decode("ascii")
        if not host:
            raise httpx.UnsupportedProtocol("the URL has no host")
        port = url.port or DEFAULT_PORTS[scheme]
        connection = self._idle_connection((scheme, host, port))
        if connection is None:
            connection = await self._connect(scheme, host, port, timeout)
        try:
            await connection.exchange(request, head_only=head_only)
        except BaseException:
            self._drop(connection)
            raise
        return connection

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl_context()
        return self._ssl

    def release(self, connection: HttpConnection) -> None:
        if not connection.reusable:
            self._drop(connection)
            return
        now = time.monotonic()
        connection.idle = True
        connection.idle_since = now
        self._idle.setdefault(connection.key, []).append(connection)
        if now >= self._next_sweep:
            self._sweep(now)

    def _idle_connection(self, key: tuple[bytes, str, int]) -> HttpConnection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < KEEPALIVE_SECONDS:
                connection.idle = False
                return connection
            self._drop(connection)
        return None

    def _sweep(self, now: float) -> None:
        """Close the idle connections past their keep-alive (at most once per keep-alive
        period): a job over thousands of hosts would otherwise hold a socket per host."""
        self._next_sweep = now + KEEPALIVE_SECONDS
        for key, idle in list(self._idle.items()):
            kept = [c for c in idle if not c.closed and now - c.idle_since < KEEPALIVE_SECONDS]
            for connection in idle:
                if connection not in kept:
                    self._drop(connection)
            if kept:
                self._idle[key] = kept
            else:
                del self._idle[key]

    def _drop(self, connection: HttpConnection) -> None:
        connection.close()
        self._open.discard(connection)

    async def _connect(
        self,
        scheme: bytes,
        host: str,
        port: int,
        timeout: dict[str, float | None],
    ) -> HttpConnection:
        loop = asyncio.get_running_loop()
        tls = scheme == b"https"
        try:
            async with asyncio.timeout(timeout.get("connect")):
                addresses = await self._addresses(host, port)
                last_error: OSError | None = None
                for family, proto, address, address_port in addresses:
                    try:
                        _, connection = await loop.create_connection(
                            lambda: HttpConnection(loop, timeout.get("read")),
                            host=address,
                            port=address_port,
                            family=family,
                            proto=proto,
                            ssl=self._tls_context() if tls else None,
                            server_hostname=host if tls else None,
                        )
                        break
                    except (ssl.SSLError, ssl.CertificateError) as exc:
                        raise TLSError(describe_os_error(exc)) from exc
                    except OSError as exc:
                        last_error = exc
                else:
                    detail = (
                        describe_os_error(last_error) if last_error else "no address to connect to"
                    )
                    raise httpx.ConnectError(detail)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout("connect timeout") from exc
        connection.key = (scheme, host, port)
        self._open.add(connection)
        return connection

    async def _addresses(self, host: str, port: int) -> list[Address]:
        """Where to connect: an IP literal once the guard allows it, or the vetted addresses
        DNS returned (cached)."""
        if self.guard is not None:
            reason = self.guard.check_host(host)
            if reason is not None:
                raise BlockedAddress(reason)
        literal = parse_ip_host(host)
        if literal is not None:
            family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
            return [(family, socket.IPPROTO_TCP, str(literal), port)]
        now = time.monotonic()
        cached = self._dns.get((host, port), now)
        if cached is not None:
            return cached
        try:
            if self._resolver is not None:
                results = await self._resolver.resolve(host, port, socket.AF_UNSPEC)
                addresses: list[Address] = [
                    (r["family"], r["proto"], r["host"], r["port"]) for r in results
                ]
            else:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM
                )
                addresses = [(info[0], info[2], info[4][0], info[4][1]) for info in infos]
        except AddressBlockedError as exc:
            raise BlockedAddress(exc.reason) from exc
        except OSError as exc:
            raise httpx.ConnectError(describe_os_error(exc)) from exc
        self._dns.put((host, port), addresses, now)
        return addresses

    async def aclose(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()
        if self._resolver is not None:
            await self._resolver.close()


class IgnoredCookies(httpx.Cookies):
    """A cookie store that keeps nothing: images need no cookies, a big job would otherwise grow
    the jar without bound, and skipping httpx's urllib-based cookie parsing saves time."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


def ssl_context() -> ssl.SSLContext:
    """Certificate and host-name verification against certifi's CA bundle."""
    return ssl.create_default_context(cafile=certifi.where())


def default_headers(settings: Settings) -> dict[str, str]:
    return {
        "User-Agent": settings.user_agent,
        "Accept": "image/avif,image/webp,image/png,image/jpeg,image/gif,image/*;q=0.8,*/*;q=0.5",
        "Accept-Encoding": "identity",
    }


def build_transport(settings: Settings, guard: Guard | None) -> GuardedTransport:
    """The transport alone. The fetcher sends through it directly (`GuardedTransport.send`):
    its requests need no cookies, auth or redirect handling, so the client layer would only
    add work to each image. Its TLS context is made on the first https
    connection: loading the CA bundle costs ~35 ms, which a job of plain http:// URLs (and
    every engine's start) need not pay."""
    return GuardedTransport(guard)


def build_client(settings: Settings, guard: Guard | None) -> httpx.AsyncClient:
    """httpx.AsyncClient over `GuardedTransport` (call inside the event loop)."""
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
