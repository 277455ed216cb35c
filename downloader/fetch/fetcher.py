"""`Fetcher`: download one image URL to a verified temp file, politely.

Per image: guard check -> [per-host slot -> global slot -> circuit breaker -> QPS pacer ->
request -> body (SHA-256 and size counted as bytes arrive) -> temp file -> sniff] with manual
redirects (each hop re-checked by the guard) and retries (slots released while sleeping).

How the body is read, decoded and checked: see `downloader.fetch.body`.

Deadline semantics (DOWNLOAD_DEADLINE): a budget for one image's *own* time - every request of
every attempt (connect, headers, body, redirect hops) plus the backoff sleeps between attempts.
Time spent queued for a concurrency slot or a QPS token is not charged, so a deep queue never
times images out; a trickling server does (error_code ``timeout``). A retry whose backoff would
not fit in the remaining budget is not attempted: the last failure is returned at once.

Circuit breaker: per host (name:port), counts consecutive connection failures and timeouts
(connect, read, and the image deadline). HTTP answers of any status close it again. See
`CircuitBreaker` for the open/half-open cycle; refused requests end with ``circuit_open``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import aiohttp
import httpx

from downloader.errors import excerpt
from downloader.fetch.body import DECODE_STEP, SPOOL_BYTES, BodyReceiver
from downloader.fetch.client import (
    Transport,
    body_chunks,
    build_transport,
    default_headers,
    header_map,
    merge_headers,
)
from downloader.fetch.limits import CircuitBreaker, HostSlots, Pacer, Slots, scaled
from downloader.fetch.outcomes import (
    Failure,
    FetchOutcome,
    FetchStats,
    as_sentence,
    describe_exception,
    format_seconds,
)
from downloader.fetch.retry import RetryPolicy, is_retryable_status, parse_retry_after
from downloader.fetch.tempfiles import TEMP_SUFFIX
from downloader.fetch.transport_errors import BadResponse, BlockedAddress, ProxyRefused, TLSError
from downloader.fetch.verify import ImageCheck
from downloader.guard import Guard
from downloader.redact import redact_logger

if TYPE_CHECKING:
    from downloader.settings import Settings

log = redact_logger(logging.getLogger(__name__))  # its lines can name URLs

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
DRAIN_LIMIT = 64 * 1024  # read small error/redirect bodies so the connection can be reused
REASON_QUOTE = 100  # characters of a server's reason phrase quoted in a message
# Credentials a redirect to another host does not carry (as curl and browsers do).
CROSS_HOST_DROPPED = frozenset({"authorization", "cookie", "proxy-authorization"})


@dataclass(slots=True)
class _Redirect:
    url: httpx.URL
    status: int


class _Job:
    __slots__ = (
        "attempts",
        "current",
        "headers",
        "new_attempt",
        "redirects",
        "remaining",
        "visited",
    )

    def __init__(self, url: httpx.URL, deadline: float, headers: Mapping[str, str]) -> None:
        self.current = url
        self.headers = headers  # sent with every request of this image (never logged)
        self.attempts = 0  # requests sent as attempts (redirect hops are not new attempts)
        self.new_attempt = True  # the next request starts an attempt
        self.redirects = 0
        self.remaining = deadline
        self.visited = {str(url)}


def _host_key(url: httpx.URL) -> str:
    """The per-host key of `url` (slots, breaker): one per host and port however the URL spells
    them (``Example.com.``, ``2130706434``, ``[0:0::1]`` ...), see `downloader.guard.host_key`."""
    port = url.port or (443 if url.scheme == "https" else 80)
    return Guard.host_key(url.raw_host.decode("ascii"), port)


def _reason_phrase(response: aiohttp.ClientResponse) -> str:
    """The standard phrase of the status, or the server's own (quoted short: it chose it)."""
    try:
        return http.HTTPStatus(response.status).phrase
    except ValueError:
        return excerpt((response.reason or "").strip(), REASON_QUOTE)


