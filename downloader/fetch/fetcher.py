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

Circuit breaker: per host (name:port), counts consecutive connection failures, timeouts
(connect, read, and the image deadline) and 5xx answers other than 503. Other HTTP answers
close it again. See `CircuitBreaker` for the open/half-open cycle; refused requests end with
``circuit_open``.

Throttling (429, 503): the whole host slows down (`downloader.fetch.hostrate`: Retry-After
pauses every request to it, its rate is cut, then raised again while it answers well). A 429
is not a failed attempt (MAX_RETRIES counts real failures, 503 among them) and waiting for the
host is not charged to the deadline; the image fails with ``throttled`` only when the host
kept answering it 429 for THROTTLE_PATIENCE seconds.
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
from downloader.fetch.hostrate import THROTTLE_STATUSES, HostRates, HostState
from downloader.fetch.limits import CircuitBreaker, HostSlots, Pacer, Slots, scaled
from downloader.fetch.outcomes import (
    Failure,
    FetchOutcome,
    FetchStats,
    format_seconds,
)
from downloader.fetch.request_failures import SEND_ERRORS, request_failure
from downloader.fetch.retry import RetryPolicy, is_retryable_status, parse_retry_after
from downloader.fetch.tempfiles import TEMP_SUFFIX
from downloader.fetch.verify import ImageCheck
from downloader.guard import Guard
from downloader.redact import redact_logger

if TYPE_CHECKING:
    from downloader.settings import Settings

log = redact_logger(logging.getLogger(__name__))  # its lines can name URLs

TOO_MANY_REQUESTS = 429
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
        "throttled_since",
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
        self.throttled_since: float | None = None  # first throttling answer in a row


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
        self._rates = HostRates(settings.per_host_qps, settings.retry_after_cap)
        self._patience = settings.throttle_wait
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
        """Use `share` (0 < share <= 1) of the configured global concurrency and QPS, e.g.
        1/N when N engines share one deployment's limits. Applies to new requests. Per-host
        limits are not shared: each host belongs to one engine at a time
        (`downloader.host_partition`), which applies them whole."""
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        self.share = share
        self._global.set_capacity(scaled(self.settings.max_global_concurrency, share))
        self._pacer.set_rate(self.settings.download_qps * share)

    @property
    def limits(self) -> dict[str, float]:
        """The limits in force (after `set_share`)."""
        return {
            "global_concurrency": self._global.capacity,
            "per_host_concurrency": self.settings.max_per_host_concurrency,
            "qps": self._pacer.rate,
        }

    def host_states(self, now: float | None = None) -> list[HostState]:
        """Hosts slowed down now (learned rate, Retry-After pause, throttling) and hosts whose
        breaker is open (rate -1), for the job page."""
        now = asyncio.get_running_loop().time() if now is None else now
        states = self._rates.states(now)
        shown = {state.host for state in states}
        for host, wait in self._breaker.open_hosts(now):
            if host not in shown:
                states.append(HostState(host, -1.0, round(wait, 1), 0.0))
        return states

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
            if result.status == TOO_MANY_REQUESTS:
                assert job.throttled_since is not None
                waited = loop.time() - job.throttled_since
                if waited >= self._patience:
                    return self._throttled(job, host, result, waited)
                self.stats.retries += 1
                continue  # the host's pause and rate (HostRates) set when it goes again
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
            await self._rates.wait_turn(host)  # not charged to the deadline, no global slot
            await self._global.acquire()
            try:
                allowed, probe = self._breaker.admit(host, loop.time())
                if not allowed:
                    return self._circuit_open(job, host, loop.time())
                settled = False
                try:
                    await self._pacer.acquire()
                    sent_at = await self._rates.gate(host)
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
                    self._learn(job, host, result, sent_at, loop.time())
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

    def _learn(
        self,
        job: _Job,
        host: str,
        result: FetchOutcome | _Redirect | Failure,
        sent: float,
        now: float,
    ) -> None:
        """Tell the host's rate how it answered; a 429 is no attempt of the image."""
        if isinstance(result, Failure) and result.status in THROTTLE_STATUSES:
            self._rates.throttled(host, result.retry_after, sent, now)
            if result.status == TOO_MANY_REQUESTS:
                job.attempts -= 1
                job.new_attempt = True
                if job.throttled_since is None:
                    job.throttled_since = now
        elif not isinstance(result, Failure) or result.reachable is True:
            self._rates.answered(host, now)
            job.throttled_since = None

    async def _exchange(
        self, transport: Transport, job: _Job
    ) -> FetchOutcome | _Redirect | Failure:
        url = job.current
        self.stats.requests += 1
        try:
            response = await transport.send(url, job.headers)
        except SEND_ERRORS as exc:
            return request_failure(exc, self.settings)
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
                # a server error counts for the breaker like a timeout; 503 is throttling
                reachable=not (500 <= status < 600 and status != 503),
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

    def _throttled(self, job: _Job, host: str, fail: Failure, waited: float) -> FetchOutcome:
        return self._final(
            job,
            "throttled",
            f"{host} kept answering {fail.status} (slow down) for {format_seconds(waited)}; "
            f"the image was given up after THROTTLE_PATIENCE ({format_seconds(self._patience)}).",
            fail.status,
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
