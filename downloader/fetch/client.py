"""The HTTP transport: aiohttp's client (HTTP/1.1, connection pool, happy eyeballs, proxies)
under the guard, with its errors mapped once to httpx's exception types.

Why aiohttp and not httpcore: on the loopback benchmark (benchmarks/bench_fetch.py, modes
`aiohttp`, `httpx`, `httpx-aiohttp`) httpcore's pool delivered about a tenth of aiohttp's
images per second at 64 in flight, and httpx's Request/Response objects on top of aiohttp
halved it again. So the fetcher sends through `Transport.send` (aiohttp directly); httpx stays
the API for everything else (`build_client`: httpx.AsyncClient over httpx-aiohttp, same guard).

The guard, where connections are made:

* IP-literal hosts are vetted with `Guard.check_host` before anything is sent (aiohttp does not
  resolve literals);
* names are resolved by `ConnectResolver`, the connector's resolver: every address is vetted
  and only the allowed ones are returned, so the connector (happy eyeballs over them) can only
  connect to vetted addresses. DNS rebinding is closed: the addresses checked are the ones
  connected to. Vetted answers are cached `DNS_CACHE_SECONDS`, at most `DNS_CACHE_SIZE` names;
* a proxy's own host (HTTP_PROXY / HTTPS_PROXY) is trusted: an administrator configured it.
  A request through a proxy has its *target* vetted first (`Transport.vet_proxied_target`);
  see docs/network.md for what the guard can and cannot see behind a proxy.

No cookies are kept (`DummyCookieJar`), no redirects followed (the fetcher follows them, hop
by hop, through the guard), no retries (the fetcher's retry policy owns them), and bodies are
not decoded (the fetcher decodes them so decoded bytes count against the size limit).
Response heads are bounded by aiohttp's parser: `MAX_HEADERS` header lines, `MAX_LINE` bytes
per line (status line included).
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
import yarl
from aiohttp.abc import AbstractResolver

from downloader.fetch.limits import ExpiringLRU
from downloader.fetch.protocol import strict_connector
from downloader.fetch.proxies import Proxy, ProxyRoutes
from downloader.fetch.transport_errors import (
    MAX_HEADERS,
    MAX_LINE,
    BadResponse,
    BlockedAddress,
    TLSError,
    TruncatedBody,
    translate,
)
from downloader.fetch.trust import ssl_context
from downloader.guard import (
    AddressBlockedError,
    Guard,
    Resolver,
    ResolveResult,
    SystemResolver,
    parse_ip_host,
)

if TYPE_CHECKING:
    from downloader.settings import Settings

__all__ = [
    "BadResponse",
    "BlockedAddress",
    "TLSError",
    "Transport",
    "TruncatedBody",
    "build_client",
    "default_headers",
    "header_map",
]

DNS_CACHE_SECONDS = 30  # only vetted addresses are cached
DNS_CACHE_SIZE = 4096  # names (and ports) kept, least recently used dropped first
KEEPALIVE_SECONDS = 4.0  # idle pooled connections are closed before most servers close them
HAPPY_EYEBALLS_DELAY = 0.25  # RFC 8305's connection attempt delay
DEFAULT_PORTS = {"http": 80, "https": 443}
ACCEPT_ORIGINAL = "image/jpeg,image/png,image/gif,image/*;q=0.8,*/*;q=0.5"
ACCEPT_ANY = "image/avif,image/webp,image/png,image/jpeg,image/gif,image/*;q=0.8,*/*;q=0.5"


class ConnectResolver(AbstractResolver):
    """The connector's resolver: guard-vetted answers, cached (bounded); proxy hosts trusted."""

    def __init__(
        self, guard: Guard | None, trusted: set[str], inner: Resolver | None = None
    ) -> None:
        self._system: Resolver = inner or SystemResolver()
        # guard.resolver() without an argument: a test's guard may bring its own DNS.
        self._guarded = (
            (guard.resolver(inner) if inner is not None else guard.resolver())
            if guard is not None
            else None
        )
        self._trusted = trusted
        self._cache: ExpiringLRU[tuple[str, int], list[ResolveResult]] = ExpiringLRU(
            DNS_CACHE_SIZE, DNS_CACHE_SECONDS
        )

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[ResolveResult]:
        key = (host, port)
        now = time.monotonic()
        cached = self._cache.get(key, now)
        if cached is not None:
            return cached
        if self._guarded is None or host.lower().rstrip(".") in self._trusted:
            results = await self._system.resolve(host, port, family)
        else:
            results = await self._guarded.resolve(host, port, family)
        self._cache.put(key, results, now)
        return results

    async def close(self) -> None:
        await self._system.close()
        if self._guarded is not None:
            await self._guarded.close()


