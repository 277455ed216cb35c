"""What an exception raised while sending a request means for the image: a `Failure` with its
code, one short sentence, whether it is worth retrying, and what it says about the host's
reachability (the circuit breaker's input)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from downloader.fetch.outcomes import Failure, as_sentence, describe_exception, format_seconds
from downloader.fetch.transport_errors import BadResponse, BlockedAddress, ProxyRefused, TLSError

if TYPE_CHECKING:
    from downloader.settings import Settings

# Everything `Transport.send` raises for one request (anything else is a bug and propagates).
SEND_ERRORS = (
    BlockedAddress,
    TLSError,
    ProxyRefused,
    BadResponse,
    httpx.TransportError,
    httpx.InvalidURL,
)


def request_failure(exc: Exception, settings: Settings) -> Failure:
    """The failure of a request that raised `exc` (one of SEND_ERRORS), checked in order."""
    if isinstance(exc, BlockedAddress):
        return Failure("blocked_address", as_sentence(exc.reason), reachable=None)
    if isinstance(exc, TLSError):
        hint = f"; {exc.hint}" if exc.hint else ""
        return Failure(
            "connection_error",
            f"The secure connection failed ({describe_exception(exc)}){hint}.",
            reachable=None,
        )
    if isinstance(exc, ProxyRefused):
        return Failure(
            "connection_error", f"{as_sentence(describe_exception(exc))}", reachable=None
        )
    if isinstance(exc, httpx.ConnectTimeout):
        return Failure(
            "timeout",
            "The server did not accept a connection within "
            f"{format_seconds(settings.http_connect_timeout)}.",
            retryable=True,
            reachable=False,
        )
    if isinstance(exc, httpx.ReadTimeout):
        return Failure(
            "timeout",
            f"The server did not answer within {format_seconds(settings.http_read_timeout)}.",
            retryable=True,
            reachable=False,
        )
    if isinstance(exc, httpx.ConnectError):
        return Failure(
            "connection_error",
            f"Could not connect to the server ({describe_exception(exc)}).",
            retryable=True,
            reachable=False,
        )
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
        return Failure(
            "bad_url",
            f"The URL cannot be requested ({describe_exception(exc)}).",
            reachable=None,
        )
    if isinstance(exc, BadResponse):  # a head past a cap: the same server would send it again
        return Failure("bad_response", str(exc), reachable=None)
    return Failure(
        "connection_error",
        f"The connection failed before an answer ({describe_exception(exc)}).",
        retryable=True,
        reachable=False,
    )
