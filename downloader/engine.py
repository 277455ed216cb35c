"""The engine: claims leased work, downloads it through the Fetcher, stores the files and
records results in batches.

One Engine runs in one event loop. The app embeds one; `python -m downloader worker` and
`run` start their own. Database calls are short and run in a worker thread so the event
loop keeps streaming bytes while SQLite or PostgreSQL commits a batch.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from sqlalchemy.exc import IntegrityError

from downloader import host_partition, queue, retention, webhooks, worker_registry
from downloader.db import Database
from downloader.fetch import Fetcher, FetchOutcome
from downloader.fetch.hostrate import publish_host_states
from downloader.fetch.sniff import CONTENT_TYPES as SNIFFED_CONTENT_TYPES
from downloader.fetch.structure import Details
from downloader.job_headers import JobHeaderCache
from downloader.leases import LeaseBook
from downloader.models import ImageStatus
from downloader.near_duplicates import signed64
from downloader.outputs.stage import ConvertError, OutputStage
from downloader.queue import Claim, Result
from downloader.redact import redact_logger
from downloader.request_headers import headers_for_url
from downloader.settings import Settings
from downloader.storage import Storage, image_key, output_key
from downloader.turns import DownloadTasks, LocalTurns, host_of

log = redact_logger(logging.getLogger(__name__))  # its lines can name URLs

FLUSH_INTERVAL = 0.25  # seconds between result batches
FLUSH_SIZE = 500  # results that trigger an early batch
UNTIL_IDLE_POLL = 0.1  # seconds between looks at a job's last images held by other engines
CONTENT_TYPES = SNIFFED_CONTENT_TYPES  # every accepted format's media type
SHARE_REFRESH = 1.0  # seconds between re-reads of the live engines (shares, host partition)
# Every long-running or `run` engine takes part in the host partition (downloader.host_partition)
PARTITION_KINDS = ("worker", "embedded", "run")
JOIN_WAIT = 2 * SHARE_REFRESH + 0.5  # a joining engine waits for the others to shrink first
# Claimed images beyond the download slots (the prefetch, see _compute_capacity): what the
# engine starts within CLAIM_LOOKAHEAD at its recent pace, between PREFETCH_MIN and
# BACKLOG_SLOTS slot-fulls. A slow host gets a small prefetch, so the engine does not hoard
# work another engine or another job could start (fair share).
BACKLOG_SLOTS = 6
PREFETCH_MIN = 8
CLAIM_LOOKAHEAD = 0.5  # seconds
RATE_WINDOW = 1.0  # seconds over which the pace is measured
CLAIM_EVERY = 0.5  # seconds: with any room, claim at least this often (a new job's turn)


@dataclass
class EngineStats:
    claimed: int = 0
    finished: int = 0
    failed: int = 0
    stale: int = 0
    started_at: float = field(default_factory=time.monotonic)


class Engine:
    def __init__(
        self,
        db: Database,
        storage: Storage,
        settings: Settings,
        *,
        kind: str = "worker",
        job_id: str | None = None,
        share: float | None = None,
    ) -> None:
        self.db = db
        self.storage = storage
        self.settings = settings
        self.kind = kind
        self.job_id = job_id  # only this job (the `run` command); None = every active job
        # share=None: follow the live engine count (workers, the app); `run` passes a fixed one
        self.auto_share = share is None
        self.share = 1.0 if share is None else share
        self.worker_id = worker_registry.make_worker_id(kind)
        self.stats = EngineStats()
        self._in_flight: dict[int, Claim] = {}
        self._leases = LeaseBook(settings.worker_lease_seconds)
        self._job_headers = JobHeaderCache(db)  # each job's request headers, read once
        self._outputs: OutputStage | None = None  # conversions and checks (run() starts it)
        self._results: list[Result] = []
        self._flush_wanted = anyio.Event()
        self._stopping = False
        self._active = 0  # download tasks running now
        # Claimed and not yet downloaded. Finished downloads waiting for the next result
        # flush do not count: they hold no download slot, and counting them would cap
        # throughput at capacity / flush interval.
        self._downloading = 0
        self.drain_seconds = 10.0
        self._standby = False  # reaped while stalled: heartbeat and reap, claim nothing
        # claimed images wait for their host's slots here and start fairly (downloader.turns);
        # a host is this engine's alone (downloader.host_partition): its limits apply whole
        self._turns = LocalTurns(settings.max_per_host_concurrency)
        # the hosts this engine may claim images of; None = all (it is the only engine)
        self._claimable: frozenset[str] | None = frozenset()
        self._prefetch = PREFETCH_MIN
        self._ended = 0  # downloads ended (the pace for the prefetch)
        self._fetcher: Fetcher | None = None
        self._tasks: DownloadTasks | None = None
        self.retention_delay = 60.0  # first retention pass after start, then every interval
        self.retention_interval = 3600.0
        self._capacity = self._compute_capacity(self.share)

    def _compute_capacity(self, share: float) -> int:
        # Every download slot busy plus a prefetch: what the engine starts before the next
        # claim arrives. On fast hosts a claim's round trip through the database thread is
        # worth many downloads (README.md, Performance), so the prefetch follows the pace
        # (_adapt_prefetch); on a slow host it stays small, the engine holds little that
        # others could start, and a new job's images are claimed at the next claim.
        # Leases held in the prefetch are renewed by the heartbeat, so it never expires.
        return self._slots(share) + self._prefetch

    def _adapt_prefetch(self, per_second: float) -> None:
        most = BACKLOG_SLOTS * self._slots(self.share)
        prefetch = min(max(PREFETCH_MIN, math.ceil(per_second * CLAIM_LOOKAHEAD)), most)
        if prefetch != self._prefetch:
            self._prefetch = prefetch
            self._capacity = self._compute_capacity(self.share)

    def _slots(self, share: float) -> int:
        return max(1, math.floor(self.settings.max_global_concurrency * share))

    def stop(self) -> None:
        """Stop claiming; in-flight downloads finish (or are released on cancel)."""
        self._stopping = True
        self._flush_wanted.set()

    async def run(self, *, until_idle: bool = False) -> EngineStats:
        """Process work until stop() (or, with until_idle, until nothing is claimable)."""
        lease = self.settings.worker_lease_seconds
        await anyio.to_thread.run_sync(
            worker_registry.register_worker, self.db, self.worker_id, self.kind
        )
        await anyio.to_thread.run_sync(worker_registry.reap_dead_workers, self.db, lease * 2)
        temp_dir = Path(self.storage.temp_dir())
        temp_dir.mkdir(parents=True, exist_ok=True)
        # .part files of processes that died mid-download on this host
        await anyio.to_thread.run_sync(self.storage.clean_temp)
        outputs = self._outputs = OutputStage(self.db, temp_dir)
        try:
            async with Fetcher(self.settings, temp_dir) as fetcher:
                fetcher.set_share(self.share)
                async with anyio.create_task_group() as housekeeping:
                    housekeeping.start_soon(self._heartbeat_loop, fetcher)
                    housekeeping.start_soon(self._flush_loop)
                    if self.kind in ("worker", "embedded") and self.settings.job_retention_days:
                        housekeeping.start_soon(self._retention_loop)
                    if self.kind in ("worker", "embedded"):  # job webhooks (HTTP API)
                        housekeeping.start_soon(webhooks.webhook_loop, self.db, self.settings)
                    await self._repartition()
                    housekeeping.start_soon(self._partition_loop, fetcher)
                    if self.auto_share:
                        live = await self._update_share(fetcher)
                        housekeeping.start_soon(self._share_loop, fetcher)
                        if live > 1:
                            # The engines already running shrink their share within
                            # SHARE_REFRESH; only then take ours (docs/scaling.md).
                            await anyio.sleep(JOIN_WAIT)
                    downloads = DownloadTasks()
                    try:
                        await self._claim_loop(fetcher, downloads, until_idle)
                        # Stopping: let running downloads finish for a while, then
                        # cancel them; their leases are released below.
                        with anyio.move_on_after(self.drain_seconds):
                            while self._active:
                                await anyio.sleep(0.05)
                    finally:
                        with anyio.CancelScope(shield=True):
                            self._stopping = True  # no waiting image starts from here on
                            await downloads.cancel_all()
                            await self._flush()
                        housekeeping.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._shutdown_db)
                await anyio.to_thread.run_sync(outputs.close)  # the conversion workers
            if self.storage.name == "local":  # its own .tmp/<pid> folder, once empty
                with suppress(OSError):
                    temp_dir.rmdir()
        return self.stats

    def _shutdown_db(self) -> None:
        batch, self._results = self._results, []
        if batch:
            self._write_batch(batch)
            for result in batch:
                self._in_flight.pop(result.image_id, None)
        queue.release_claims(self.db, self.worker_id, list(self._in_flight))
        worker_registry.unregister_worker(self.db, self.worker_id)
        publish_host_states(self.worker_id, None)

    async def _claim_loop(
        self, fetcher: Fetcher, downloads: DownloadTasks, until_idle: bool
    ) -> None:
        lease = self.settings.worker_lease_seconds
        idle_sleep = 0.05
        last_reap = last_claim = pace_from = time.monotonic()
        ended_before = self._ended
        self._fetcher, self._tasks = fetcher, downloads
        while not self._stopping:
            now = time.monotonic()
            if now - pace_from >= RATE_WINDOW:
                self._adapt_prefetch((self._ended - ended_before) / (now - pace_from))
                pace_from, ended_before = now, self._ended
            room = self._capacity - self._downloading
            # Claim a quarter of the capacity or more at a time: a claim's transaction costs
            # about the same whatever its size (measured in benchmarks/bench_queue.py), and two
            # processes sharing SQLite queue less often for its lock. With any room, claim at
            # least every CLAIM_EVERY: a job queued since gets its turn then (fair share), even
            # while slow downloads free little room.
            wanted = min(self.settings.claim_batch_size, max(1, self._capacity // 4))
            due = room >= wanted or (room > 0 and now - last_claim >= CLAIM_EVERY)
            if not self._standby and due:
                last_claim = now
                claims = await anyio.to_thread.run_sync(
                    self._claim, min(room, self.settings.claim_batch_size)
                )
                self._downloading += len(claims)
                for item in claims:
                    self._in_flight[item.image_id] = item
                    self._turns.add(item)
                self._start_ready({host_of(item) for item in claims})
                self.stats.claimed += len(claims)
                if claims:
                    idle_sleep = 0.05
                    continue
                if (
                    until_idle
                    and not self._in_flight
                    and not self._results
                    and not await anyio.to_thread.run_sync(self._job_has_pending)
                ):
                    return
                # Nothing to claim. Back off, but an engine that ends when the job does keeps
                # looking often: other processes are finishing the job's last images.
                idle_sleep = min(idle_sleep * 2, UNTIL_IDLE_POLL if until_idle else 1.0)
            if time.monotonic() - last_reap > lease / 2:
                last_reap = time.monotonic()
                reaped = await anyio.to_thread.run_sync(
                    worker_registry.reap_dead_workers, self.db, lease * 2
                )
                if reaped:
                    await anyio.to_thread.run_sync(self.storage.clean_temp)
            await anyio.sleep(idle_sleep if not self._in_flight else 0.02)

    def _start_ready(self, hosts: set[str] | None) -> None:
        """Start the claimed images whose turn it is at a free slot of their host."""
        if self._stopping or self._tasks is None or self._fetcher is None:
            return  # stopping: images not started are given back at the end
        for item in self._turns.ready(hosts):
            self._tasks.start(self._download(self._fetcher, item))

    def _claim(self, limit: int) -> list[Claim]:
        lease = self.settings.worker_lease_seconds
        return queue.claim(
            self.db, self.worker_id, limit, lease, job_id=self.job_id, hosts=self._claimable
        )

    def _job_has_pending(self) -> bool:
        if self.job_id is None:
            return queue.has_claimable_work(self.db)
        # Images leased by other live processes still count as pending for `run`;
        # a paused or cancelled job has nothing more for it.
        if not queue.job_is_active(self.db, self.job_id):
            return False
        return queue.pending_count(self.db, self.job_id) > 0

    async def _download(self, fetcher: Fetcher, item: Claim) -> None:
        self._active += 1
        try:
            await self._download_one(fetcher, item)
        finally:
            self._active -= 1
            self._downloading -= 1
            self._ended += 1
            self._start_ready({self._turns.finished(item)})  # the host's next turn

    async def _download_one(self, fetcher: Fetcher, item: Claim) -> None:
        try:
            # The job's own headers for this host (downloader.request_headers), if it has any
            headers = headers_for_url(item.url, await self._job_headers.get(item.job_id))
            if headers:
                outcome = await fetcher.fetch(item.url, headers=headers)
            else:
                outcome = await fetcher.fetch(item.url)
            result = await self._store(item, outcome)
        except Exception as exc:  # a bug must not stall the job: record it as a failure
            log.exception("unexpected error downloading image %s", item.image_id)
            result = Result(
                image_id=item.image_id,
                status=ImageStatus.FAILED,
                attempts=item.attempts + 1,
                error_code="internal_error",
                error=f"Internal error: {type(exc).__name__}.",
            )
        self._results.append(result)
        # A full batch, or the last download running: nothing more will come soon, and the
        # job's end (or a paused engine's count) should not wait for the next interval.
        if len(self._results) >= FLUSH_SIZE or self._active == 1:
            self._flush_wanted.set()

    async def _store(self, item: Claim, outcome: FetchOutcome) -> Result:
        attempts = item.attempts + outcome.attempts
        stored = outcome.body is not None or outcome.temp_path is not None
        if not outcome.ok or not stored or outcome.format is None:
            return Result(
                image_id=item.image_id,
                status=ImageStatus.FAILED,
                attempts=attempts,
                error_code=outcome.error_code or "unknown",
                error=outcome.error,
                http_status=outcome.http_status,
            )
        key = image_key(item.job_id, item.product_id, item.position, outcome.format)
        content_type = CONTENT_TYPES.get(outcome.format)
        body, temp_path = outcome.body, outcome.temp_path
        if not self._leases.safe(item, time.time()) and not await anyio.to_thread.run_sync(
            self._renew_lease, item.image_id
        ):
            # Taken over while this engine was stalled: the file at `key` is the new owner's.
            if temp_path is not None:
                temp_path.unlink(missing_ok=True)
            log.warning("lease on image %s lost before its file was stored", item.image_id)
            return Result(
                image_id=item.image_id,
                status=ImageStatus.FAILED,
                attempts=attempts,
                error_code="lease_lost",
                error="This engine's lease ran out; another engine downloads the image.",
            )
        try:  # the job's conversion and checks (downloader.outputs), before anything is stored
            assert self._outputs is not None
            output = await self._outputs.prepare(item.job_id, item.image_id, outcome)
        except ConvertError as exc:
            if temp_path is not None:
                temp_path.unlink(missing_ok=True)
            return Result(
                image_id=item.image_id,
                status=ImageStatus.FAILED,
                attempts=attempts,
                error_code=exc.code,
                error=exc.message,
                http_status=outcome.http_status,
            )
        try:
            if self.storage.name == "local":  # a write and a rename: no thread hop
                if body is not None:
                    self.storage.put_bytes(body, key)
                else:
                    assert temp_path is not None
                    self.storage.put(temp_path, key)
            elif body is not None:
                await anyio.to_thread.run_sync(self.storage.put_bytes, body, key, content_type)
            else:
                assert temp_path is not None
                await anyio.to_thread.run_sync(self.storage.put, temp_path, key, content_type)
            if output.path is not None:
                assert output.output_format is not None
                await anyio.to_thread.run_sync(
                    self.storage.put,
                    output.path,
                    output_key(key),
                    CONTENT_TYPES.get(output.output_format),
                )
        except BaseException:
            if temp_path is not None:  # a failed upload leaves no local copy
                temp_path.unlink(missing_ok=True)
            if output.path is not None:
                output.path.unlink(missing_ok=True)
            raise
        details = outcome.details or Details()
        return Result(
            image_id=item.image_id,
            status=ImageStatus.DONE,
            attempts=attempts,
            http_status=outcome.http_status,
            sha256=outcome.sha256,
            crc32=outcome.crc32,
            size_bytes=outcome.size,
            format=outcome.format,
            width=outcome.width,
            height=outcome.height,
            storage_key=key,
            color_mode=details.color_mode,
            has_alpha=details.has_alpha,
            frames=details.frames,
            icc_profile=details.icc_profile,
            orientation=details.orientation,
            dhash=None if details.dhash is None else signed64(details.dhash),
            output_format=output.output_format,
            output_bytes=output.output_bytes,
            output_width=output.output_width,
            output_height=output.output_height,
            warnings=output.warnings,
        )

    async def _flush_loop(self) -> None:
        while True:
            with anyio.move_on_after(FLUSH_INTERVAL):
                await self._flush_wanted.wait()
            self._flush_wanted = anyio.Event()
            await self._flush()

    async def _flush(self) -> None:
        # Take the batch in the loop thread; downloads keep appending to a fresh list.
        batch, self._results = self._results, []
        if not batch:
            return
        report = await anyio.to_thread.run_sync(self._write_batch, batch)
        for result in batch:
            self._in_flight.pop(result.image_id, None)
            if result.status == ImageStatus.FAILED:
                self.stats.failed += 1
        self.stats.finished += len(batch)
        self.stats.stale += report.stale

    def _renew_lease(self, image_id: int) -> bool:
        lease = self.settings.worker_lease_seconds
        return queue.renew_lease(self.db, self.worker_id, image_id, lease)

    def _write_batch(self, batch: list[Result]) -> queue.FlushReport:
        report = queue.record_results(self.db, self.worker_id, batch)
        for key in report.duplicate_keys:
            self.storage.delete(key)
            self.storage.delete(output_key(key))  # its converted output, if the job converts
        return report

    async def _heartbeat_loop(self, fetcher: Fetcher) -> None:
        lease = self.settings.worker_lease_seconds
        while True:
            await anyio.sleep(max(0.5, lease / 3))
            renewal = await anyio.to_thread.run_sync(
                lambda: worker_registry.heartbeat(
                    self.db, self.worker_id, lease, len(self._in_flight), self.stats.finished
                )
            )
            self._leases.renewed(renewal)

    async def _share_loop(self, fetcher: Fetcher) -> None:
        while True:
            await anyio.sleep(SHARE_REFRESH)
            await self._update_share(fetcher)

    async def _update_share(self, fetcher: Fetcher) -> int:
        """Split the deployment-wide limits evenly over the live long-running engines.

        The global concurrency and QPS are shared: each of N engines takes 1/N (floored: the
        sum never exceeds the limit). Per-host limits are not split: each host belongs to one
        engine (`_repartition`), so every engine downloads as long as there are at least as
        many hosts with work as engines. Returns the number of live engines.
        """
        live = await anyio.to_thread.run_sync(
            worker_registry.live_engines, self.db, self.settings.worker_lease_seconds * 2
        )
        if self.worker_id not in live:
            # Reaped while stalled (a suspended VM, a long pause): stand by until visible again.
            with suppress(IntegrityError):
                await anyio.to_thread.run_sync(
                    worker_registry.register_worker, self.db, self.worker_id, self.kind
                )
            self._standby = True
            return len(live) + 1
        self._standby = False
        share = 1.0 / len(live)
        if share != self.share:
            self.share = share
            fetcher.set_share(share)
            self._capacity = self._compute_capacity(share)
            self._start_ready(None)
        return len(live)

    async def _partition_loop(self, fetcher: Fetcher) -> None:
        while True:
            await anyio.sleep(SHARE_REFRESH)
            await self._repartition()
            publish_host_states(self.worker_id, fetcher.host_states())

    async def _repartition(self) -> None:
        """Take this engine's part of the hosts with work (downloader.host_partition) and give
        back the claimed, not started images of hosts that moved to another engine."""
        stale = self.settings.worker_lease_seconds * 2
        live = await anyio.to_thread.run_sync(
            worker_registry.live_engines, self.db, stale, PARTITION_KINDS
        )
        if self.worker_id not in live:
            return  # reaped while stalled: _update_share registers it again
        if len(live) == 1:
            self._claimable = None
            return
        part = await anyio.to_thread.run_sync(host_partition.split, self.db, self.worker_id, live)
        self._claimable = part.claimable
        moved = self._turns.give_back(part.owned)
        if moved:
            for item in moved:
                self._in_flight.pop(item.image_id, None)
            self._downloading -= len(moved)
            ids = [item.image_id for item in moved]
            await anyio.to_thread.run_sync(queue.release_claims, self.db, self.worker_id, ids)

    async def _retention_loop(self) -> None:
        """Remove jobs past JOB_RETENTION_DAYS now and then (retention.cleanup)."""
        await anyio.sleep(self.retention_delay)
        while True:
            try:
                await anyio.to_thread.run_sync(
                    lambda: retention.cleanup(
                        self.db, self.storage, self.settings.job_retention_days
                    )
                )
            except Exception:  # a storage or database hiccup: try again next time
                log.exception("retention cleanup failed")
            await anyio.sleep(self.retention_interval)
