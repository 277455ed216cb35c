"""One HTTP/1.1 client connection: an asyncio protocol with httptools' parser (llhttp).

Why not aiohttp's client: per image it cost ~0.2 ms of CPU more than this (request objects,
stream readers, timers, multidicts; benchmarks/bench_fetch.py, modes `transport` and `raw`),
which was a sixth of a whole download on this project's benchmark. This is only the wire:
connecting, the guard, pooling and the httpx API are in `client.py`.

A connection carries one exchange at a time. The response's body arrives as the chunks the
socket delivered; reading pauses while more than `HIGH_WATER` bytes wait to be consumed.
The read timeout is the longest silence allowed while the caller waits for data.

A server chooses what it sends, so the head is capped as it is parsed (as h11 and aiohttp
cap theirs): `MAX_HEAD_BYTES` for the whole head (interim 1xx answers included),
`MAX_HEADERS` header lines, `MAX_STATUS_LINE` for the reason phrase. Past a cap the exchange
fails at once with `BadResponse`, before the rest is read or kept. Chunk framing and trailers
are held to the same caps (`MAX_HEAD_BYTES` between two packets that carry body bytes). Bytes
after the answer's end (past its Content-Length or its last chunk) are never part of the body:
the connection is closed instead of reused (a blank line, which RFC 9112 lets a client skip,
is ignored).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import NoReturn

import httptools
import httpx

HIGH_WATER = 2**19  # body bytes buffered before the socket stops being read
CLOSE_DELIMITED = -1  # the body ends when the server closes (no length, not chunked)
MAX_HEAD_BYTES = 64 * 1024  # a response's head: status lines and header lines, 1xx included
MAX_HEADERS = 100  # header lines in one head
MAX_STATUS_LINE = 8 * 1024  # the reason phrase (aiohttp's line limit is 8190)


class TruncatedBody(httpx.RemoteProtocolError):
    """The connection ended before the whole body (Content-Length or chunked) arrived."""


class BadResponse(httpx.RemoteProtocolError):
    """The server's answer broke a limit of this client (its text is a sentence for users)."""


class _StopParsing(Exception):
    """Raised from a parser callback to stop llhttp at once (the reason is kept aside)."""


