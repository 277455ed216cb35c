"""`Fetcher`: download one image URL to a verified temp file, politely.

Per image: guard check -> [per-host slot -> global slot -> circuit breaker -> QPS pacer ->
request -> body (SHA-256 and size counted as bytes arrive) -> temp file -> sniff] with manual
redirects (each hop re-checked by the guard) and retries (slots released while sleeping).

The body is spooled in memory up to SPOOL_BYTES (256 KiB) and then written in pieces of that
size, so a typical image costs one file creation and one write, and its dimensions are read
from memory; the magic number is checked as soon as the first bytes arrive (a web page is
refused without reading it all, and without creating a file).

Deadline semantics (DOWNLOAD_DEADLINE): a budget for one image's *own* time - every request of
every attempt (connect, headers, body, redirect hops) plus the backoff sleeps between attempts.
Time spent queued for a concurrency slot or a QPS token is not charged, so a deep queue never
times images out; a trickling server does (error_code ``timeout``). A retry whose backoff would
not fit in the remaining budget is not attempted: the last failure is returned at once.

Content-Encoding: ``identity`` is asked for; if a server still sends ``gzip``/``x-gzip`` or
``deflate`` the fetcher decodes it itself, in bounded steps, counting the *decoded* bytes against
MAX_IMAGE_SIZE_MB (a gzip bomb ends as ``too_large`` with at most one step in memory). Any other
encoding (br, zstd, compress, stacked encodings) is refused with ``bad_encoding``.

Circuit breaker: per host (name:port), counts consecutive connection failures and timeouts
(connect, read, and the image deadline). HTTP answers of any status close it again. See
`CircuitBreaker` for the open/half-open cycle; refused requests end with ``circuit_open``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http
import logging
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import httpx

from downloader.fetch.client import (
    BlockedAddress,
    TLSError,
    TruncatedBody,
    build_client,
    default_headers,
)
from downloader.fetch.limits import CircuitBreaker, HostSlots, Pacer, Slots, scaled
from downloader.fetch.retry import RetryPolicy, is_retryable_status, parse_retry_after
from downloader.fetch.sniff import HEAD_BYTES, SniffError, check_magic, image_info
from downloader.guard import Guard

if TYPE_CHECKING:
    from downloader.settings import Settings

log = logging.getLogger(__name__)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
DRAIN_LIMIT = 64 * 1024  # read small error/redirect bodies so the connection can be reused
DECODE_STEP = 256 * 1024  # most decoded bytes produced per zlib call
SPOOL_BYTES = 256 * 1024  # body bytes kept in memory before they are written out
TEMP_SUFFIX = ".part"
_O_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


@dataclass(slots=True)
class FetchOutcome:
    """The result of one `Fetcher.fetch`. On success the caller owns `temp_path` (move it);
    on failure there is no file (the fetcher already deleted it)."""

    ok: bool
    error_code: str | None = None
    error: str | None = None
    http_status: int | None = None
    attempts: int = 0
    temp_path: Path | None = None
    sha256: str | None = None
    size: int | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    final_url: str | None = None


@dataclass(slots=True)
class FetchStats:
    """Counters for progress displays (read them any time; they only grow, except the gauges)."""

    requests: int = 0  # HTTP requests sent: attempts, retries and redirect hops
    retries: int = 0
    redirects: int = 0
    bytes: int = 0  # body bytes received (decoded)
    ok: int = 0
    failed: int = 0
    in_flight: int = 0  # gauge: fetch() calls running (queued or transferring)
    active: int = 0  # gauge: requests holding a connection slot

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Fail(Exception):
    """A failed request or body, as data (raised inside the hop, turned into a hop result)."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        reachable: bool | None = True,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        # breaker input: True = host answered, False = connection failure/timeout, None = n/a
        self.reachable = reachable


@dataclass(slots=True)
class _Redirect:
    url: httpx.URL
    status: int


class _Job:
    __slots__ = ("attempts", "current", "new_attempt", "redirects", "remaining", "visited")

    def __init__(self, url: httpx.URL, deadline: float) -> None:
        self.current = url
        self.attempts = 0  # requests sent as attempts (redirect hops are not new attempts)
        self.new_attempt = True  # the next request starts an attempt
        self.redirects = 0
        self.remaining = deadline
        self.visited = {str(url)}