class Fetcher:
    """Downloads image URLs to temp files in `temp_dir`, enforcing every politeness limit.

    Use as ``async with Fetcher(settings, temp_dir) as fetcher: outcome = await
    fetcher.fetch(url)``; `fetch` may be called concurrently from many tasks (the fetcher does
    the limiting). It never raises for per-URL problems; cancellation propagates (and removes
    the temp file).
    """

    def __init__(self, settings: Settings, temp_dir: Path, *, guard: Guard | None = None) -> None:
        self.settings = settings
        self.temp_dir = Path(temp_dir)
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.guard = guard or Guard(settings)
        self.stats = FetchStats()
        self._body = BodyReceiver(
            limit=settings.max_image_bytes,
            read_timeout=settings.http_read_timeout,
            stats=self.stats,
            temp_dir=self.temp_dir,
            image_check=ImageCheck(tuple(settings.accepted_formats), settings.verify_images),
        )
        self.policy = RetryPolicy(
            max_retries=settings.max_retries,
            backoff_base=settings.backoff_base,
            retry_after_cap=settings.retry_after_cap,
        )
        self.share = 1.0
        self._global = Slots(settings.max_global_concurrency)
        self._hosts = HostSlots(settings.max_per_host_concurrency)
        self._pacer = Pacer(settings.download_qps)
        self._breaker = CircuitBreaker(
            settings.circuit_breaker_failures, settings.circuit_breaker_cooldown
        )
        self._deadline = settings.download_deadline
        self._headers = default_headers(settings)
        self._transport: Transport | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Fetcher:
        if self._transport is None:
            self._transport = build_transport(self.settings, self.guard)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.aclose()

    # -- limits ----------------------------------------------------------------------------

    def set_share(self, share: float) -> None:
        """Use `share` (0 < share <= 1) of the configured global/per-host concurrency and QPS,
        e.g. 1/N when N workers share one deployment's limits. Applies to new requests."""
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        self.share = share
        self._global.set_capacity(scaled(self.settings.max_global_concurrency, share))
        self._hosts.set_capacity(scaled(self.settings.max_per_host_concurrency, share))
        self._pacer.set_rate(self.settings.download_qps * share)

    @property
    def limits(self) -> dict[str, float]:
        """The limits in force (after `set_share`)."""
        return {
            "global_concurrency": self._global.capacity,
            "per_host_concurrency": scaled(self.settings.max_per_host_concurrency, self.share),
            "qps": self._pacer.rate,
        }

    # -- fetching --------------------------------------------------------------------------

    async def fetch(self, url: str, headers: Mapping[str, str] | None = None) -> FetchOutcome:
        """Download `url`; see the module docstring for the rules. `headers`: extra request
        headers for this image (the caller chose them for its host); they override the
        defaults (User-Agent, Accept ...). Authorization and Cookie are not sent on after a
        redirect to another host. Header values are never logged."""
        if self._transport is None:
            raise RuntimeError("Fetcher is not open: use 'async with Fetcher(...)'")
        self.stats.in_flight += 1
        try:
            outcome = await self._fetch(self._transport, url, merge_headers(self._headers, headers))
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # a bug must not take down the whole batch
            log.exception("unexpected error fetching %s", url)
            outcome = FetchOutcome(
                ok=False,
                error_code="internal_error",
                error=f"Unexpected error in the downloader ({type(exc).__name__}).",
            )
        finally:
            self.stats.in_flight -= 1
        if outcome.ok:
            self.stats.ok += 1
        else:
            self.stats.failed += 1
        return outcome

    async def _fetch(
        self, transport: Transport, url: str, headers: Mapping[str, str]
    ) -> FetchOutcome:
        refusal = self.guard.vet_url(url)
        if refusal is not None:
            return FetchOutcome(ok=False, error_code=refusal.code, error=refusal.reason)
        try:
            start_url = httpx.URL(url.strip())
        except (httpx.InvalidURL, ValueError, TypeError):
            return FetchOutcome(
                ok=False, error_code="bad_url", error="The URL is not a valid address."
            )
        job = _Job(start_url, self._deadline, headers)
        loop = asyncio.get_running_loop()
        while True:
            host = _host_key(job.current)
            if self._breaker.is_open(host, loop.time()):
                return self._circuit_open(job, host, loop.time())
            if job.remaining <= 0:
                return self._deadline_failure(job)
            result = await self._hop(transport, job, host)
            if isinstance(result, FetchOutcome):
                return result
            if isinstance(result, _Redirect):
                failure = self._follow(job, result)
                if failure is not None:
                    return failure
                continue
            # a failed request
            if (
                result.retryable
                and job.attempts <= self.policy.max_retries
                and not self._breaker.is_open(host, loop.time())
            ):
                delay = self.policy.delay(job.attempts, result.retry_after)
                if delay < job.remaining:
                    self.stats.retries += 1
                    slept_from = loop.time()
                    await asyncio.sleep(delay)
                    job.remaining -= loop.time() - slept_from
                    job.new_attempt = True
                    continue
            return self._failure(job, result)

    async def _hop(
        self, transport: Transport, job: _Job, host: str
    ) -> FetchOutcome | _Redirect | Failure:
        """One request under the host and global slots, the breaker, the pacer, the deadline."""
        loop = asyncio.get_running_loop()
        await self._hosts.acquire(host)
        try:
            await self._global.acquire()
            try:
                allowed, probe = self._breaker.admit(host, loop.time())
                if not allowed:
                    return self._circuit_open(job, host, loop.time())
                settled = False
                try:
                    await self._pacer.acquire()
                    if job.new_attempt:
                        job.attempts += 1
                        job.new_attempt = False
                    self.stats.active += 1
                    started = loop.time()
                    try:
                        async with asyncio.timeout(job.remaining) as scope:
                            result = await self._exchange(transport, job)
                    except TimeoutError:
                        if not scope.expired():
                            raise
                        result = Failure(
                            "timeout",
                            f"The download did not finish within the "
                            f"{format_seconds(self._deadline)} deadline.",
                            reachable=False,
                        )
                        job.remaining = 0
                    finally:
                        self.stats.active -= 1
                        job.remaining -= loop.time() - started
                    reachable = result.reachable if isinstance(result, Failure) else True
                    if reachable is True:
                        self._breaker.success(host)
                    elif reachable is False:
                        self._breaker.failure(host, loop.time(), probe)
                    else:
                        self._breaker.abandon(host, probe)
                    settled = True
                    return result
                finally:
                    if not settled:
                        self._breaker.abandon(host, probe)
            finally:
                self._global.release()
        finally:
            self._hosts.release(host)

    async def _exchange(
        self, transport: Transport, job: _Job
    ) -> FetchOutcome | _Redirect | Failure:
        url = job.current
        self.stats.requests += 1
        try:
            response = await transport.send(url, job.headers)
        except BlockedAddress as exc:
            return Failure("blocked_address", as_sentence(exc.reason), reachable=None)
        except TLSError as exc:
            hint = f"; {exc.hint}" if exc.hint else ""
            return Failure(
                "connection_error",
                f"The secure connection failed ({describe_exception(exc)}){hint}.",
                reachable=None,
            )
        except ProxyRefused as exc:
            return Failure(
                "connection_error", f"{as_sentence(describe_exception(exc))}", reachable=None
            )
        except httpx.ConnectTimeout:
            return Failure(
                "timeout",
                "The server did not accept a connection within "
                f"{format_seconds(self.settings.http_connect_timeout)}.",
                retryable=True,
                reachable=False,
            )
        except httpx.ReadTimeout:
            return Failure(
                "timeout",
                "The server did not answer within "
                f"{format_seconds(self.settings.http_read_timeout)}.",
                retryable=True,
                reachable=False,
            )
        except httpx.ConnectError as exc:
            return Failure(
                "connection_error",
                f"Could not connect to the server ({describe_exception(exc)}).",
                retryable=True,
                reachable=False,
            )
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            return Failure(
                "bad_url",
                f"The URL cannot be requested ({describe_exception(exc)}).",
                reachable=None,
            )
        except BadResponse as exc:  # a head past a cap: the same server would send it again
            return Failure("bad_response", str(exc), reachable=None)
        except httpx.TransportError as exc:
            return Failure(
                "connection_error",
                f"The connection failed before an answer ({describe_exception(exc)}).",
                retryable=True,
                reachable=False,
            )
        try:
            return await self._handle(response, job)
        finally:
            # pooled only if the body was read to its end
            transport.release(response, complete=response.content.at_eof())

    async def _handle(
        self, response: aiohttp.ClientResponse, job: _Job
    ) -> FetchOutcome | _Redirect | Failure:
        status = response.status
        headers = header_map(response.raw_headers)
        if status in REDIRECT_STATUSES and "location" in headers:
            await self._drain(response, headers)
            try:
                target = job.current.join(headers["location"])
            except (httpx.InvalidURL, ValueError):
                return Failure(
                    "bad_url",
                    "The server redirected to an invalid address.",
                    status=status,
                )
            return _Redirect(target, status)
        if not 200 <= status < 300 or status == 206:
            await self._drain(response, headers)
            retryable = is_retryable_status(status)
            retry_after = None
            if retryable:
                retry_after = parse_retry_after(headers.get("retry-after"))
            return Failure(
                f"http_{status}",
                f"The server answered {status} {_reason_phrase(response)}.".replace(" .", "."),
                status=status,
                retryable=retryable,
                retry_after=retry_after,
            )
        return await self._body.receive(
            status, headers, body_chunks(response), job.attempts, job.current
        )

    async def _drain(self, response: aiohttp.ClientResponse, headers: dict[str, str]) -> None:
        """Read a small body to the end (keeps the connection reusable); skip big ones."""
        length = headers.get("content-length")
        if length is None or not length.isdigit() or int(length) > DRAIN_LIMIT:
            return
        with contextlib.suppress(httpx.HTTPError):
            async for _ in body_chunks(response):
                pass

    # -- outcomes ----------------------------------------------------------------------------

    def _follow(self, job: _Job, redirect: _Redirect) -> FetchOutcome | None:
        """Move `job` to the redirect target, or the failure that stops it."""
        self.stats.redirects += 1
        target = str(redirect.url)
        if target in job.visited:
            return self._final(
                job, "too_many_redirects", "The server redirected in a loop.", redirect.status
            )
        job.redirects += 1
        if job.redirects > self.settings.max_redirects:
            return self._final(
                job,
                "too_many_redirects",
                f"The server redirected more than {self.settings.max_redirects} times.",
                redirect.status,
            )
        refusal = self.guard.vet_url(target)
        if refusal is not None:
            message = refusal.reason
            if refusal.code == "blocked_address":
                message = f"Redirected to a blocked address: {message}"
            return self._final(job, refusal.code, message, redirect.status, final_url=target)
        job.visited.add(target)
        if _host_key(redirect.url) != _host_key(job.current):
            job.headers = {
                name: value
                for name, value in job.headers.items()
                if name.lower() not in CROSS_HOST_DROPPED
            }
        job.current = redirect.url
        return None

    def _final(
        self,
        job: _Job,
        code: str,
        message: str,
        status: int | None = None,
        *,
        final_url: str | None = None,
    ) -> FetchOutcome:
        return FetchOutcome(
            ok=False,
            error_code=code,
            error=message,
            http_status=status,
            attempts=job.attempts,
            final_url=final_url or str(job.current),
        )

    def _failure(self, job: _Job, fail: Failure) -> FetchOutcome:
        return self._final(job, fail.code, fail.message, fail.status)

    def _circuit_open(self, job: _Job, host: str, now: float) -> FetchOutcome:
        wait = self._breaker.retry_in(host, now)
        return self._final(
            job,
            "circuit_open",
            f"{host} failed {self._breaker.threshold} times in a row; requests to it are "
            f"paused (next try in {wait:.0f} s).",
        )

    def _deadline_failure(self, job: _Job) -> FetchOutcome:
        return self._final(
            job,
            "timeout",
            f"The download did not finish within the {format_seconds(self._deadline)} deadline.",
        )


__all__ = [  # the names importable from here before the split
    "DECODE_STEP",
    "DRAIN_LIMIT",
    "REDIRECT_STATUSES",
    "SPOOL_BYTES",
    "TEMP_SUFFIX",
    "FetchOutcome",
    "FetchStats",
    "Fetcher",
]
