"""HTTP Range on a finished job's master ZIP (RFC 9110 section 14), shared by the API's and
the app's download routes.

A finished job's ZIP is the same bytes every time it is built and its length is known
(`exports.job_zip_size`), so one range of it can be served: the ZIP is built as usual and
the bytes before the range are dropped as they come (nothing is held in memory; the stored
files before the range are read, not sent), and building stops after the range's last byte.

Only a single range is served: a multi-range request gets the whole file (200), as RFC 9110
allows. A range outside the file answers 416 with `Content-Range: bytes */SIZE`. `If-Range`
is honoured with the strong ETag sent on every finished job's ZIP; any other validator (an
HTTP date: no Last-Modified is sent) does not match, so the whole file is sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

Chunk = bytes | memoryview

# one range-spec: "a-b", "a-" or "-n" (at most 19 digits: anything longer is no offset of ours)
_SPEC = re.compile(r"\s*(\d{0,19})\s*-\s*(\d{0,19})\s*")


@dataclass(frozen=True)
class RangePlan:
    """How to answer: 200 (whole), 206 (bytes start..end, inclusive) or 416."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    start: int = 0
    end: int = -1


def zip_etag(job_id: str, size: int, finished_at: float | None) -> str:
    """A strong validator of a finished job's ZIP: it changes when the job finishes again
    (a retry) or its length changes."""
    stamp = int((finished_at or 0) * 1000)
    return f'"{job_id}-{size}-{stamp}"'


def plan(size: int, etag: str, range_header: str | None, if_range: str | None) -> RangePlan:
    """The answer to a GET of a `size`-byte file with this Range and If-Range."""
    whole = RangePlan(200, {"Accept-Ranges": "bytes", "ETag": etag, "Content-Length": str(size)})
    if range_header is None:
        return whole
    if if_range is not None and if_range.strip() != etag:
        return whole  # the client's copy is of another version (or a date): send it all
    unit, _, specs = range_header.partition("=")
    if unit.strip().lower() != "bytes" or "," in specs:
        return whole  # another unit, or several ranges: the whole file
    match = _SPEC.fullmatch(specs)
    if match is None or match.group(1) == match.group(2) == "":
        return whole  # not a range-spec at all: ignored
    first, last = match.group(1), match.group(2)
    if first == "":  # "-n": the last n bytes
        start, end = max(0, size - int(last)), size - 1
        satisfiable = int(last) > 0 and size > 0
    else:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
        satisfiable = start < size and (not last or int(last) >= start)
    if not satisfiable:
        return RangePlan(416, {"Accept-Ranges": "bytes", "Content-Range": f"bytes */{size}"})
    return RangePlan(
        206,
        {
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "Content-Range": f"bytes {start}-{end}/{size}",
            "Content-Length": str(end - start + 1),
        },
        start,
        end,
    )


def sliced(chunks: Iterator[Chunk], start: int, end: int) -> Iterator[Chunk]:
    """Bytes start..end (inclusive) of the stream `chunks`; the stream is closed (its files
    released) once the last byte is out."""
    at = 0
    try:
        for chunk in chunks:
            size = len(chunk)
            if at + size <= start:
                at += size
                continue
            lo, hi = max(0, start - at), min(size, end + 1 - at)
            yield chunk if (lo, hi) == (0, size) else memoryview(chunk)[lo:hi]
            at += size
            if at > end:
                return
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