class _Decoder:
    """Incremental gzip/deflate decoding with bounded output per step."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._obj: Any = None  # zlib decompress object, created on the first bytes

    def _make(self, first: bytes) -> Any:
        if self.encoding == "deflate":
            # "deflate" is zlib-wrapped by the RFC, raw by some servers: look at the header.
            zlib_header = (
                len(first) >= 2 and first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0
            )
            return zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
        return zlib.decompressobj(16 + zlib.MAX_WBITS)

    def feed(self, data: bytes, budget: int) -> tuple[list[bytes], int]:
        """Decoded pieces of `data`; stops early once more than `budget` bytes came out."""
        if self._obj is None:
            self._obj = self._make(data)
        obj = self._obj
        pieces: list[bytes] = []
        produced = 0
        buf = data
        while buf and not obj.eof:
            piece = obj.decompress(buf, DECODE_STEP)
            if piece:
                pieces.append(piece)
                produced += len(piece)
                if produced > budget:
                    break
            buf = obj.unconsumed_tail
        return pieces, produced

    @property
    def complete(self) -> bool:
        return self._obj is not None and bool(self._obj.eof)


def _host_key(url: httpx.URL) -> str:
    port = url.port or (443 if url.scheme == "https" else 80)
    host = url.host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason_phrase(response: httpx.Response) -> str:
    try:
        return http.HTTPStatus(response.status_code).phrase
    except ValueError:
        return response.reason_phrase or ""


def _mb(n: float) -> str:
    return f"{n / (1024 * 1024):.3g} MB"


def _secs(seconds: float) -> str:
    return f"{seconds:g} s"


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    if written < len(data):
        view = memoryview(data)
        while written < len(data):
            written += os.write(fd, view[written:])


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
        self._limit = settings.max_image_bytes
        self._deadline = settings.download_deadline
        self._headers = httpx.Headers(default_headers(settings))
        self._timeout = httpx.Timeout(
            connect=settings.http_connect_timeout,
            read=settings.http_read_timeout,
            write=settings.http_read_timeout,
            pool=None,
        ).as_dict()
        self._client: httpx.AsyncClient | None = None
        self._pid = os.getpid()

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Fetcher:
        if self._client is None:
            self._client = build_client(self.settings, self.guard)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

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

    async def fetch(self, url: str) -> FetchOutcome:
        """Download `url`; see the module docstring for the rules."""
        if self._client is None:
            raise RuntimeError("Fetcher is not open: use 'async with Fetcher(...)'")
        self.stats.in_flight += 1
        try:
            outcome = await self._fetch(self._client, url)
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

    async def _fetch(self, client: httpx.AsyncClient, url: str) -> FetchOutcome:
        refusal = self.guard.vet_url(url)
        if refusal is not None:
            return FetchOutcome(ok=False, error_code=refusal.code, error=refusal.reason)
        try:
            start_url = httpx.URL(url.strip())
        except (httpx.InvalidURL, ValueError, TypeError):
            return FetchOutcome(
                ok=False, error_code="bad_url", error="The URL is not a valid address."
            )
        job = _Job(start_url, self._deadline)
        loop = asyncio.get_running_loop()
        while True:
            host = _host_key(job.current)
            if self._breaker.is_open(host, loop.time()):
                return self._circuit_open(job, host, loop.time())
            if job.remaining <= 0:
                return self._deadline_failure(job)
            result = await self._hop(client, job, host)
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
        self, client: httpx.AsyncClient, job: _Job, host: str
    ) -> FetchOutcome | _Redirect | _Fail:
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
                            result = await self._exchange(client, job)
                    except TimeoutError:
                        if not scope.expired():
                            raise
                        result = _Fail(
                            "timeout",
                            f"The download did not finish within the "
                            f"{_secs(self._deadline)} deadline.",
                            reachable=False,
                        )
                        job.remaining = 0
                    finally:
                        self.stats.active -= 1
                        job.remaining -= loop.time() - started
                    reachable = result.reachable if isinstance(result, _Fail) else True
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
        self, client: httpx.AsyncClient, job: _Job
    ) -> FetchOutcome | _Redirect | _Fail:
        request = httpx.Request(
            "GET", job.current, headers=self._headers, extensions={"timeout": self._timeout}
        )
        self.stats.requests += 1
        try:
            response = await client.send(request, stream=True)
        except BlockedAddress as exc:
            return _Fail("blocked_address", _sentence(exc.reason), reachable=None)
        except TLSError as exc:
            return _Fail(
                "connection_error",
                f"The secure connection failed ({_short(exc)}).",
                reachable=None,
            )
        except httpx.ConnectTimeout:
            return _Fail(
                "timeout",
                "The server did not accept a connection within "
                f"{_secs(self.settings.http_connect_timeout)}.",
                retryable=True,
                reachable=False,
            )
        except httpx.ReadTimeout:
            return _Fail(
                "timeout",
                f"The server did not answer within {_secs(self.settings.http_read_timeout)}.",
                retryable=True,
                reachable=False,
            )
        except httpx.ConnectError as exc:
            return _Fail(
                "connection_error",
                f"Could not connect to the server ({_short(exc)}).",
                retryable=True,
                reachable=False,
            )
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            return _Fail("bad_url", f"The URL cannot be requested ({_short(exc)}).", reachable=None)
        except httpx.TransportError as exc:
            return _Fail(
                "connection_error",
                f"The connection failed before an answer ({_short(exc)}).",
                retryable=True,
                reachable=False,
            )
        try:
            return await self._handle(response, job)
        finally:
            await response.aclose()

    async def _handle(
        self, response: httpx.Response, job: _Job
    ) -> FetchOutcome | _Redirect | _Fail:
        status = response.status_code
        if status in REDIRECT_STATUSES and "location" in response.headers:
            await self._drain(response)
            try:
                target = job.current.join(response.headers["location"])
            except (httpx.InvalidURL, ValueError):
                return _Fail(
                    "bad_url",
                    "The server redirected to an invalid address.",
                    status=status,
                )
            return _Redirect(target, status)
        if not 200 <= status < 300 or status == 206:
            await self._drain(response)
            retryable = is_retryable_status(status)
            retry_after = None
            if retryable:
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            return _Fail(
                f"http_{status}",
                f"The server answered {status} {_reason_phrase(response)}.".replace(" .", "."),
                status=status,
                retryable=retryable,
                retry_after=retry_after,
            )
        return await self._receive(response, job)

    async def _drain(self, response: httpx.Response) -> None:
        """Read a small body to the end (keeps the connection reusable); skip big ones."""
        length = response.headers.get("content-length")
        if length is None or not length.isdigit() or int(length) > DRAIN_LIMIT:
            return
        with contextlib.suppress(httpx.HTTPError):
            async for _ in response.aiter_raw():
                pass

    async def _receive(self, response: httpx.Response, job: _Job) -> FetchOutcome | _Fail:
        status = response.status_code
        limit = self._limit
        encoding = response.headers.get("content-encoding", "").strip().lower()
        decoder: _Decoder | None = None
        if encoding in ("", "identity"):
            pass
        elif encoding in ("gzip", "x-gzip"):
            decoder = _Decoder("gzip")
        elif encoding == "deflate":
            decoder = _Decoder("deflate")
        else:
            return _Fail(
                "bad_encoding",
                f"The server sent the file with an unsupported encoding ({encoding[:40]}).",
                status=status,
            )
        length_header = response.headers.get("content-length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        if length is not None and length > limit:
            return _Fail(
                "too_large",
                f"The server announced {_mb(length)}, over the {_mb(limit)} limit.",
                status=status,
            )

        stats = self.stats
        digest = hashlib.sha256()
        size = 0  # decoded bytes
        received = 0  # bytes on the wire
        head = b""  # the first HEAD_BYTES decoded bytes, for the magic-number check
        sniffed = False
        # Bodies are spooled in memory up to SPOOL_BYTES and written with one system call;
        # bigger ones go to the file SPOOL_BYTES at a time. The file is created only once
        # there is something worth keeping.
        pending: list[bytes] = []
        pending_size = 0
        path: Path | None = None
        fd = -1
        keep = False
        try:
            try:
                async for chunk in response.aiter_raw():
                    received += len(chunk)
                    if decoder is None:
                        pieces: list[bytes] | tuple[bytes] = (chunk,)
                        produced = len(chunk)
                    else:
                        pieces, produced = decoder.feed(chunk, limit - size)
                    size += produced
                    stats.bytes += produced
                    if size > limit:
                        return _Fail(
                            "too_large",
                            f"The image is larger than the {_mb(limit)} limit.",
                            status=status,
                        )
                    for piece in pieces:
                        digest.update(piece)
                        pending.append(piece)
                    pending_size += produced
                    if not sniffed and pending_size:
                        if len(head) < HEAD_BYTES:
                            head = (
                                b"".join(pending)[:HEAD_BYTES]
                                if len(pending) > 1
                                else pending[0][:HEAD_BYTES]
                            )
                        if len(head) >= HEAD_BYTES:
                            check_magic(head)  # a web page is refused before it is all read
                            sniffed = True
                    if pending_size >= SPOOL_BYTES:
                        if fd < 0:
                            path, fd = self._create_temp()
                        _write_all(fd, b"".join(pending))
                        pending = []
                        pending_size = 0
            except SniffError as exc:
                return _Fail(exc.code, exc.message, status=status)
            except TruncatedBody:
                return _truncated(status)
            except httpx.ReadTimeout:
                return _Fail(
                    "timeout",
                    "The server stopped sending data for "
                    f"{_secs(self.settings.http_read_timeout)}.",
                    status=status,
                    retryable=True,
                    reachable=False,
                )
            except httpx.TransportError as exc:
                return _Fail(
                    "truncated",
                    f"The connection broke while the file was arriving ({_short(exc)}).",
                    status=status,
                    retryable=True,
                    reachable=None,
                )
            except zlib.error:
                return _Fail(
                    "bad_encoding",
                    f"The {encoding} data from the server is corrupt.",
                    status=status,
                )
            if length is not None and received < length:
                return _truncated(status)
            if decoder is not None and received and not decoder.complete:
                return _truncated(status)
            if size == 0:
                return _Fail("empty_body", "The server sent an empty file.", status=status)
            whole = b"".join(pending) if fd < 0 else None  # the body, when it is all in memory
            try:
                if whole is not None:
                    check_magic(whole[:HEAD_BYTES])
                    path, fd = self._create_temp()
                    _write_all(fd, whole)
                elif pending:
                    _write_all(fd, b"".join(pending))
                pending = []
                os.close(fd)
                fd = -1
                assert path is not None
                info = image_info(path, head or (whole or b"")[:HEAD_BYTES], whole)
            except SniffError as exc:
                return _Fail(exc.code, exc.message, status=status)
            keep = True
            return FetchOutcome(
                ok=True,
                http_status=status,
                attempts=job.attempts,
                temp_path=path,
                sha256=digest.hexdigest(),
                size=size,
                format=info.format,
                width=info.width,
                height=info.height,
                final_url=str(job.current),
            )
        finally:
            if fd >= 0:
                os.close(fd)
            if path is not None and not keep:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def _create_temp(self) -> tuple[Path, int]:
        """A new ``<pid>-<uuid>.part`` file in temp_dir (the pid lets a restart clean up)."""
        path = self.temp_dir / f"{self._pid}-{uuid4().hex}{TEMP_SUFFIX}"
        return path, os.open(path, _O_FLAGS, 0o600)

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

    def _failure(self, job: _Job, fail: _Fail) -> FetchOutcome:
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
            f"The download did not finish within the {_secs(self._deadline)} deadline.",
        )


def _truncated(status: int) -> _Fail:
    return _Fail(
        "truncated",
        "The server closed the connection before sending the whole file.",
        status=status,
        retryable=True,
        reachable=None,
    )


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    text = text.splitlines()[0]
    return text[:160]


def _sentence(reason: str) -> str:
    return reason if reason.endswith(".") else reason + "."


def remove_leftovers(temp_dir: Path, *, all_pids: bool = False) -> int:
    """Delete ``<pid>-<uuid>.part`` files left by dead processes (or by any, with all_pids).

    Returns how many were removed. Call at start-up, before fetchers of this host start.
    """
    removed = 0
    me = os.getpid()
    for path in Path(temp_dir).glob(f"*{TEMP_SUFFIX}"):
        pid_text = path.name.split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if not all_pids and (pid == me or _pid_alive(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
