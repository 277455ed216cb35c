"""What a route handler receives (`Req`, over a `RequestRecord`) and returns (`Reply`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tests.support.imageserver.content import FORMATS, image_bytes

if TYPE_CHECKING:  # the server imports this module; only the type is needed here
    from tests.support.imageserver.server import ImageServer


@dataclass
class RequestRecord:
    """One request as the server saw it. Times are time.monotonic()."""

    host: str  # "127.0.0.2:41234" (the listening address)
    method: str
    path: str  # without the query
    query: dict[str, str]
    headers: dict[str, str]
    start: float
    end: float | None = None
    status: int | None = None


@dataclass
class Req:
    """What a route handler gets."""

    record: RequestRecord
    match: re.Match[str]
    server: ImageServer

    @property
    def query(self) -> dict[str, str]:
        return self.record.query

    @property
    def path(self) -> str:
        return self.record.path

    @property
    def host(self) -> str:
        return self.record.host

    def param(self, name: str, default: str | None = None) -> str | None:
        """A named group of the route's pattern, else a query parameter."""
        groups = self.match.groupdict()
        if groups.get(name) is not None:
            return groups[name]
        return self.record.query.get(name, default)


@dataclass
class Reply:
    """A response. `body` may be bytes or an iterable of byte pieces (sent with `interval`
    seconds between them). `length`: "auto" = Content-Length of the body (bytes only),
    an int = announce that many bytes, None = no Content-Length (chunked if `chunked`, else
    the connection closes after the body)."""

    status: int = 200
    body: bytes | Iterable[bytes] = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    length: int | str | None = "auto"
    chunked: bool = False
    close: bool = False
    delay: float = 0.0  # before the status line
    interval: float = 0.0  # between body pieces
    drop: bool = False  # close the connection without answering
    hang: bool = False  # never answer (until the server stops)

    @classmethod
    def image(cls, name: str, fmt: str = "jpg", **kw: Any) -> Reply:
        return cls(body=image_bytes(name, fmt), content_type=FORMATS[fmt][1], **kw)

    @classmethod
    def text(cls, status: int, text: str = "", **kw: Any) -> Reply:
        return cls(status=status, body=(text or f"status {status}\n").encode(), **kw)

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Reply:
        return cls(status=status, headers=[("Location", location)], body=b"moved\n")


Handler = Callable[[Req], Reply]
