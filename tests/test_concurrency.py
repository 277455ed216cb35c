"""Concurrency on one SQLite file: sessions creating jobs at the same moment while a worker
process records results, and long reads (a streamed master ZIP) next to that writer.

Nothing may fail with "database is locked", no update may be lost, and every count must
match the rows. Real parts: a `python -m downloader worker` subprocess, `submit`
subprocesses, threads in this process sharing one Database (as the app's sessions do), and
the loopback image server.
"""

from __future__ import annotations

import csv
import hashlib
import io
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from downloader import jobs
from downloader.inputs import parse_text
from downloader.services import Services
from tests.support.imageserver import ImageServer, Reply, Req, image_bytes
from tests.test_cli import Cli, last_json, write_input
from tests.test_crash import LIMITS, ROOT, in_process_services, spawn

LOCKED = ("database is locked", "database table is locked", "Traceback")


def serve_paced_images(server: ImageServer, delay: float = 0.02) -> threading.Event:
    """`/paced/<name>.jpg`: the image `name`, after `delay` seconds (keeps the worker busy).

    While the returned event is set, images whose name starts with "bg-" take 1 s: the
    worker keeps recording results at a steady pace, without running out of work.
    """
    slow_background = threading.Event()

    def handler(req: Req) -> Reply:
        name = req.param("name") or "x"
        wait = 1.0 if slow_background.is_set() and name.startswith("bg-") else delay
        return Reply.image(name, "jpg", delay=wait)

    server.add_route(r"^/paced/(?P<name>[^/]+)\.jpg$", handler)
    return slow_background


@dataclass
class Planned:
    """A job as submitted, and what it must end with."""

    rows: list[tuple[str, str]]
    done: int
    failed: int

    @property
    def images(self) -> int:
        return self.done + self.failed

    @property
    def products(self) -> int:
        return len({product for product, _ in self.rows})

    @property
    def urls(self) -> set[str]:
        return {url for _, url in self.rows}


def plan_job(server: ImageServer, tag: str, images: int, failed: int) -> Planned:
    rows = []
    for i in range(images):
        path = f"/status/404?{tag}-{i}" if i < failed else f"/paced/{tag}-{i}.jpg"
        rows.append((f"{tag}-{i // 3}", server.url(path, host=i % 3)))
    return Planned(rows, done=images - failed, failed=failed)


def as_text(rows: list[tuple[str, str]]) -> str:
    return "Product Number\tImage URL\n" + "".join(f"{p}\t{u}\n" for p, u in rows)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def job_status(services: Services, job_id: str) -> str:
    return jobs.get_job(services.db, job_id).status


def assert_job_matches(services: Services, job_id: str, planned: Planned) -> None:
    job = jobs.get_job(services.db, job_id)
    counts = jobs.job_counts(services.db, job_id)
    assert job.status == "completed" and job.finished_at is not None, job
    assert job.images == planned.images == counts.total, (job, counts)
    assert job.products == planned.products == len(jobs.product_numbers(services.db, job_id))
    assert (counts.done, counts.failed, counts.duplicate, counts.pending) == (
        planned.done,
        planned.failed,
        0,
        0,
    ), counts
    urls = {row.source_url for row in jobs.manifest_rows(services.db, job_id)}
    assert urls == planned.urls, "a job holds exactly its own rows"


def stop_worker(worker: subprocess.Popen[bytes], log: Path) -> str:
    worker.terminate()
    worker.wait(timeout=40)
    output = log.read_text()
    assert worker.returncode == 0, output[-3000:]
    return output


