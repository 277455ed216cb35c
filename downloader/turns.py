"""Local turns: an engine's claimed images wait here for a download slot of their host, and
are started fairly -- the owner with the fewest downloads running on that host goes first,
then, within that owner, the job with the fewest (ties: the one served least recently).

Without it every claimed image started at once and queued first come, first served at the
host's slots (the fetcher's FIFO), so a small job's images, claimed after a big job's, waited
behind every big-job image the engine held for that host. Now a freed slot of a host goes to
the job whose turn it is; the fetcher's slots still enforce the limits exactly.

The host key is the host[:port] the job stored for the URL (lower case, as typed): two
spellings of one host get separate turns here, and only then meet the fetcher's FIFO. Tables
of idle hosts are dropped, so an engine working through a million hosts keeps a small footprint.

`DownloadTasks` holds the downloads once started.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from downloader.claims import Claim

log = logging.getLogger(__name__)


def host_of(item: Claim) -> str:
    """The key of `item`'s host: the stored host, else the URL's (rows written without one)."""
    if item.host:
        return item.host
    try:
        return urlsplit(item.url).netloc.rpartition("@")[2].lower()
    except ValueError:
        return ""


@dataclass
class _Host:
    waiting: dict[str, dict[str, deque[Claim]]] = field(default_factory=dict)  # owner -> job
    running: int = 0
    by_owner: dict[str, int] = field(default_factory=dict)  # downloads running per owner
    by_job: dict[str, int] = field(default_factory=dict)  # ... and per job
    owner_turn: dict[str, int] = field(default_factory=dict)  # the last turn each owner took
    job_turn: dict[str, int] = field(default_factory=dict)  # ... and each job

    def pop(self, turn: int) -> Claim:
        owner = min(
            self.waiting, key=lambda o: (self.by_owner.get(o, 0), self.owner_turn.get(o, -1))
        )
        jobs = self.waiting[owner]
        job = min(jobs, key=lambda j: (self.by_job.get(j, 0), self.job_turn.get(j, -1)))
        queued = jobs[job]
        item = queued.popleft()
        if not queued:
            del jobs[job]
            if not jobs:
                del self.waiting[owner]
        self.owner_turn[owner] = self.job_turn[job] = turn
        self.running += 1
        self.by_owner[owner] = self.by_owner.get(owner, 0) + 1
        self.by_job[job] = self.by_job.get(job, 0) + 1
        return item


class LocalTurns:
    """Claimed images waiting for their host's slots; see the module docstring."""

    def __init__(self, per_host: int) -> None:
        self.per_host = max(1, per_host)
        self._hosts: dict[str, _Host] = {}
        self._turns = itertools.count()
        self.waiting = 0

    def add(self, item: Claim) -> None:
        host = self._hosts.setdefault(host_of(item), _Host())
        host.waiting.setdefault(item.owner, {}).setdefault(item.job_id, deque()).append(item)
        self.waiting += 1

    def ready(self, hosts: set[str] | None = None) -> list[Claim]:
        """The waiting images that may start now (counted as running from here on), for
        `hosts` or every host."""
        started: list[Claim] = []
        for key in list(self._hosts) if hosts is None else hosts:
            host = self._hosts.get(key)
            while host is not None and host.waiting and host.running < self.per_host:
                started.append(host.pop(next(self._turns)))
        self.waiting -= len(started)
        return started

    def give_back(self, keep: set[str] | frozenset[str]) -> list[Claim]:
        """Remove and return the waiting images of every host not in `keep` (hosts that moved
        to another engine: `downloader.host_partition`); their running ones stay."""
        taken: list[Claim] = []
        for key in [key for key in self._hosts if key not in keep]:
            host = self._hosts[key]
            for jobs in host.waiting.values():
                for queued in jobs.values():
                    taken.extend(queued)
            host.waiting.clear()
            if not host.running:
                del self._hosts[key]
        self.waiting -= len(taken)
        return taken

    def finished(self, item: Claim) -> str:
        """`item`'s download ended: its host has a free slot. Returns the host's key."""
        key = host_of(item)
        host = self._hosts.get(key)
        if host is None:
            return key
        host.running -= 1
        for table, name in ((host.by_owner, item.owner), (host.by_job, item.job_id)):
            table[name] -= 1
            if not table[name]:
                del table[name]
        if not host.running and not host.waiting:
            del self._hosts[key]
        return key

    def __len__(self) -> int:
        """Hosts with images waiting or running."""
        return len(self._hosts)


class DownloadTasks:
    """The engine's downloads as plain asyncio tasks. An anyio task group spawned each one
    with a task handle and a cancel scope: ~4% of an engine's CPU in a cProfile of a 10,000-
    image run. A download never raises (failures are recorded as results), so a group's
    error propagation buys nothing here; `cancel_all` ends what is left."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, download: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(download)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a download task failed", exc_info=task.exception())

    async def cancel_all(self) -> None:
        """Cancel the downloads still running and wait until they have ended."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
