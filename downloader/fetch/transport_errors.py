"""Transport errors, mapped once: aiohttp's (and the OS's) exceptions become the httpx exception
types the fetcher and the body receiver handle, with sentences for users where a limit of ours
was hit (`translate`)."""

from __future__ import annotations

import ssl

import aiohttp
import httpx
from aiohttp.http_exceptions import ContentLengthError, LineTooLong, TransferEncodingError

from downloader.errors import excerpt
from downloader.fetch.protocol import FRAMING_TOO_LARGE, HEAD_TOO_LARGE, MAX_HEAD_BYTES
from downloader.fetch.trust import TRUST_HINT, is_unknown_ca
from downloader.guard import AddressBlockedError

MAX_HEADERS = 100  # header lines in one response head
MAX_LINE = 8 * 1024  # bytes in the status line or one header line (aiohttp: 8190)


class BlockedAddress(httpx.ConnectError):
    """The guard refused the address the request would connect to."""

    def __init__(self, reason: str, *, request: httpx.Request | None = None) -> None:
        super().__init__(reason, request=request)
        self.reason = reason


class TLSError(httpx.ConnectError):
    """TLS handshake or certificate verification failed (not retried); `hint` says which
    setting fixes a certificate problem."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


class TruncatedBody(httpx.RemoteProtocolError):
    """The connection ended before the whole body (Content-Length or chunked) arrived."""


class BadResponse(httpx.RemoteProtocolError):
    """The server's answer broke a limit of this client (its text is a sentence for users)."""


class ProxyRefused(httpx.ProxyError):
    """The proxy answered the CONNECT (or the request) with an error of its own."""


def _describe(exc: BaseException) -> str:
    inner = getattr(exc, "os_error", None) or exc.__cause__ or exc
    text = getattr(inner, "strerror", None) or str(inner) or type(inner).__name__
    return str(text).splitlines()[0][:160]


def translate(exc: BaseException, *, in_body: bool = False) -> BaseException:
    """aiohttp's (and the OS's) error as the httpx exception the fetcher handles; anything
    else is returned unchanged."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError) and isinstance(
        exc.os_error, AddressBlockedError
    ):
        return BlockedAddress(exc.os_error.reason)
    if isinstance(exc, AddressBlockedError):
        return BlockedAddress(exc.reason)
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        hint = TRUST_HINT if is_unknown_ca(exc) else ""
        cert_error = getattr(exc, "certificate_error", None)
        detail = _describe(cert_error) if cert_error is not None else _describe(exc)
        return TLSError(detail, hint=hint)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout("connect timeout")
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return httpx.ReadTimeout("the server stopped sending")
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return ProxyRefused(f"the proxy answered {exc.status} {excerpt(exc.message or '', 100)}")
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return httpx.ProxyError(f"could not connect to the proxy ({_describe(exc)})")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(_describe(exc))
    if isinstance(exc, aiohttp.ClientResponseError):  # the head broke a parser limit
        return _bad_response(exc)
    if isinstance(exc, aiohttp.ClientPayloadError):
        cause = exc.__cause__
        if isinstance(cause, ContentLengthError) or "not completed" in str(exc):
            return TruncatedBody("the connection closed before the whole body arrived")
        if isinstance(cause, TransferEncodingError) and "not enough data" in str(cause).lower():
            return TruncatedBody("the connection closed before the whole body arrived")
        return _bad_response(cause or exc)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        if in_body:
            return TruncatedBody("the connection closed before the whole body arrived")
        return httpx.RemoteProtocolError("server disconnected")
    if isinstance(exc, aiohttp.ClientConnectionError | OSError):
        return httpx.ReadError(_describe(exc))
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol(f"invalid URL ({_describe(exc)})")
    return exc


def _bad_response(exc: BaseException) -> BadResponse:
    """A sentence for a head or framing that broke a limit (or is not HTTP)."""
    text = str(getattr(exc, "message", None) or exc or type(exc).__name__)
    if HEAD_TOO_LARGE in text:
        return BadResponse(
            f"The server's response head is larger than {MAX_HEAD_BYTES // 1024} KiB "
            "(interim answers included)."
        )
    if FRAMING_TOO_LARGE in text:
        return BadResponse(f"The server sent {FRAMING_TOO_LARGE}.")
    if "Too many headers" in text:
        return BadResponse(f"The server sent more than {MAX_HEADERS} headers (or trailers).")
    if isinstance(exc, LineTooLong) or "Got more than" in text:
        return BadResponse(
            f"The server sent a line longer than {MAX_LINE // 1024} KiB (status line, header, "
            "chunk framing or trailers)."
        )
    detail = excerpt(text.replace("\n", " ").strip(" ."), 100)
    return BadResponse(f"The server's answer is not valid HTTP ({detail}).")
