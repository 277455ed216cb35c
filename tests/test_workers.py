"""`python -m downloader worker` processes against the real PostgreSQL server: SIGTERM,
SIGKILL mid-job (on S3 from moto's server mode), and deployment-wide politeness measured at
the HTTP server.

Every worker is a real subprocess; the image server runs in this process on 127.0.0.2-4.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from downloader import jobs
from downloader.db import Database
from downloader.inputs import parse_text
from downloader.models import Image, ImageStatus, Worker
from downloader.settings import load_settings
from downloader.storage import make_storage
from tests.support.imageserver import ImageServer, Reply, Req, image_bytes

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

BASE_ENV = {
    "ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8",
    "BACKOFF_BASE": "0.05",
    "JOB_RETENTION_DAYS": "0",
    "EMBEDDED_WORKER": "false",
    "AWS_EC2_METADATA_DISABLED": "true",
}


# ---------------------------------------------------------------- helpers


class Workers:
    """Starts `python -m downloader worker` processes and cleans up after them."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = (
            {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
            | BASE_ENV
            | env
        )
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, **env: str) -> subprocess.Popen[bytes]:
        n = len(self.procs)
        proc = subprocess.Popen(
            [sys.executable, "-m", "downloader", "worker"],
            env=self.env | env,
            stdout=(self.tmp_path / f"worker{n}.out").open("wb"),
            stderr=(self.tmp_path / f"worker{n}.err").open("wb"),
        )
        self.procs.append(proc)
        return proc

    def output(self, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
        n = self.procs.index(proc)
        lines = (self.tmp_path / f"worker{n}.out").read_text().strip().splitlines()
        return json.loads(lines[-1]) if lines else {}

    def stderr(self, proc: subprocess.Popen[bytes]) -> str:
        return (self.tmp_path / f"worker{self.procs.index(proc)}.err").read_text()[-3000:]

    def terminate_all(self, timeout: float = 25) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers(tmp_path: Path, pg_url: str) -> Iterator[Workers]:
    group = Workers(tmp_path, {"DATABASE_URL": pg_url, "MEDIA_ROOT": str(tmp_path / "media")})
    try:
        yield group
    finally:
        group.terminate_all()


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def counts(db: Database, job_id: str) -> dict[str, int]:
    return jobs.job_counts(db, job_id).as_dict()


def submit(db: Database, urls: list[tuple[str, str]]) -> str:
    text = "Product Number\tImage URL\n" + "\n".join(f"{p}\t{u}" for p, u in urls)
    return jobs.create_job(db, parse_text(text)).id


def live_worker_rows(db: Database) -> int:
    with db.read() as session:
        return int(session.execute(select(func.count()).select_from(Worker)).scalar_one())


@dataclass
class HostMeter:
    """Server-side measurement: requests in progress per host (from arrival until the
    response is handed over) and every arrival time."""

    delay: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    active: Counter[str] = field(default_factory=Counter)
    peak: Counter[str] = field(default_factory=Counter)
    arrivals: list[float] = field(default_factory=list)
    served: Counter[str] = field(default_factory=Counter)

    def handler(self, req: Req) -> Reply:
        with self.lock:
            self.active[req.host] += 1
            self.peak[req.host] = max(self.peak[req.host], self.active[req.host])
            self.arrivals.append(time.monotonic())
        try:
            req.server.stopping.wait(self.delay)
        finally:
            with self.lock:
                self.active[req.host] -= 1
        name = req.param("name") or "x"
        with self.lock:
            self.served[name] += 1
        # the body goes out after the request stopped counting as in progress: a client can
        # only start its next request once it has it, so the count never overstates
        return Reply.image(name)

    def max_in_window(self, seconds: float) -> int:
        times = sorted(self.arrivals)
        best, lo = 0, 0
        for hi, t in enumerate(times):
            while t - times[lo] >= seconds:
                lo += 1
            best = max(best, hi - lo + 1)
        return best


def metered(server: ImageServer, delay: float) -> HostMeter:
    meter = HostMeter(delay)
    server.add_route(r"/polite/(?P<name>[A-Za-z0-9_-]+)\.jpg", meter.handler)
    return meter


def polite_urls(server: ImageServer, per_host: int, prefix: str = "") -> list[tuple[str, str]]:
    urls = []
    for i in range(per_host):
        for h in range(len(server.hosts)):
            urls.append((f"P{i % 25}", server.url(f"/polite/{prefix}h{h}-{i}.jpg", host=h)))
    return urls


# ---------------------------------------------------------------- SIGTERM


def test_sigterm_finishes_or_releases_in_flight_work_and_exits_within_20s(
    workers: Workers, pg_db: Database, image_server: ImageServer
) -> None:
    s = image_server
    urls = [(f"S{i}", s.url(f"/slow/4/s{i}", host=0)) for i in range(4)]  # finish in the drain
    urls += [(f"H{i}", s.url(f"/hang?i={i}", host=1)) for i in range(4)]  # never answer
    urls += [(f"Q{i}", s.url(f"/img/q{i}.jpg", host=2)) for i in range(40)]
    job_id = submit(pg_db, urls)
    proc = workers.start(MAX_GLOBAL_CONCURRENCY="8", DOWNLOAD_QPS="8", WORKER_LEASE_SECONDS="30")
    wait_for(
        lambda: s.count("/hang") == 4 and len(s.requests_to(host=0)) == 4,
        60,
        "the worker to have slow and hanging downloads in flight",
    )
    assert counts(pg_db, job_id)["downloading"] > 0
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    elapsed = time.monotonic() - started
    assert elapsed < 20, f"worker took {elapsed:.1f} s to exit"
    assert proc.returncode == 0, workers.stderr(proc)
    final = counts(pg_db, job_id)
    assert final["downloading"] == 0  # nothing stranded
    manifest = {r.product: r for r in jobs.manifest_rows(pg_db, job_id)}
    assert all(manifest[f"S{i}"].status == "done" for i in range(4))  # finished in the drain
    assert all(manifest[f"H{i}"].status == "queued" for i in range(4))  # released
    assert final["queued"] >= 4 and final["done"] >= 4
    assert live_worker_rows(pg_db) == 0  # unregistered
    with pg_db.read() as session:
        owners = session.execute(
            select(func.count()).select_from(Image).where(Image.lease_owner.is_not(None))  # type: ignore[union-attr]
        ).scalar_one()
    assert owners == 0
    out = workers.output(proc)
    assert out["images"] >= 4


# ---------------------------------------------------------------- SIGKILL


def test_sigkill_mid_job_another_worker_finishes_every_image_once(
    tmp_path: Path,
    pg_url: str,
    pg_db: Database,
    image_server: ImageServer,
    s3_overrides: dict[str, Any],
    s3_client: Any,
) -> None:
    s = image_server
    meter = metered(s, delay=0.15)
    n_images = 300
    urls = polite_urls(s, n_images // 3)
    job_id = submit(pg_db, urls)
    env = {
        "DATABASE_URL": pg_url,
        "MEDIA_BACKEND": "s3",
        "AWS_STORAGE_BUCKET_NAME": s3_overrides["aws_storage_bucket_name"],
        "AWS_S3_ENDPOINT_URL": s3_overrides["aws_s3_endpoint_url"],
        "AWS_S3_REGION_NAME": s3_overrides["aws_s3_region_name"],
        "AWS_ACCESS_KEY_ID": s3_overrides["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": s3_overrides["aws_secret_access_key"],
        "WORKER_LEASE_SECONDS": "4",
        "DOWNLOAD_QPS": "0",
        "TMPDIR": str(tmp_path / "tmp"),
    }
    (tmp_path / "tmp").mkdir()
    group = Workers(tmp_path, env)
    try:
        # The victim starts first so it downloads at once; an engine that joins a running
        # one waits for it to shrink its share first, which could leave it nothing to do.
        victim = group.start()

        def victim_registered() -> bool:
            with pg_db.read() as session:
                return bool(
                    session.execute(
                        select(func.count()).select_from(Worker).where(Worker.pid == victim.pid)  # type: ignore[arg-type]
                    ).scalar_one()
                )

        wait_for(victim_registered, 60, "the victim to register")
        survivor = group.start()

        def victim_is_mid_job() -> bool:
            with pg_db.read() as session:
                held = session.execute(
                    select(func.count())
                    .select_from(Image)
                    .join(Worker, Worker.id == Image.lease_owner)  # type: ignore[arg-type]
                    .where(Worker.pid == victim.pid, Image.status == ImageStatus.DOWNLOADING)  # type: ignore[arg-type]
                ).scalar_one()
            return held > 0 and counts(pg_db, job_id)["done"] >= 20

        wait_for(victim_is_mid_job, 90, "the victim to hold leases mid-job")
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        wait_for(
            lambda: jobs.get_job(pg_db, job_id).status == "completed", 120, "the job to complete"
        )
        assert survivor.poll() is None, group.stderr(survivor)
    finally:
        group.terminate_all()

    assert counts(pg_db, job_id) == {
        "queued": 0,
        "downloading": 0,
        "done": n_images,
        "duplicate": 0,
        "failed": 0,
        "skipped": 0,
    }
    # every image once in the bucket: exactly one object per image, under its own key
    settings = load_settings(**s3_overrides, database_url=pg_url)
    storage = make_storage(settings)
    listed = s3_client.list_objects_v2(
        Bucket=s3_overrides["aws_storage_bucket_name"], Prefix=f"jobs/{job_id}/"
    )
    object_keys = sorted(item["Key"] for item in listed.get("Contents", []))
    manifest = list(jobs.manifest_rows(pg_db, job_id))
    assert sorted(r.key for r in manifest if r.key) == object_keys
    assert len(object_keys) == n_images == len(set(object_keys))
    # every image was fetched; only the victim's in-flight ones a second time
    assert set(meter.served) == {f"h{h}-{i}" for h in range(3) for i in range(n_images // 3)}
    assert sum(meter.served.values()) - n_images <= 64

    # the master ZIP, streamed from the S3 objects, matches the manifest byte for byte
    archive = zipfile.ZipFile(io.BytesIO(b"".join(jobs.job_zip(pg_db, storage, job_id))))
    names = archive.namelist()
    assert "manifest.csv" in names and len(names) == n_images + 1
    rows = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode("utf-8-sig"))))
    assert len(rows) == n_images
    for row in rows:
        data = archive.read(f"{row['product']}/{row['file']}")
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
        assert int(row["bytes"]) == len(data)
        name = row["source_url"].rsplit("/", 1)[-1].removesuffix(".jpg")
        assert data == image_bytes(name)
    # no local copies left behind (the victim's half-written temp files are cleaned too)
    assert not [p for p in (tmp_path / "tmp").rglob("*") if p.is_file()]


# ---------------------------------------------------------------- politeness


def test_two_workers_never_exceed_the_per_host_limit_at_the_server(
    workers: Workers, pg_db: Database, image_server: ImageServer
) -> None:
    """Per-host limit 4 for the whole deployment: worker A starts alone (4 per host), then
    B joins (2 + 2). Measured at the server over the whole run, including the join."""
    s = image_server
    meter = metered(s, delay=0.4)
    job_id = submit(pg_db, polite_urls(s, 110))
    limits = {"MAX_PER_HOST_CONCURRENCY": "4", "MAX_GLOBAL_CONCURRENCY": "12", "DOWNLOAD_QPS": "0"}
    first = workers.start(**limits)
    wait_for(lambda: min(meter.peak[h] for h in s.hosts) == 4, 60, "worker A alone at 4 per host")
    second = workers.start(**limits)
    wait_for(lambda: jobs.get_job(pg_db, job_id).status == "completed", 120, "the job to complete")
    workers.terminate_all()
    assert max(meter.peak.values()) <= 4, dict(meter.peak)
    done_by = [workers.output(p)["images"] for p in (first, second)]
    assert sum(done_by) == 330 and min(done_by) > 0, done_by  # both really worked
    assert counts(pg_db, job_id)["done"] == 330


def test_more_workers_than_the_per_host_limit_all_download(
    workers: Workers, pg_db: Database, image_server: ImageServer
) -> None:
    """Three workers, per-host limit 2, three hosts: each host belongs to one worker
    (downloader.host_partition), so none stands by and no host sees more than 2."""
    s = image_server
    meter = metered(s, delay=0.3)
    job_id = submit(pg_db, polite_urls(s, 40))
    limits = {"MAX_PER_HOST_CONCURRENCY": "2", "MAX_GLOBAL_CONCURRENCY": "6", "DOWNLOAD_QPS": "0"}
    procs = [workers.start(**limits) for _ in range(3)]
    wait_for(lambda: jobs.get_job(pg_db, job_id).status == "completed", 120, "the job to complete")
    workers.terminate_all()
    assert max(meter.peak.values()) <= 2, dict(meter.peak)
    done_by = sorted(workers.output(p)["images"] for p in procs)
    assert sum(done_by) == 120
    assert done_by[0] > 0  # none stood by


def test_two_workers_share_the_global_qps(
    workers: Workers, pg_db: Database, image_server: ImageServer
) -> None:
    s = image_server
    meter = metered(s, delay=0.0)
    job_id = submit(pg_db, polite_urls(s, 30))
    limits = {"DOWNLOAD_QPS": "8", "MAX_PER_HOST_CONCURRENCY": "4"}
    procs = [workers.start(**limits) for _ in range(2)]
    wait_for(lambda: jobs.get_job(pg_db, job_id).status == "completed", 120, "the job to complete")
    workers.terminate_all()
    done_by = [workers.output(p)["images"] for p in procs]
    assert sum(done_by) == 90
    # 8 requests per second for the deployment (+1 burst request per worker)
    assert meter.max_in_window(1.0) <= 8 + 2, meter.max_in_window(1.0)