def default_headers(settings: Settings) -> dict[str, str]:
    """The headers of every image request (a job's own headers override them)."""
    return {
        "User-Agent": settings.user_agent,
        "Accept": ACCEPT_ANY if settings.accept_any_format else ACCEPT_ORIGINAL,
        "Accept-Encoding": "identity",
    }


def merge_headers(base: Mapping[str, str], extra: Mapping[str, str] | None) -> dict[str, str]:
    """`base` with `extra` on top, names compared case-insensitively (extra wins)."""
    if not extra:
        return dict(base)
    lowered = {name.lower() for name in extra}
    merged = {name: value for name, value in base.items() if name.lower() not in lowered}
    merged.update(extra)
    return merged


def header_map(headers: Any) -> dict[str, str]:
    """Lower-cased names to values, as httpx's `Headers.get` reads them: a repeated header's
    values joined with ", " (stacked encodings stay visible), UTF-8 text where the bytes are
    UTF-8, Latin-1 otherwise. Repeated values are collected and joined once."""
    mapped: dict[str, str] = {}
    repeated: dict[str, list[str]] = {}
    for raw_name, raw_value in headers:
        name = raw_name.lower().decode("latin-1")
        try:
            value = raw_value.decode("utf-8")
        except UnicodeDecodeError:
            value = raw_value.decode("latin-1")
        if name in mapped:
            repeated.setdefault(name, [mapped[name]]).append(value)
        else:
            mapped[name] = value
    for name, values in repeated.items():
        mapped[name] = ", ".join(values)
    return mapped


