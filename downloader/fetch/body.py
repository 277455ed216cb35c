"""Receiving one image response body: `BodyReceiver` turns a 2xx response into verified bytes
(SHA-256, CRC-32 and size counted as bytes arrive) or a `Failure`.

The body is spooled in memory up to SPOOL_BYTES (256 KiB). A body that ends within that is
handed over as bytes (most images), for the storage to publish (`Storage.put_bytes`: S3 uploads
it from memory). A bigger one goes to a temp file SPOOL_BYTES at a time.
Dimensions are read from memory where possible; the magic number is checked as soon as the
first bytes arrive (a web page is refused without reading it all, and without creating a
file).

Content-Encoding: ``identity`` is asked for; if a server still sends ``gzip``/``x-gzip``,
``deflate``, ``br`` or ``zstd`` it is decoded here, in bounded steps, counting the *decoded*
bytes against MAX_IMAGE_SIZE_MB (a bomb ends as ``too_large`` with at most one step in
memory). Any other encoding (compress, stacked encodings) is refused with ``bad_encoding``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import zlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import brotli
import httpx
import zstandard
from zlib_ng import zlib_ng  # its crc32 uses the CPU's carry-less multiply: ~13x zlib's

from downloader.fetch.outcomes import (
    Failure,
    FetchOutcome,
    FetchStats,
    describe_exception,
    format_mb,
    format_seconds,
)
from downloader.fetch.sniff import HEAD_BYTES, SniffError, check_magic
from downloader.fetch.tempfiles import create_temp_file
from downloader.fetch.transport_errors import BadResponse, TruncatedBody
from downloader.fetch.verify import ImageCheck
from downloader.storage.base import write_all

DECODE_STEP = 256 * 1024  # most decoded bytes produced per zlib call
SPOOL_BYTES = 256 * 1024  # body bytes kept in memory before they are written out


class _Over(Exception):
    """The decoded output went past the budget (raised from inside zstd's writer)."""


class _Sink:
    """Collects zstd's output, WRITE_STEP at a time, and stops it past the budget."""

    __slots__ = ("budget", "pieces", "produced")

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.produced = 0
        self.budget = 0

    def write(self, data: bytes) -> int:
        self.pieces.append(bytes(data))
        self.produced += len(data)
        if self.produced > self.budget:
            raise _Over
        return len(data)


class _Decoder:
    """Incremental gzip/deflate/br/zstd decoding with bounded output per step: at most
    DECODE_STEP bytes come out of one library call, and decoding stops once the budget (what
    is left of the size limit) is passed, so a bomb never sits in memory."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._obj: Any = None  # decompressor, created on the first bytes
        self._sink: _Sink | None = None

    def _make(self, first: bytes) -> Any:
        if self.encoding == "br":
            return brotli.Decompressor()
        if self.encoding == "zstd":
            self._sink = _Sink()
            return zstandard.ZstdDecompressor().stream_writer(
                self._sink,  # type: ignore[arg-type]  # any object with write() will do
                write_size=DECODE_STEP,
            )
        if self.encoding == "deflate":
            # "deflate" is zlib-wrapped by the RFC, raw by some servers: look at the header.
            zlib_header = (
                len(first) >= 2 and first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0
            )
            return zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
        return zlib.decompressobj(16 + zlib.MAX_WBITS)

    def feed(self, data: bytes, budget: int) -> tuple[list[bytes], int]:
        """Decoded pieces of `data`; stops early once more than `budget` bytes came out."""
        if self._obj is None:
            self._obj = self._make(data)
        if self.encoding == "br":
            return self._feed_brotli(data, budget)
        if self.encoding == "zstd":
            return self._feed_zstd(data, budget)
        obj = self._obj
        pieces: list[bytes] = []
        produced = 0
        buf = data
        while buf and not obj.eof:
            piece = obj.decompress(buf, DECODE_STEP)
            if piece:
                pieces.append(piece)
                produced += len(piece)
                if produced > budget:
                    break
            buf = obj.unconsumed_tail
        return pieces, produced

    def _feed_brotli(self, data: bytes, budget: int) -> tuple[list[bytes], int]:
        obj = self._obj
        pieces: list[bytes] = []
        produced = 0
        piece = obj.process(data, output_buffer_limit=DECODE_STEP)
        while True:
            if piece:
                pieces.append(piece)
                produced += len(piece)
                if produced > budget:
                    break
            if obj.can_accept_more_data() or obj.is_finished():
                break
            piece = obj.process(b"", output_buffer_limit=DECODE_STEP)
        return pieces, produced

    def _feed_zstd(self, data: bytes, budget: int) -> tuple[list[bytes], int]:
        sink = self._sink
        assert sink is not None
        sink.pieces, sink.produced, sink.budget = [], 0, budget
        with contextlib.suppress(_Over):
            self._obj.write(data)
        return sink.pieces, sink.produced

    @property
    def complete(self) -> bool:
        """The encoded stream ended (gzip, deflate, br). zstd's writer does not say: its
        truncation is caught by Content-Length or the chunked framing."""
        if self._obj is None:
            return False
        if self.encoding == "br":
            return bool(self._obj.is_finished())
        if self.encoding == "zstd":
            return True
        return bool(self._obj.eof)


class BodyReceiver:
    """Reads response bodies for one `Fetcher`: its size limit, read timeout, stats, temp dir."""

    __slots__ = ("image_check", "limit", "pid", "read_timeout", "stats", "temp_dir")

    def __init__(
        self,
        *,
        limit: int,
        read_timeout: float,
        stats: FetchStats,
        temp_dir: Path,
        image_check: ImageCheck | None = None,
    ):
        self.image_check = image_check or ImageCheck()  # formats, whole-file check, decode
        self.limit = limit
        self.read_timeout = read_timeout  # only for the wording of the timeout message
        self.stats = stats
        self.temp_dir = temp_dir
        self.pid = os.getpid()  # in the temp file names, so a restart can clean up

    async def receive(
        self,
        status: int,
        headers: Mapping[str, str],
        chunks: AsyncIterator[bytes],
        attempts: int,
        url: httpx.URL,
    ) -> FetchOutcome | Failure:
        """The body (`chunks`, undecoded as they arrived) of a 2xx response with `headers`
        (lower-cased names) as a successful outcome (the caller owns its temp file), or the
        failure; no file is left behind on failure or cancellation."""
        limit = self.limit
        encoding = headers.get("content-encoding", "").strip().lower()
        decoder: _Decoder | None = None
        if encoding in ("", "identity"):
            pass
        elif encoding in ("gzip", "x-gzip"):
            decoder = _Decoder("gzip")
        elif encoding in ("deflate", "br", "zstd"):
            decoder = _Decoder(encoding)
        else:
            return Failure(
                "bad_encoding",
                f"The server sent the file with an unsupported encoding ({encoding[:40]}).",
                status=status,
            )
        length_header = headers.get("content-length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        if length is not None and length > limit:
            return Failure(
                "too_large",
                f"The server announced {format_mb(length)}, over the {format_mb(limit)} limit.",
                status=status,
            )

        stats = self.stats
        digest = hashlib.sha256()
        crc = 0
        size = 0  # decoded bytes
        received = 0  # bytes on the wire
        head = b""  # the first HEAD_BYTES decoded bytes, for the magic-number check
        sniffed = False
        # Bodies are spooled in memory up to SPOOL_BYTES and written with one system call;
        # bigger ones go to the file SPOOL_BYTES at a time. The file is created only once
        # there is something worth keeping.
        pending: list[bytes] = []
        pending_size = 0
        path: Path | None = None
        fd = -1
        keep = False
        try:
            try:
                async for chunk in chunks:
                    received += len(chunk)
                    if decoder is None:
                        pieces: list[bytes] | tuple[bytes] = (chunk,)
                        produced = len(chunk)
                    else:
                        pieces, produced = decoder.feed(chunk, limit - size)
                    size += produced
                    stats.bytes += produced
                    if size > limit:
                        return Failure(
                            "too_large",
                            f"The image is larger than the {format_mb(limit)} limit.",
                            status=status,
                        )
                    for piece in pieces:
                        digest.update(piece)
                        crc = zlib_ng.crc32(piece, crc)
                        pending.append(piece)
                    pending_size += produced
                    if not sniffed and pending_size:
                        if len(head) < HEAD_BYTES:
                            head = (
                                b"".join(pending)[:HEAD_BYTES]
                                if len(pending) > 1
                                else pending[0][:HEAD_BYTES]
                            )
                        if len(head) >= HEAD_BYTES:
                            check_magic(head)  # a web page is refused before it is all read
                            sniffed = True
                    if pending_size >= SPOOL_BYTES:
                        if fd < 0:
                            path, fd = create_temp_file(self.temp_dir, self.pid)
                        write_all(fd, b"".join(pending))
                        pending = []
                        pending_size = 0
            except SniffError as exc:
                return Failure(exc.code, exc.message, status=status)
            except TruncatedBody:
                return _truncated(status)
            except BadResponse as exc:  # endless chunk framing or trailers
                return Failure("bad_response", str(exc), status=status, reachable=None)
            except httpx.ReadTimeout:
                return Failure(
                    "timeout",
                    f"The server stopped sending data for {format_seconds(self.read_timeout)}.",
                    status=status,
                    retryable=True,
                    reachable=False,
                )
            except httpx.TransportError as exc:
                return Failure(
                    "truncated",
                    "The connection broke while the file was arriving "
                    f"({describe_exception(exc)}).",
                    status=status,
                    retryable=True,
                    reachable=None,
                )
            except (zlib.error, brotli.error, zstandard.ZstdError):
                return Failure(
                    "bad_encoding",
                    f"The {encoding} data from the server is corrupt.",
                    status=status,
                )
            if length is not None and received < length:
                return _truncated(status)
            if decoder is not None and received and not decoder.complete:
                return _truncated(status)
            if size == 0:
                return Failure("empty_body", "The server sent an empty file.", status=status)
            whole = b"".join(pending) if fd < 0 else None  # the body, when it is all in memory
            try:
                if whole is not None:
                    # Handed over as bytes, for Storage.put_bytes.
                    info = await self.image_check.check(None, head, whole)
                else:
                    if pending:
                        write_all(fd, b"".join(pending))
                    pending = []
                    os.close(fd)
                    fd = -1
                    # The whole-file check reads the whole file: a big one is walked in a
                    # worker thread, so the event loop (every other download) never waits.
                    info = await self.image_check.check(path, head, None)
            except SniffError as exc:
                return Failure(exc.code, exc.message, status=status)
            keep = True
            return FetchOutcome(
                ok=True,
                http_status=status,
                attempts=attempts,
                temp_path=path,
                body=whole,
                sha256=digest.hexdigest(),
                crc32=crc,
                size=size,
                format=info.format,
                width=info.width,
                height=info.height,
                details=info.details,
                final_url=str(url),
            )
        finally:
            if fd >= 0:
                os.close(fd)
            if path is not None and not keep:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


def _truncated(status: int) -> Failure:
    return Failure(
        "truncated",
        "The server closed the connection before sending the whole file.",
        status=status,
        retryable=True,
        reachable=None,
    )
