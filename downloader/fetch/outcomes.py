"""What fetching hands back: `FetchOutcome` per image, `FetchStats` per fetcher, and `Failure`,
a failed request or body on its way to becoming an outcome.

The wording helpers live here too so every error message formats sizes, durations and
exception texts the same way (users read these messages in the results table).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from downloader.fetch.structure import Details


@dataclass(slots=True)
class FetchOutcome:
    """The result of one `Fetcher.fetch`. On success the bytes are either in `body` (a body
    that arrived whole in memory: up to 256 KiB, most images) or in the temp file `temp_path`,
    which the caller then owns (move it); on failure there is neither (the fetcher already
    deleted the file)."""

    ok: bool
    error_code: str | None = None
    error: str | None = None
    http_status: int | None = None
    attempts: int = 0
    temp_path: Path | None = None
    body: bytes | None = None
    sha256: str | None = None
    crc32: int | None = None  # of the stored bytes: ZIPs then skip computing it
    size: int | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    details: Details | None = None  # colour mode, alpha, frames, ICC profile, orientation
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


class Failure(Exception):
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


def format_mb(n: float) -> str:
    return f"{n / (1024 * 1024):.3g} MB"


def format_seconds(seconds: float) -> str:
    return f"{seconds:g} s"


def describe_exception(exc: BaseException) -> str:
    """The first line of the exception's text (or its type name), short enough for a message."""
    text = str(exc).strip() or type(exc).__name__
    text = text.splitlines()[0]
    return text[:160]


def as_sentence(reason: str) -> str:
    return reason if reason.endswith(".") else reason + "."
