"""A job's request headers as the engine reads them: from the job's row, once per job.

The engine downloads images of many jobs at once; it needs each image's job's headers
(downloader.request_headers) before every fetch. `JobHeaderCache` reads a job's row once and
keeps the parsed headers for a while (bounded: the least recently used job is dropped first),
and concurrent downloads of one job wait for the same read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

import anyio
from sqlalchemy import select

from downloader.db import Database
from downloader.models import JOB
from downloader.request_headers import HeaderError, RequestHeaders, from_json

log = logging.getLogger(__name__)

CACHE_JOBS = 256  # jobs whose headers are kept
CACHE_SECONDS = 30.0  # a job's headers are read again after this (`run` may replace them)


def load_job_headers(db: Database, job_id: str) -> RequestHeaders:
    """The headers stored on job `job_id` (none for a missing job or an unreadable row: the
    row was written by create_job, which validated them; a log line names the job only)."""
    with db.read() as session:
        text = session.execute(
            select(JOB.c.request_headers).where(JOB.c.id == job_id)
        ).scalar_one_or_none()
    try:
        return from_json(text)
    except HeaderError:
        log.warning("job %s: its stored request headers are not usable; none are sent", job_id)
        return RequestHeaders()


class JobHeaderCache:
    """Each job's headers, read once per CACHE_SECONDS, for at most CACHE_JOBS jobs."""

    def __init__(
        self, db: Database, *, size: int = CACHE_JOBS, seconds: float = CACHE_SECONDS
    ) -> None:
        self._db = db
        self._size = size
        self._seconds = seconds
        self._entries: OrderedDict[str, tuple[float, RequestHeaders]] = OrderedDict()
        self._loading: dict[str, asyncio.Future[RequestHeaders]] = {}
        self.reads = 0  # database reads made (tests count them)

    async def get(self, job_id: str) -> RequestHeaders:
        entry = self._entries.get(job_id)
        now = time.monotonic()
        if entry is not None and now - entry[0] < self._seconds:
            self._entries.move_to_end(job_id)
            return entry[1]
        pending = self._loading.get(job_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[RequestHeaders] = asyncio.get_running_loop().create_future()
        self._loading[job_id] = future
        try:
            self.reads += 1
            headers = await anyio.to_thread.run_sync(load_job_headers, self._db, job_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a read nobody else waited for is not logged
            raise
        finally:
            self._loading.pop(job_id, None)
        future.set_result(headers)
        self._entries[job_id] = (time.monotonic(), headers)
        self._entries.move_to_end(job_id)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return headers
