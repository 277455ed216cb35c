"""aiohttp's connection protocol with two rules of ours on top (installed by `strict_connector`).

aiohttp's parser already bounds each head line (8190 bytes) and the header count
(`client.MAX_HEADERS`). Two things it leaves open are closed here:

* **The whole head is capped** at `MAX_HEAD_BYTES`, interim (1xx) answers included: the bytes
  received for one request before its final head has arrived. Without it a server could send
  ``100 Continue`` answers forever (each one small) until the image's deadline.
* **Bytes nobody asked for end the connection**: bytes that arrive after the answer's body ended
  (while the connection waits in the pool, or before the next request) would otherwise be
  parsed as the answer to the *next* request on the connection. They are dropped and the
  connection is closed, so it is never reused. (Bytes in the same packet as the end of the
  answer are seen by aiohttp's parser: they fail that answer as `bad_response`, and the
  connection is closed too; no such byte is ever stored.)

These use aiohttp's `ResponseHandler` hooks (`set_response_params` is called for every
request, `feed_data` for every parsed head, `data_received` for every packet).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import HttpProcessingError

MAX_HEAD_BYTES = 64 * 1024  # a response's head, status lines and header lines, 1xx included
HEAD_TOO_LARGE = f"response head larger than {MAX_HEAD_BYTES // 1024} KiB"
FRAMING_TOO_LARGE = f"more than {MAX_HEAD_BYTES // 1024} KiB of chunk framing or trailers"


class StrictResponseHandler(ResponseHandler):
    """ResponseHandler that caps the head and refuses bytes it was not waiting for."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._waiting = False  # a request was sent and its answer has not ended
        self._head_done = False  # its final (non-1xx) head has arrived
        self._head_bytes = 0  # bytes received while waiting for that head
        self._overhead = 0  # bytes of the packets since the last one that carried body bytes

    def set_response_params(self, **kwargs: Any) -> None:
        super().set_response_params(**kwargs)
        self._waiting = True
        self._head_done = False
        self._head_bytes = 0
        self._overhead = 0

    def feed_data(self, data: Any, size: int = 0) -> None:
        message, payload = data
        if message.code >= 200 or message.code == 101:
            self._head_done = True
            if payload.is_eof():
                self._answer_ended()
            else:
                payload.on_eof(self._answer_ended)
        super().feed_data(data, size)

    def _answer_ended(self) -> None:
        self._waiting = False

    def connection_lost(self, exc: BaseException | None) -> None:
        # Keep the reason already given to the body's reader (a cap, a framing error): the
        # close that follows it would replace it with "payload not completed".
        payload = self._payload
        given = payload.exception() if payload is not None else None
        super().connection_lost(exc)
        if payload is not None and given is not None:
            payload.set_exception(given)

    def data_received(self, data: bytes) -> None:
        if not self._waiting and data:
            # Nothing was asked: a stray answer must not become the next request's.
            self._should_close = True
            if self.transport is not None:
                self.transport.close()
            return
        head_pending = not self._head_done
        payload = self._payload
        before = payload.total_bytes if payload is not None else 0
        super().data_received(data)
        if not head_pending and payload is not None and payload is self._payload:
            # Chunk-size lines, extensions and trailers carry no body bytes: an endless run of
            # them is capped like a head.
            if payload.total_bytes > before:
                self._overhead = 0
            else:
                self._overhead += len(data)
                if self._overhead > MAX_HEAD_BYTES and not payload.is_eof():
                    self._waiting = False
                    if self.transport is not None:
                        self.transport.close()
                    payload.set_exception(aiohttp.ClientPayloadError(FRAMING_TOO_LARGE))
        if payload is not None and payload is self._payload and not payload.is_eof():
            error = self.exception()
            if error is not None and payload.exception() is None:
                # The parser failed inside this answer's framing (a chunk line, trailers): that
                # reason, not the "payload not completed" of the close that follows, is what the
                # body's reader must see.
                payload.set_exception(aiohttp.ClientPayloadError(str(error)))
        if head_pending and not self._head_done:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._waiting = False
                if self.transport is not None:
                    self.transport.close()
                self.set_exception(HttpProcessingError(code=400, message=HEAD_TOO_LARGE))


def strict_connector(**kwargs: Any) -> aiohttp.TCPConnector:
    """A TCPConnector whose connections use `StrictResponseHandler`."""
    connector = aiohttp.TCPConnector(**kwargs)
    loop = asyncio.get_running_loop()
    # The connector builds each connection's protocol with this factory (aiohttp's own
    # ResponseHandler by default): plain and TLS connections, and those through a proxy.
    connector._factory = functools.partial(StrictResponseHandler, loop=loop)  # type: ignore[assignment]
    return connector