class HttpConnection(asyncio.Protocol):
    """A client connection; `exchange` sends a request and waits for the response's head."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float | None) -> None:
        self._loop = loop
        self._read_timeout = read_timeout
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self.closed = False
        self.idle = False  # pooled between exchanges: any byte arriving now is a stray
        self.key: tuple[bytes, str, int] = (b"", "", 0)  # the pool's (scheme, host, port)
        self.idle_since = 0.0
        self._start_exchange()

    def _start_exchange(self, head_only: bool = False) -> None:
        self._head_only = head_only  # an answer to HEAD: no body, whatever its headers say
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        # Bytes of the packets since the last one that carried body bytes: the head, chunk
        # framing, trailers (llhttp keeps a header line it has not finished inside, without a
        # callback, so they are counted here, packet by packet).
        self._overhead = 0
        self._fed_header_bytes = 0  # header lines parsed from the packet being fed
        self._body_seen = False  # the packet being fed carried body bytes
        self.http_version = "1.1"
        self.body_length: int | None = None  # CLOSE_DELIMITED, a Content-Length, or chunked
        self._head_done = False
        self.complete = False
        self._keep_alive = False
        self._error: BaseException | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.idle or self.complete:
            # Nothing was asked (idle), or bytes after the answer's end: the connection cannot
            # be trusted any more. The answer itself is whole and stays good.
            self.close()
            return
        self._fed_header_bytes = 0
        self._body_seen = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed response ({exc})"))
        if self._body_seen:
            self._overhead = 0
        else:  # all of `data` was head, chunk framing or trailers
            self._overhead += len(data)
            if self._overhead > MAX_HEAD_BYTES:
                self._fail(
                    BadResponse(
                        f"The server sent more than {MAX_HEAD_BYTES // 1024} KiB of chunk "
                        "framing or trailers."
                    )
                    if self._head_done
                    else _head_too_large()
                )

    def eof_received(self) -> bool:
        return False  # close the transport: HTTP/1.1 has no half-closed use here

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete and self._error is None:
            if self._head_done and self.body_length == CLOSE_DELIMITED and exc is None:
                self.complete = True  # the server's close is the body's end
            elif self._head_done:
                self._error = TruncatedBody("the connection closed before the whole body arrived")
            elif exc is not None:
                self._error = httpx.ReadError(describe_os_error(exc))
            else:
                self._error = httpx.RemoteProtocolError("server disconnected")
        self._wake()

    def pause_writing(self) -> None:  # a request is a few hundred bytes: nothing to pause
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # a second answer behind the first one, in the same packet
            self.close()
            raise _StopParsing

    def on_status(self, status: bytes) -> None:
        if len(self.reason) + len(status) > MAX_STATUS_LINE:
            self._stop(
                BadResponse(
                    f"The server's status line is longer than {MAX_STATUS_LINE // 1024} KiB."
                )
            )
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        if len(headers) >= MAX_HEADERS:
            self._stop(BadResponse(f"The server's response has more than {MAX_HEADERS} headers."))
        # With the packets before this one (a line begun in one of them is counted twice:
        # the cap errs by at most one line, towards refusing). Trailers count too.
        self._fed_header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self._overhead + self._fed_header_bytes > MAX_HEAD_BYTES:
            self._stop(_head_too_large())
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if 100 <= self.status < 200:  # an interim answer: the real head follows
            self.reason = b""
            self.headers = []
            return
        self.http_version = self._parser.get_http_version()
        self.body_length = CLOSE_DELIMITED
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == b"content-length" and value.strip().isdigit():
                self.body_length = int(value)
            elif lowered == b"transfer-encoding":
                self.body_length = None  # chunked: llhttp finds the end
        self._head_done = True
        if self._head_only:
            # llhttp would wait for the announced body; this connection is not reused.
            self.complete = True
            self._keep_alive = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._body_seen = True
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._head_done and not self._head_only:
            # Asked now: llhttp resets its flags once this callback returns.
            self._keep_alive = self._parser.should_keep_alive()
            self.complete = True
            self._wake()

    # -- the caller's side -----------------------------------------------------------------

    async def exchange(self, request: bytes, *, head_only: bool = False) -> None:
        """Send `request` and wait for the response's head (status, reason, headers);
        `head_only` for a HEAD request, whose answer has no body."""
        self._start_exchange(head_only)
        assert self._transport is not None
        self._transport.write(request)
        while not self._head_done:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def body(self) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive; ends at the body's end or raises its error."""
        while True:
            while self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered <= HIGH_WATER // 2:
                    self._paused = False
                    if self._transport is not None and not self.closed:
                        self._transport.resume_reading()
                yield chunk
            if self.complete:
                return
            if self._error is not None:
                raise self._error
            await self._wait()

    @property
    def reusable(self) -> bool:
        """The exchange ended cleanly and the server keeps the connection open."""
        return self.complete and self._keep_alive and not self.closed and not self._chunks

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    # -- waiting ---------------------------------------------------------------------------

    async def _wait(self) -> None:
        waiter = self._waiter = self._loop.create_future()
        if self._read_timeout is not None:
            self._timer = self._loop.call_later(self._read_timeout, self._timed_out, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _timed_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(httpx.ReadTimeout("the server stopped sending"))
        self.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self.close()
        self._wake()

    def _stop(self, error: BaseException) -> NoReturn:
        """Fail the exchange with `error` from inside a parser callback, and stop parsing."""
        self._fail(error)
        raise _StopParsing


def _head_too_large() -> BadResponse:
    return BadResponse(f"The server's response head is larger than {MAX_HEAD_BYTES // 1024} KiB.")


def describe_os_error(exc: BaseException) -> str:
    """The OS's own wording ('Connection refused') when there is one."""
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def header_map(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Lower-cased names to values, as httpx's `Headers.get` reads them: a repeated header's
    values joined with ", ", UTF-8 text where the bytes are UTF-8, Latin-1 otherwise.
    Repeated values are collected and joined once (joining as they come is quadratic)."""
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


def request_bytes(request: httpx.Request) -> bytes:
    """The request's head (and body, if it has one) as sent on the wire."""
    target = request.url.raw_path or b"/"
    lines = [request.method.encode("ascii") + b" " + target + b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        lines.append(name + b": " + value + b"\r\n")
    lines.append(b"\r\n")
    body = request.content if isinstance(request.stream, httpx.ByteStream) else b""
    if body:
        lines.append(body)
    return b"".join(lines)
