"""Workers partitioned by host (issue 22): each host belongs to one live engine, so per-host
limits and learned rates are exact and every worker downloads while there are more hosts than
workers. Real `python -m downloader worker` processes against the real PostgreSQL server; the
HTTP servers count at the server side.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import func, select

from downloader import jobs
from downloader.db import Database
from downloader.host_partition import assign
from downloader.models import IMAGE, Image, ImageStatus
from tests.support.imageserver import ImageServer, Reply, Req
from tests.test_politeness import THROTTLE_HOSTS, TokenBuckets, throttled_rows
from tests.test_workers import Workers, counts, submit, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


# ---------------------------------------------------------------- the split itself


def test_the_split_is_deterministic_balanced_and_moves_little() -> None:
    hosts = [f"h{i}.example:443" for i in range(32)]
    engines = [f"e{i}" for i in range(8)]
    split = assign(hosts, engines)
    assert split == assign(reversed(hosts), list(reversed(engines)))  # same on every engine
    assert Counter(split.values()) == dict.fromkeys(engines, 4)  # every engine gets hosts
    fewer = assign(hosts, engines[:-1])  # e7 died: mostly only its hosts move
    moved = [h for h in hosts if split[h] != fewer[h]]
    assert {h for h in hosts if split[h] == "e7"} <= set(moved) and len(moved) <= 12
    # two spellings of one host go to the same engine
    assert (
        len(
            {assign(["Example.COM:80"], engines)["Example.COM:80"]}
            | {assign(["example.com.:80"], engines)["example.com.:80"]}
        )
        == 1
    )


# ---------------------------------------------------------------- throttling, three workers


def test_three_workers_download_every_image_of_throttling_hosts(
    tmp_path: Path, pg_url: str, pg_db: Database
) -> None:
    """The throttling bar for `submit` + three workers: 4 hosts at 5 requests/s each, 400
    images: all done, at most 40 answers of 429, within 40 s."""
    with ImageServer(THROTTLE_HOSTS) as server:
        buckets = TokenBuckets()
        server.add_route(r"^/tb/(?P<name>[A-Za-z0-9_-]+)\.jpg$", buckets.handler)
        job_id = submit(pg_db, throttled_rows(server, 100))
        group = Workers(tmp_path, {"DATABASE_URL": pg_url, "MEDIA_ROOT": str(tmp_path / "m")})
        try:
            limits = {"MAX_PER_HOST_CONCURRENCY": "4", "DOWNLOAD_QPS": "0"}
            started = time.monotonic()
            procs = [group.start(**limits) for _ in range(3)]
            wait_for(
                lambda: jobs.get_job(pg_db, job_id).status == "completed", 120, "the job to end"
            )
            elapsed = time.monotonic() - started
        finally:
            group.terminate_all()
        done_by = [group.output(p).get("images", 0) for p in procs]
    print(f"3 workers: {elapsed:.1f} s, {buckets.throttled} answers of 429, done by {done_by}")
    assert counts(pg_db, job_id)["done"] == 400, counts(pg_db, job_id)
    assert buckets.throttled <= 40, dict(buckets.answers)
    assert elapsed < 40


# ---------------------------------------------------------------- 8 workers, 32 hosts


@dataclass
class PerHostMeter:
    """Per host: requests in progress (peak) and arrival times; served names."""

    delay: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    active: Counter[str] = field(default_factory=Counter)
    peak: Counter[str] = field(default_factory=Counter)
    arrivals: dict[str, list[float]] = field(default_factory=dict)
    served: Counter[str] = field(default_factory=Counter)

    def handler(self, req: Req) -> Reply:
        with self.lock:
            self.active[req.host] += 1
            self.peak[req.host] = max(self.peak[req.host], self.active[req.host])
            self.arrivals.setdefault(req.host, []).append(time.monotonic())
        try:
            req.server.stopping.wait(self.delay)
        finally:
            with self.lock:
                self.active[req.host] -= 1
        name = req.param("name") or "x"
        with self.lock:
            self.served[name] += 1
        return Reply.image(name)

    def most_in_a_second(self, host: str, slack: float = 0.05) -> int:
        """Most arrivals within any 1 s, less `slack`: the engine spaces a host's requests
        exactly 1/PER_HOST_QPS apart when it sends them, and on a loaded machine one can
        reach the server a few tens of milliseconds later than the next."""
        times = sorted(self.arrivals.get(host, []))
        best, lo = 0, 0
        for hi, t in enumerate(times):
            while t - times[lo] >= 1.0 - slack:
                lo += 1
            best = max(best, hi - lo + 1)
        return best


def lease_holders(db: Database, job_id: str) -> set[str]:
    with db.read() as session:
        return set(
            session.execute(
                select(IMAGE.c.lease_owner)
                .distinct()
                .where(IMAGE.c.job_id == job_id, IMAGE.c.status == ImageStatus.DOWNLOADING)
            ).scalars()
        )


def test_eight_workers_on_32_hosts_all_download_within_per_host_limits_through_a_sigkill(
    tmp_path: Path, pg_url: str, pg_db: Database
) -> None:
    qps = 4
    hosts = [f"127.0.0.{i}" for i in range(2, 34)]
    per_host = 40
    with ImageServer(hosts) as server:
        meter = PerHostMeter(delay=0.3)
        server.add_route(r"^/p/(?P<name>[A-Za-z0-9_-]+)\.jpg$", meter.handler)
        rows = [
            (f"P{i % 50}", server.url(f"/p/h{h}-{i}.jpg", host=h))
            for i in range(per_host)
            for h in range(len(hosts))
        ]
        n_images = len(rows)
        job_id = submit(pg_db, rows)
        env = {
            "DATABASE_URL": pg_url,
            "MEDIA_ROOT": str(tmp_path / "media"),
            "WORKER_LEASE_SECONDS": "4",
        }
        group = Workers(tmp_path, env)
        limits = {
            "MAX_PER_HOST_CONCURRENCY": "2",
            "MAX_GLOBAL_CONCURRENCY": "64",
            "PER_HOST_QPS": str(qps),
            "DOWNLOAD_QPS": "0",
        }
        try:
            procs = [group.start(**limits) for _ in range(8)]
            seen: set[str] = set()

            def all_eight_download() -> bool:
                seen.update(holder for holder in lease_holders(pg_db, job_id) if holder)
                return len(seen) == 8

            wait_for(all_eight_download, 120, "all eight workers to hold leases")
            victim = procs[3]
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            wait_for(
                lambda: jobs.get_job(pg_db, job_id).status == "completed", 180, "the job to end"
            )
        finally:
            group.terminate_all()
        survivors = [p for p in procs if p is not victim]
        done_by = [group.output(p).get("images", 0) for p in survivors]
    print(f"8 workers: survivors' images {done_by}; peaks {max(meter.peak.values())}")
    assert counts(pg_db, job_id) == {
        "queued": 0,
        "downloading": 0,
        "done": n_images,
        "duplicate": 0,
        "failed": 0,
        "skipped": 0,
    }
    assert all(done > 0 for done in done_by), done_by  # none stood by
    assert max(meter.peak.values()) <= 2, dict(meter.peak)
    busiest = {host: meter.most_in_a_second(host) for host in meter.arrivals}
    assert max(busiest.values()) <= qps, busiest
    assert set(meter.served) == {f"h{h}-{i}" for h in range(len(hosts)) for i in range(per_host)}
    with pg_db.read() as session:
        recorded = session.execute(
            select(func.count()).select_from(Image).where(Image.job_id == job_id)  # type: ignore[arg-type]
        ).scalar_one()
    assert recorded == n_images
