"""A real HTTP image server on loopback addresses, for fetch, engine, CLI and UI tests.

One `ImageServer` listens on several 127.0.0.x addresses (default 127.0.0.2-4), each with its
own port, so tests can stand for several hosts. It records every request server-side (host,
path, start/end times, status), tracks peak concurrent requests per host, and serves:

======================================  =========================================================
``/img/<name>.<fmt>[?w=&h=]``           deterministic image, unique per name (jpg jpeg png webp
                                        avif gif); ``image_bytes(name, fmt)`` gives its bytes
``/same/<anything>``                    identical JPEG bytes for every path (dedup tests)
``/status/<code>``                      that status with a short text body
``/flaky/<id>?fails=2&status=503``      `status` for the first `fails` requests of <id>, then the
                                        image ``flaky-<id>.jpg``
``/ratelimit/<id>?fails=1&after=1``     429 with ``Retry-After: <after>`` (``&date=1``: as an
                                        HTTP date) `fails` times, then ``ratelimit-<id>.jpg``
``/slow/<seconds>/<id>``                waits, then ``slow-<id>.jpg``
``/trickle?bytes=100&interval=1``       announces `bytes`, sends one byte per `interval`
``/big[/chunked|/close][?size=]``       `size` (default ``big_size``) bytes with Content-Length,
                                        chunked, or close-delimited (no length)
``/gzip-bomb[?mb=64]``                  gzip-encoded zeros that inflate to `mb` MiB
``/gzip/<name>.<fmt>``, ``/deflate/..`` the image, Content-Encoding gzip / deflate
``/brotli/<name>.<fmt>``                random bytes labelled ``Content-Encoding: br``
``/html-as-jpeg``                       an HTML page labelled image/jpeg
``/empty``                              200 with an empty body
``/truncated``                          announces twice the bytes it sends, then closes
``/redirect/<n>``                       n hops of 302, then ``/img/redirected.jpg``
``/redirect-loop``                      302 to /redirect-loop/b, which 302s back
``/redirect-to?url=..&status=302``      a redirect to any URL
``/bomb[?level=error|warn]``            PNG declaring 100000x100000 (or 10000x10000) pixels
``/drop``                               closes the connection without an answer
``/hang``                               never answers (until the server stops)
======================================  =========================================================

Add a route: ``server.add_route(r"/thing/(?P<id>\\w+)", handler)`` with
``handler(req: Req) -> Reply``; added routes take precedence over the built-in ones.

Fixture: ``image_server`` (function scope). Import it into a test module
(``from tests.support.imageserver import image_server``) or list this module in
``pytest_plugins``. `closed_port_url()` gives a URL nobody listens on (connection refused).
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import gzip
import io
import random
import re
import socket
import struct
import threading
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from PIL import Image

DEFAULT_ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
FORMATS = {
    "jpg": ("JPEG", "image/jpeg"),
    "jpeg": ("JPEG", "image/jpeg"),
    "png": ("PNG", "image/png"),
    "webp": ("WEBP", "image/webp"),
    "avif": ("AVIF", "image/avif"),
    "gif": ("GIF", "image/gif"),
}
EXTENSION = {
    "jpg": "jpg",
    "jpeg": "jpg",
    "png": "png",
    "webp": "webp",
    "avif": "avif",
    "gif": "gif",
}
HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Not found</title></head><body>nope</body></html>\n"
)


# -- content ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def image_bytes(name: str, fmt: str = "jpg", width: int = 64, height: int = 48) -> bytes:
    """The exact bytes the server sends for /img/<name>.<fmt>?w=<width>&h=<height>.

    Deterministic, and different for every name (noise seeded by the name).
    """
    pil_format, _ = FORMATS[fmt]
    rng = random.Random(zlib.crc32(f"{name}.{EXTENSION[fmt]}".encode()))
    im = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    buf = io.BytesIO()
    if pil_format == "JPEG":
        im.save(buf, "JPEG", quality=85)
    elif pil_format == "GIF":
        im.convert("P").save(buf, "GIF")
    else:
        im.save(buf, pil_format)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.lru_cache(maxsize=4)
def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header declares width x height pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _png_chunk(b"IEND", b"")
    )


@functools.lru_cache(maxsize=4)
def gzip_bomb(megabytes: int = 64) -> bytes:
    """gzip data that inflates to `megabytes` MiB of zeros (about 1 KB per MiB)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    out = [comp.compress(zeros) for _ in range(megabytes)]
    out.append(comp.flush())
    return b"".join(out)


