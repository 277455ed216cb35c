"""Serve a blocking byte iterator (a ZIP or CSV being built) to async code, built ahead.

Starlette hops to a worker thread for every chunk of a blocking iterator, and builds the
next chunk only once the previous one is sent, so building (file reads, CSV) and
sending take turns. Here one thread builds batches of about 4 MB while the event loop sends
the previous ones: the two overlap, the loop stays free for the UI's websockets, and memory
stays bounded (at most `batches_ahead` batches wait).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import AsyncGenerator, Iterator
from typing import TypeVar

import anyio

Chunk = TypeVar("Chunk", bound=bytes | memoryview)

BATCH_BYTES = 4 << 20
BATCHES_AHEAD = 2
_PUT_POLL = 0.5  # seconds between checks whether the reader went away


class _Finished:
    """Put on the queue when the iterator is exhausted (or failed: `error`)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


async def read_ahead(
    chunks: Iterator[Chunk],
    *,
    batch_bytes: int = BATCH_BYTES,
    batches_ahead: int = BATCHES_AHEAD,
) -> AsyncGenerator[Chunk, None]:
    """Yield the chunks of `chunks` in order, built ahead in a thread.

    The iterator is only ever advanced and closed by that one thread. When the consumer
    stops early (client gone, cancelled), the thread stops within a moment and closes the
    iterator, which releases its files and database read. A build error is raised here.
    """
    ready: queue.Queue[list[Chunk] | _Finished] = queue.Queue(maxsize=batches_ahead)
    abandoned = threading.Event()

    def hand_over(item: list[Chunk] | _Finished) -> bool:
        while not abandoned.is_set():
            try:
                ready.put(item, timeout=_PUT_POLL)
                return True
            except queue.Full:
                continue
        return False

    def build() -> None:
        try:
            batch: list[Chunk] = []
            size = 0
            for chunk in chunks:
                batch.append(chunk)
                size += len(chunk)
                if size >= batch_bytes:
                    if not hand_over(batch):
                        return
                    batch, size = [], 0
            if batch and not hand_over(batch):
                return
            hand_over(_Finished())
        except BaseException as exc:  # handed to the reader, which raises it
            hand_over(_Finished(exc))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    builder = threading.Thread(target=build, name="read-ahead", daemon=True)
    builder.start()
    # Its own limiter: waits for the builder never take the tokens of the default one, which
    # every other request's thread work needs (fifty streams at once must not starve them).
    limiter = anyio.CapacityLimiter(1)
    try:
        while True:
            # not cancellable while waiting: the builder always hands something over soon
            item = await anyio.to_thread.run_sync(ready.get, limiter=limiter)
            if isinstance(item, _Finished):
                if item.error is not None:
                    raise item.error
                return
            for chunk in item:
                yield chunk
    finally:
        abandoned.set()