async def body_chunks(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The response's body as it arrives (undecoded), with errors translated."""
    content = response.content
    try:
        while True:
            chunk = await content.readany()
            if not chunk:
                return
            yield chunk
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        mapped = translate(exc, in_body=True)
        if mapped is exc:
            raise
        raise mapped from exc


class Transport:
    """One aiohttp session under the guard; `send` one GET, read `body_chunks`, `release`."""

    def __init__(
        self, settings: Settings, guard: Guard | None, *, resolver: Resolver | None = None
    ) -> None:
        self.settings = settings
        self.guard = guard
        self.routes = ProxyRoutes(settings)
        self._inner_resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | None = None
        self._targets: ExpiringLRU[tuple[str, int], bool] = ExpiringLRU(
            DNS_CACHE_SIZE, DNS_CACHE_SECONDS
        )
        self.resolver = ConnectResolver(guard, self.routes.hosts(), resolver)
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=settings.http_connect_timeout,
            sock_read=settings.http_read_timeout,
        )

    def session(self) -> aiohttp.ClientSession:
        """The session (made on first use, inside the event loop)."""
        if self._session is None:
            connector = strict_connector(
                resolver=self.resolver,
                use_dns_cache=False,  # ConnectResolver caches (bounded, vetted answers only)
                limit=0,  # the fetcher's slots limit concurrency
                keepalive_timeout=KEEPALIVE_SECONDS,
                happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY,
                ssl=False,  # per request: the TLS context is made on the first https URL
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                timeout=self._timeout,
                max_headers=MAX_HEADERS,
                max_line_size=MAX_LINE,
                max_field_size=MAX_LINE,
                trust_env=False,  # proxies come from the settings (ProxyRoutes)
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            )
            # aiohttp re-sends a GET once when a pooled connection fails; the fetcher's retry
            # policy owns re-sending (it counts attempts, backs off, feeds the breaker).
            self._session._retry_connection = False
        return self._session

    def tls_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl_context(self.settings)
        return self._ssl

    async def vet_proxied_target(self, host: str, port: int) -> None:
        """Before a request goes to a proxy: the target's host is vetted here, since the proxy
        (not us) connects to it. A name is resolved locally and its addresses vetted; a name
        that does not resolve locally (common behind a proxy) is left to the proxy."""
        if self.guard is None or parse_ip_host(host) is not None:
            return  # IP literals were vetted by check_host
        now = time.monotonic()
        if self._targets.get((host, port), now):
            return
        try:
            await self.resolver._guarded.resolve(host, port, socket.AF_UNSPEC)  # type: ignore[union-attr]
        except AddressBlockedError as exc:
            raise BlockedAddress(exc.reason) from exc
        except OSError:
            pass  # unknown here: the proxy resolves it (docs/network.md)
        self._targets.put((host, port), True, now)

    async def send(self, url: httpx.URL, headers: Mapping[str, str]) -> aiohttp.ClientResponse:
        """GET `url` with exactly `headers`; the response with its head read. The caller reads
        `body_chunks(response)` and then calls `release`."""
        scheme = url.scheme
        if scheme not in DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported scheme {scheme!r}")
        host = url.raw_host.decode("ascii")
        if not host:
            raise httpx.UnsupportedProtocol("the URL has no host")
        port = url.port or DEFAULT_PORTS[scheme]
        if self.guard is not None:
            reason = self.guard.check_host(host)
            if reason is not None:
                raise BlockedAddress(reason)
        proxy: Proxy | None = None
        if self.routes.configured:
            proxy = self.routes.proxy_for(scheme, host, port)
            if proxy is not None or host.lower() in self.routes.hosts():
                # A target equal to the proxy's host is vetted too (the connector trusts it).
                await self.vet_proxied_target(host, port)
        literal = parse_ip_host(host)
        if literal is not None and str(literal) != host.strip("[]"):
            # 127.1, 0x7f.0.0.1, 2130706433 ...: yarl wants the canonical spelling
            url = url.copy_with(host=str(literal))
        try:
            return await self.session()._request(
                "GET",
                yarl.URL(str(url), encoded=True),
                headers=headers,
                allow_redirects=False,
                ssl=self.tls_context() if scheme == "https" else False,
                proxy=proxy.url if proxy is not None else None,
                proxy_auth=proxy.auth if proxy is not None else None,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            mapped = translate(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    @staticmethod
    def release(response: aiohttp.ClientResponse, *, complete: bool) -> None:
        """Back to the pool when the body was read to its end; otherwise the connection is
        closed (a half-read connection is never reused)."""
        if complete:
            response.release()
        else:
            response.close()

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        await self.resolver.close()


def build_transport(settings: Settings, guard: Guard | None) -> Transport:
    """The fetcher's transport; its session and TLS context are made on first use."""
    return Transport(settings, guard)


class _GuardedAiohttpTransport(httpx.AsyncBaseTransport):
    """httpx's API over `Transport`: the same guard, proxies, trust and error mapping."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers.raw}
        headers.pop("Host", None)
        try:
            response = await self.transport.send(request.url, headers)
        except httpx.TransportError as exc:
            exc.request = request
            raise
        body = b"".join([chunk async for chunk in body_chunks(response)])
        self.transport.release(response, complete=True)
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            content=body,
            request=request,
        )

    async def aclose(self) -> None:
        await self.transport.aclose()


def build_client(settings: Settings, guard: Guard | None) -> httpx.AsyncClient:
    """httpx.AsyncClient over the guarded transport (call inside the event loop); for code
    that wants httpx's API (small bodies: each is read whole)."""
    return httpx.AsyncClient(
        transport=_GuardedAiohttpTransport(Transport(settings, guard)),
        headers=default_headers(settings),
        follow_redirects=False,
        trust_env=False,
    )
