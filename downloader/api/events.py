"""GET /v1/jobs/{id}/events: a job's progress as server-sent events.

`event: progress` with the counts (JSON) whenever they change, at most PROGRESS_EVERY apart,
and again at least every HEARTBEAT seconds; then one `event: end` with the final summary
when the job is completed or cancelled (at once for a job that has already ended), and the
stream closes. A paused job keeps its stream open (it may be resumed).

No database connection is held while a stream waits: each look is one short read in a worker
thread, and streams of the same job share one look per PROGRESS_EVERY (a small cache), so
fifty open streams cost about what one does.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from downloader import jobs
from downloader.api.auth import Caller, CallerDep
from downloader.api.errors import ERRORS
from downloader.api.routes import job_body, visible_job
from downloader.api.streaming import StallGuardedResponse
from downloader.models import JobStatus

router = APIRouter(tags=["progress"], responses=ERRORS)
PROGRESS_EVERY = 0.5  # seconds between looks (and so between progress events)
HEARTBEAT = 15.0  # a progress event at least this often, changed or not
ENDED = (JobStatus.COMPLETED, JobStatus.CANCELLED)
_CACHE_SIZE = 1000


class _Looks:
    """The latest look at each job, shared by every stream of that job in this process."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._lock = anyio.Lock()

    async def look(self, who: Caller, job_id: str) -> dict[str, Any] | None:
        async with self._lock:  # one look at a time: fifty streams, one read per interval
            now = time.monotonic()
            seen = self._seen.get(job_id)
            if seen is not None and now - seen[0] < PROGRESS_EVERY * 0.9:
                return seen[1]
            try:
                body: dict[str, Any] | None = await run_in_threadpool(job_body, who, job_id)
            except jobs.JobNotFound:  # deleted while followed
                body = None
            if len(self._seen) >= _CACHE_SIZE:
                self._seen.clear()
            self._seen[job_id] = (time.monotonic(), body)
            return body


LOOKS = _Looks()


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


_COUNT_KEYS = ("status", "done", "duplicate", "failed", "skipped", "pending")


async def _stream(who: Caller, job_id: str) -> AsyncIterator[bytes]:
    last: tuple[Any, ...] | None = None
    sent_at = 0.0
    yield b"retry: 3000\n\n"
    while True:
        seen = await LOOKS.look(who, job_id)
        if seen is None:
            yield _event("end", {"id": job_id, "status": "deleted"})
            return
        # a copy without the webhook (shared by streams of several people; the URL is the
        # owner's): the stream says counts
        body = {key: value for key, value in seen.items() if key != "webhook"}
        if body["status"] in ENDED:
            yield _event("end", body)
            return
        now = time.monotonic()
        key = tuple(body[k] for k in _COUNT_KEYS)
        if key != last or now - sent_at >= HEARTBEAT:
            yield _event("progress", body)
            last, sent_at = key, now
        await anyio.sleep(PROGRESS_EVERY)


@router.get(
    "/v1/jobs/{job_id}/events",
    summary="Follow a job: server-sent progress events, then one end event",
    responses={200: {"content": {"text/event-stream": {}}, "description": "Event stream"}},
)
async def follow(request: Request, job_id: str, who: CallerDep) -> StallGuardedResponse:
    await run_in_threadpool(visible_job, who, job_id)
    return StallGuardedResponse(
        _stream(who, job_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        stall_timeout=who.services.settings.download_stall_timeout,
    )