@pytest.mark.slow
def test_five_sessions_and_five_submits_at_the_same_moment_while_a_worker_downloads(
    tmp_path: Path, image_server: ImageServer
) -> None:
    s = image_server
    slow_background = serve_paced_images(s)
    slow_background.set()
    cli = Cli(tmp_path)
    services = in_process_services(tmp_path)
    background = plan_job(s, "bg", 200, failed=6)
    background_id = jobs.create_job(services.db, parse_text(as_text(background.rows))).id

    worker_log = tmp_path / "worker.log"
    worker = spawn(
        cli, [sys.executable, "-m", "downloader", "worker"], worker_log, MAX_GLOBAL_CONCURRENCY="6"
    )
    try:
        wait_for(lambda: jobs.job_counts(services.db, background_id).done >= 10, 60, "downloads")

        # five browser sessions (threads sharing the app's Database) ...
        session_plans = [plan_job(s, f"s{k}", 8 + 3 * k, failed=k) for k in range(5)]
        parsed = [parse_text(as_text(p.rows)) for p in session_plans]
        # ... and five `submit` processes, each with one duplicate and one rejected row
        submit_plans = [plan_job(s, f"c{k}", 10 + 4 * k, failed=k + 1) for k in range(5)]
        sources = []
        for k, planned in enumerate(submit_plans):
            extra = [planned.rows[-1], ("X" * 129, s.url("/img/never.jpg"))]
            sources.append(write_input(tmp_path / f"submit{k}.csv", planned.rows + extra))

        def background_done() -> int:
            return jobs.job_counts(services.db, background_id).done

        done_before = background_done()
        barrier = threading.Barrier(5)
        created: dict[int, str] = {}
        errors: list[BaseException] = []

        def session(k: int) -> None:
            try:
                barrier.wait(timeout=60)
                who = f"session-{k}"
                jobs.check_rate_limit(services.db, who, services.settings.job_rate_limit_per_minute)
                created[k] = jobs.create_job(services.db, parsed[k], created_by=who).id
            except BaseException as exc:
                errors.append(exc)

        submits = [
            subprocess.Popen(
                [sys.executable, "-m", "downloader", "submit", str(src)],
                cwd=ROOT,
                env={**cli.env, **LIMITS},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for src in sources
        ]
        threads = [threading.Thread(target=session, args=(k,)) for k in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
        submitted: list[str] = []
        for proc, planned in zip(submits, submit_plans, strict=True):
            out, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, err
            assert not any(word in err for word in LOCKED), err
            info = last_json(out)
            assert (info["images"], info["rejected"]) == (planned.images, 1)
            submitted.append(str(info["job_id"]))
        # the worker recorded results all along, and still had work when the last job landed
        assert done_before < background_done() < background.done
        slow_background.clear()

        all_jobs = [(background_id, background)]
        all_jobs += [(created[k], session_plans[k]) for k in range(5)]
        all_jobs += list(zip(submitted, submit_plans, strict=True))
        assert len({job_id for job_id, _ in all_jobs}) == 11
        wait_for(
            lambda: all(job_status(services, job_id) == "completed" for job_id, _ in all_jobs),
            120,
            "every job to complete",
        )
    finally:
        output = stop_worker(worker, worker_log)
    assert not any(word in output for word in LOCKED), output[-3000:]
    for job_id, planned in all_jobs:
        assert_job_matches(services, job_id, planned)
    for k in range(5):
        assert cli.sql(f"SELECT created_by FROM job WHERE id = '{created[k]}'") == [
            (f"session-{k}",)
        ]
    assert cli.sql("SELECT count(*) FROM job") == [(11,)]
    assert cli.sql("SELECT count(*) FROM image WHERE status IN ('queued', 'downloading')") == [(0,)]


@pytest.mark.slow
def test_a_long_zip_stream_neither_blocks_nor_breaks_the_worker_recording_results(
    tmp_path: Path, image_server: ImageServer
) -> None:
    """Two master ZIPs are streamed slowly (their read transactions stay open for the whole
    job) while a worker process records every result of a job: both sides finish intact."""
    s = image_server
    serve_paced_images(s)
    cli = Cli(tmp_path)
    services = in_process_services(tmp_path)
    finished = plan_job(s, "old", 120, failed=0)
    finished_id = jobs.create_job(services.db, parse_text(as_text(finished.rows))).id
    live = plan_job(s, "live", 150, failed=5)

    worker_log = tmp_path / "worker.log"
    worker = spawn(cli, [sys.executable, "-m", "downloader", "worker"], worker_log)
    try:
        wait_for(lambda: job_status(services, finished_id) == "completed", 90, "the first job")
        # Open the finished job's stream and read a little: from here on this process reads
        # it while the worker writes. The live job is queued only now, so every one of its
        # results is recorded while both streams are open (the worker cannot finish it first).
        old_stream = jobs.job_zip(services.db, services.storage, finished_id)
        old_parts = [next(old_stream)]
        live_id = jobs.create_job(services.db, parse_text(as_text(live.rows))).id
        live_stream = jobs.job_zip(services.db, services.storage, live_id)
        live_parts = [next(live_stream)]
        done_when_opened = jobs.job_counts(services.db, live_id).done
        # A slow client: a few more chunks of the finished job's ZIP while the worker keeps
        # writing, never to the end; the live job's stream just waits.
        while job_status(services, live_id) != "completed":
            if len(old_parts) < 4:
                old_parts.append(next(old_stream))
            time.sleep(0.1)
            assert worker.poll() is None, worker_log.read_text()[-3000:]
        assert jobs.job_counts(services.db, live_id).done > done_when_opened
        old_parts.extend(old_stream)
        live_parts.extend(live_stream)
    finally:
        output = stop_worker(worker, worker_log)
    assert not any(word in output for word in LOCKED), output[-3000:]
    assert_job_matches(services, finished_id, finished)
    assert_job_matches(services, live_id, live)

    old_zip = zipfile.ZipFile(io.BytesIO(b"".join(old_parts)))
    assert old_zip.testzip() is None
    old_rows = check_zip_against_manifest(old_zip)
    assert len(old_rows) == 120 and all(r["status"] == "done" for r in old_rows)

    # The live job's ZIP, read while the worker wrote: every row of the job listed once,
    # every listed file present with its recorded bytes.
    live_zip = zipfile.ZipFile(io.BytesIO(b"".join(live_parts)))
    assert live_zip.testzip() is None
    live_rows = check_zip_against_manifest(live_zip)
    assert {r["source_url"] for r in live_rows} == live.urls
    assert {r["status"] for r in live_rows} <= {"queued", "downloading", "done", "failed"}


def check_zip_against_manifest(archive: zipfile.ZipFile) -> list[dict[str, str]]:
    manifest = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
    names = set(archive.namelist()) - {"manifest.csv"}
    with_files = [r for r in manifest if r["file"]]
    assert names == {f"{r['product']}/{r['file']}" for r in with_files}
    for row in with_files:
        data = archive.read(f"{row['product']}/{row['file']}")
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
        assert data == image_bytes(row["source_url"].rsplit("/", 1)[-1].removesuffix(".jpg"))
    return manifest