def big_body(size: int) -> bytes:
    """`size` bytes that start like a JPEG."""
    head = b"\xff\xd8\xff\xe0"
    return head + bytes(max(0, size - len(head)))


# -- requests and replies -----------------------------------------------------------------------


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


# -- the server ---------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, owner: ImageServer, address: str) -> None:
        self.owner = owner
        super().__init__((address, 0), _RequestHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up (resets, broken pipes) are part of the tests; stay quiet.
        return None

    @property
    def host(self) -> str:
        address, port = self.server_address[:2]
        if isinstance(address, bytes):
            address = address.decode()
        return f"{address}:{port}"


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return None

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._track(self.connection, False)

    def do_GET(self) -> None:
        self.server.owner._serve(self, self.server.host)

    do_HEAD = do_GET


class ImageServer:
    """Threaded HTTP servers on `addresses` (one port each). Use as a context manager."""

    def __init__(
        self,
        addresses: Iterable[str] = DEFAULT_ADDRESSES,
        *,
        big_size: int = 3 * 1024 * 1024,
    ) -> None:
        self.addresses = list(addresses)
        self.big_size = big_size
        self.stopping = threading.Event()
        self._servers: list[_HTTPServer] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []
        self._active: Counter[str] = Counter()
        self._peak: Counter[str] = Counter()
        self._counters: defaultdict[str, int] = defaultdict(int)
        self._connections: set[socket.socket] = set()
        self._routes: list[tuple[re.Pattern[str], Handler]] = []
        self._builtin: list[tuple[re.Pattern[str], Handler]] = [
            (re.compile(p), h) for p, h in _BUILTIN_ROUTES
        ]

    # lifecycle
    def start(self) -> ImageServer:
        for address in self.addresses:
            server = _HTTPServer(self, address)
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"imageserver-{server.host}",
                daemon=True,
            )
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self.stopping.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # addressing
    @property
    def hosts(self) -> list[str]:
        """``address:port`` of each listening host, in `addresses` order."""
        return [server.host for server in self._servers]

    def host(self, which: int | str = 0) -> str:
        if isinstance(which, int):
            return self.hosts[which]
        for host in self.hosts:
            if host == which or host.split(":")[0] == which:
                return host
        raise KeyError(which)

    def url(self, path: str, host: int | str = 0) -> str:
        """``http://<host>/<path>``; `host` is an index into `hosts` or an address."""
        return f"http://{self.host(host)}/{path.lstrip('/')}"

    # routes
    def add_route(self, pattern: str, handler: Handler) -> None:
        """Serve paths that fully match the regex `pattern` with `handler` (before built-ins)."""
        self._routes.append((re.compile(pattern), handler))

    def route(self, pattern: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.add_route(pattern, handler)
            return handler

        return register

    def bump(self, key: str) -> int:
        """A thread-safe counter for stateful routes; returns the new value (1 on first call)."""
        with self._lock:
            self._counters[key] += 1
            return self._counters[key]

    # records
    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def requests_to(
        self, path: str | None = None, host: int | str | None = None
    ) -> list[RequestRecord]:
        wanted_host = None if host is None else self.host(host)
        return [
            r
            for r in self.requests
            if (path is None or r.path == path) and (wanted_host is None or r.host == wanted_host)
        ]

    def count(self, path: str | None = None, host: int | str | None = None) -> int:
        return len(self.requests_to(path, host))

    def peak_concurrency(self, host: int | str | None = None) -> int:
        """Most requests in progress at once on `host` (or the busiest host)."""
        with self._lock:
            if host is None:
                return max(self._peak.values(), default=0)
            return self._peak[self.host(host)]

    def reset(self) -> None:
        with self._lock:
            self._records.clear()
            self._peak.clear()
            self._counters.clear()

    # internals
    def _track(self, conn: socket.socket, opened: bool) -> None:
        with self._lock:
            if opened:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _handler_for(self, path: str) -> tuple[Handler, re.Match[str]] | None:
        for pattern, handler in (*self._routes, *self._builtin):
            match = pattern.fullmatch(path)
            if match:
                return handler, match
        return None

    def _serve(self, handler: _RequestHandler, host: str) -> None:
        parts = urlsplit(handler.path)
        record = RequestRecord(
            host=host,
            method=handler.command,
            path=parts.path,
            query=dict(parse_qsl(parts.query)),
            headers={k.lower(): v for k, v in handler.headers.items()},
            start=time.monotonic(),
        )
        with self._lock:
            self._records.append(record)
            self._active[host] += 1
            self._peak[host] = max(self._peak[host], self._active[host])
        try:
            found = self._handler_for(parts.path)
            if found is None:
                reply = Reply.text(404, "no such route\n")
            else:
                route, match = found
                try:
                    reply = route(Req(record, match, self))
                except Exception as exc:  # a broken test route answers 500, visibly
                    reply = Reply.text(500, f"route error: {exc!r}\n")
            record.status = reply.status
            self._send(handler, reply)
        except OSError:
            handler.close_connection = True
        finally:
            record.end = time.monotonic()
            with self._lock:
                self._active[host] -= 1

    def _send(self, handler: _RequestHandler, reply: Reply) -> None:
        if reply.delay and self.stopping.wait(reply.delay):
            handler.close_connection = True
            return
        if reply.hang:
            self.stopping.wait()
            handler.close_connection = True
            return
        if reply.drop:
            handler.close_connection = True
            return
        body = reply.body
        pieces: Iterable[bytes] = [body] if isinstance(body, bytes) else body
        handler.send_response(reply.status)
        if reply.content_type:
            handler.send_header("Content-Type", reply.content_type)
        for name, value in reply.headers:
            handler.send_header(name, value)
        close = reply.close
        if reply.length == "auto" and isinstance(body, bytes):
            handler.send_header("Content-Length", str(len(body)))
        elif isinstance(reply.length, int):
            handler.send_header("Content-Length", str(reply.length))
        elif reply.chunked:
            handler.send_header("Transfer-Encoding", "chunked")
        else:
            close = True
        if close:
            handler.send_header("Connection", "close")
            handler.close_connection = True
        handler.end_headers()
        if handler.command == "HEAD":
            return
        out = handler.wfile
        first = True
        for piece in pieces:
            if not first and reply.interval and self.stopping.wait(reply.interval):
                handler.close_connection = True
                return
            first = False
            if reply.chunked and reply.length is None:
                if piece:
                    out.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            else:
                out.write(piece)
            out.flush()
        if reply.chunked and reply.length is None:
            out.write(b"0\r\n\r\n")
            out.flush()


# -- built-in routes ----------------------------------------------------------------------------


def _int(req: Req, name: str, default: int) -> int:
    value = req.param(name)
    return int(value) if value is not None else default


def _img(req: Req) -> Reply:
    name, fmt = req.param("name") or "x", req.param("fmt") or "jpg"
    width, height = _int(req, "w", 64), _int(req, "h", 48)
    return Reply(body=image_bytes(name, fmt, width, height), content_type=FORMATS[fmt][1])


def _flaky(req: Req) -> Reply:
    ident = req.param("id") or ""
    seen = req.server.bump(f"flaky:{ident}")
    if seen <= _int(req, "fails", 2):
        return Reply.text(_int(req, "status", 503))
    return Reply.image(f"flaky-{ident}")


def _ratelimit(req: Req) -> Reply:
    ident = req.param("id") or ""
    seen = req.server.bump(f"ratelimit:{ident}")
    if seen <= _int(req, "fails", 1):
        after = req.param("after", "1") or "1"
        if req.param("date") == "1":
            value = email.utils.formatdate(time.time() + float(after), usegmt=True)
        else:
            value = after
        return Reply(status=429, body=b"slow down\n", headers=[("Retry-After", value)])
    return Reply.image(f"ratelimit-{ident}")


def _slow(req: Req) -> Reply:
    return Reply.image(f"slow-{req.param('id')}", delay=float(req.param("seconds") or 1))


def _trickle(req: Req) -> Reply:
    count = _int(req, "bytes", 100)
    interval = float(req.param("interval", "1") or 1)
    return Reply(
        body=(b"\xff" for _ in range(count)),
        length=count,
        content_type="image/jpeg",
        interval=interval,
    )


def _big(req: Req) -> Reply:
    size = _int(req, "size", req.server.big_size)
    mode = req.param("mode") or ""
    body = big_body(size)
    step = 256 * 1024
    pieces = [body[i : i + step] for i in range(0, len(body), step)]
    if mode == "chunked":
        return Reply(body=pieces, length=None, chunked=True, content_type="image/jpeg")
    if mode == "close":
        return Reply(body=pieces, length=None, content_type="image/jpeg")
    return Reply(body=pieces, length=size, content_type="image/jpeg")


def _gzip_bomb(req: Req) -> Reply:
    return Reply(
        body=gzip_bomb(_int(req, "mb", 64)),
        content_type="image/jpeg",
        headers=[("Content-Encoding", "gzip")],
    )


def _encoded(req: Req) -> Reply:
    encoding = req.param("enc") or "gzip"
    data = image_bytes(req.param("name") or "x", req.param("fmt") or "jpg")
    if encoding == "gzip":
        body, label = gzip.compress(data, mtime=0), "gzip"
    elif encoding == "deflate":
        body, label = zlib.compress(data), "deflate"
    else:
        body, label = random.Random(1).randbytes(len(data)), "br"
    return Reply(body=body, content_type="image/jpeg", headers=[("Content-Encoding", label)])


def _truncated(req: Req) -> Reply:
    data = image_bytes("truncated", "jpg")
    return Reply(body=data, length=len(data) * 2, content_type="image/jpeg", close=True)


def _redirect(req: Req) -> Reply:
    hops = _int(req, "n", 1)
    if hops > 1:
        return Reply.redirect(f"/redirect/{hops - 1}")
    return Reply.redirect("/img/redirected.jpg")


def _bomb(req: Req) -> Reply:
    if req.param("level") == "warn":
        return Reply(body=bomb_png(10_000, 10_000), content_type="image/png")
    return Reply(body=bomb_png(), content_type="image/png")


_BUILTIN_ROUTES: list[tuple[str, Handler]] = [
    (r"/img/(?P<name>[^/]+)\.(?P<fmt>jpg|jpeg|png|webp|avif|gif)", _img),
    (r"/same/.*", lambda req: Reply.image("same", "jpg")),
    (r"/status/(?P<code>\d{3})", lambda req: Reply.text(int(req.param("code") or 500))),
    (r"/flaky/(?P<id>[^/]+)", _flaky),
    (r"/ratelimit/(?P<id>[^/]+)", _ratelimit),
    (r"/slow/(?P<seconds>[0-9.]+)/(?P<id>[^/]+)", _slow),
    (r"/trickle", _trickle),
    (r"/big(?:/(?P<mode>chunked|close))?", _big),
    (r"/gzip-bomb", _gzip_bomb),
    (r"/(?P<enc>gzip|deflate|brotli)/(?P<name>[^/]+)\.(?P<fmt>jpg|png|webp|avif|gif)", _encoded),
    (r"/html-as-jpeg", lambda req: Reply(body=HTML_PAGE, content_type="image/jpeg")),
    (r"/empty", lambda req: Reply(body=b"", content_type="image/jpeg")),
    (r"/truncated", _truncated),
    (r"/redirect/(?P<n>\d+)", _redirect),
    (r"/redirect-loop", lambda req: Reply.redirect("/redirect-loop/b")),
    (r"/redirect-loop/b", lambda req: Reply.redirect("/redirect-loop")),
    (
        r"/redirect-to",
        lambda req: Reply.redirect(req.param("url") or "/", _int(req, "status", 302)),
    ),
    (r"/bomb", _bomb),
    (r"/drop", lambda req: Reply(drop=True)),
    (r"/hang", lambda req: Reply(hang=True)),
]


def closed_port(address: str = "127.0.0.9") -> int:
    """A port on `address` that nothing listens on (connecting is refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def closed_port_url(path: str = "img/refused.jpg", address: str = "127.0.0.9") -> str:
    return f"http://{address}:{closed_port(address)}/{path.lstrip('/')}"


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    """An `ImageServer` on 127.0.0.2, 127.0.0.3 and 127.0.0.4, stopped after the test."""
    with ImageServer() as server:
        yield server
