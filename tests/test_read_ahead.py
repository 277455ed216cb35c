"""downloader.read_ahead: a blocking byte iterator served to async code, built in a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import anyio
import pytest

from downloader.read_ahead import read_ahead


class Recorder:
    """A generator of numbered chunks that records which threads advanced and closed it."""

    def __init__(self, count: int, size: int = 10, fail_at: int | None = None) -> None:
        self.count, self.size, self.fail_at = count, size, fail_at
        self.produced = 0
        self.closed = threading.Event()
        self.threads: set[int] = set()

    def __iter__(self) -> Iterator[bytes]:
        try:
            for n in range(self.count):
                self.threads.add(threading.get_ident())
                if n == self.fail_at:
                    raise OSError(f"disk gone at chunk {n}")
                self.produced += 1
                yield n.to_bytes(4, "big") * (self.size // 4)
        finally:
            self.closed.set()


async def collect(chunks: Iterator[bytes], **kwargs: int) -> list[bytes]:
    return [chunk async for chunk in read_ahead(chunks, **kwargs)]


def test_yields_every_chunk_in_order_from_one_other_thread() -> None:
    source = Recorder(1000)
    out = anyio.run(lambda: collect(iter(source), batch_bytes=64, batches_ahead=2))
    assert [int.from_bytes(chunk[:4], "big") for chunk in out] == list(range(1000))
    assert source.closed.is_set()
    assert len(source.threads) == 1 and threading.get_ident() not in source.threads


def test_an_error_while_building_is_raised_to_the_reader_after_the_good_chunks() -> None:
    source = Recorder(100, fail_at=50)
    got: list[bytes] = []

    async def main() -> None:
        async for chunk in read_ahead(iter(source), batch_bytes=1):
            got.append(chunk)

    with pytest.raises(OSError, match="disk gone at chunk 50"):
        anyio.run(main)
    assert len(got) == 50
    assert source.closed.is_set()


def test_a_reader_that_stops_early_stops_the_builder_and_closes_the_iterator() -> None:
    source = Recorder(1_000_000, size=1000)

    async def main() -> None:
        stream = read_ahead(iter(source), batch_bytes=10_000, batches_ahead=2)
        async for _chunk in stream:
            break
        await stream.aclose()  # what Starlette does when the client goes away

    anyio.run(main)
    assert source.closed.wait(5), "the iterator was never closed"
    produced = source.produced
    time.sleep(0.2)
    assert source.produced == produced  # the builder stopped ...
    assert produced < 100  # ... after at most a few batches ahead (10 chunks each)
