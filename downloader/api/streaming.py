"""A StreamingResponse that cuts off a client that stops reading (as app.py's downloads do).

Under uvicorn a send waits until the client has taken enough of what was sent before; a
client that never reads would hold the stream (its read-ahead thread, or an event stream's
poll loop) forever. Each send gets `stall_timeout` seconds and pieces are at most
SEND_PIECE_BYTES; a stalled stream is closed, and the connection with it.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Message, Send

log = logging.getLogger(__name__)
SEND_PIECE_BYTES = 512 * 1024


class StallGuardedResponse(StreamingResponse):
    def __init__(self, *args: Any, stall_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stall_timeout = stall_timeout

    async def stream_response(self, send: Send) -> None:
        async def send_in_time(message: Message) -> bool:
            with anyio.move_on_after(self.stall_timeout):
                await send(message)
                return True
            log.warning(
                "An API client read nothing for %s s; its stream is closed.", self.stall_timeout
            )
            return False

        body = self.body_iterator
        try:
            start = {"type": "http.response.start", "status": self.status_code}
            if not await send_in_time(start | {"headers": self.raw_headers}):
                return
            async for chunk in body:
                view = memoryview(chunk.encode(self.charset) if isinstance(chunk, str) else chunk)
                for at in range(0, len(view), SEND_PIECE_BYTES):
                    piece = view[at : at + SEND_PIECE_BYTES]
                    message = {"type": "http.response.body", "body": piece, "more_body": True}
                    if not await send_in_time(message):
                        return
            await send_in_time({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            close = getattr(body, "aclose", None)
            if close is not None:
                await close()
