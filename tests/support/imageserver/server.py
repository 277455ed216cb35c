"""`ImageServer`: threaded HTTP servers on loopback addresses that record every request.

Requests are recorded server-side (not by the client under test), so tests can check what
actually reached the network: paths, headers, timing and peak concurrency per host.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.support.imageserver.messages import Handler, Reply, Req, RequestRecord
from tests.support.imageserver.routes import BUILTIN_ROUTES

DEFAULT_ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


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
            (re.compile(p), h) for p, h in BUILTIN_ROUTES
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
            self._send(handler, reply, lambda: self._finish(record))
        except OSError:
            handler.close_connection = True
        finally:
            self._finish(record)

    def _finish(self, record: RequestRecord) -> None:
        """The request stops counting as in progress: called just before its last bytes are
        written (the client cannot have the whole answer earlier, so a client that waits for
        it before its next request never overlaps), or when it ends otherwise."""
        with self._lock:
            if record.end is not None:
                return
            record.end = time.monotonic()
            self._active[record.host] -= 1

    def _send(self, handler: _RequestHandler, reply: Reply, finishing: Callable[[], None]) -> None:
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
        chunked = reply.chunked and reply.length is None
        first = True
        iterator = iter(pieces)
        piece = next(iterator, None)
        while piece is not None:
            if not first and reply.interval and self.stopping.wait(reply.interval):
                handler.close_connection = True
                return
            first = False
            following = next(iterator, None)
            if following is None and not chunked:
                finishing()
            if chunked:
                if piece:
                    out.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            else:
                out.write(piece)
            out.flush()
            piece = following
        if chunked:
            finishing()
            out.write(b"0\r\n\r\n")
            out.flush()


def closed_port(address: str = "127.0.0.9") -> int:
    """A port on `address` that nothing listens on (connecting is refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def closed_port_url(path: str = "img/refused.jpg", address: str = "127.0.0.9") -> str:
    return f"http://{address}:{closed_port(address)}/{path.lstrip('/')}"
