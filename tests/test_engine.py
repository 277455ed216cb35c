"""The engine end to end in-process: real HTTP servers on loopback, a real SQLite file and
the local storage folder."""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
import zipfile
from pathlib import Path

import anyio

from downloader import jobs
from downloader.engine import DownloadTasks, Engine
from downloader.inputs import parse_text
from downloader.services import Services, build_services
from downloader.settings import load_settings
from tests.support.imageserver import ImageServer, image_bytes


def make_services(tmp_path: Path, **overrides: object) -> Services:
    settings = load_settings(
        database_url=f"sqlite:///{tmp_path / 'app.db'}",
        media_root=str(tmp_path / "media"),
        allowed_private_networks=["127.0.0.0/8"],
        download_qps=0,
        backoff_base=0.05,
        **overrides,
    )
    return build_services(settings)


def run_job(services: Services, text: str) -> str:
    job = jobs.create_job(services.db, parse_text(text))
    made = time.monotonic()
    engine = Engine(services.db, services.storage, services.settings, job_id=job.id, share=1.0)
    stats = anyio.run(lambda: engine.run(until_idle=True))
    # the engine's own counters, started when it was made
    assert made <= stats.started_at <= time.monotonic()
    assert stats.finished == stats.claimed == job.images
    return job.id


def test_a_mixed_job_ends_with_every_image_in_a_final_state(
    tmp_path: Path, image_server: ImageServer
) -> None:
    s = image_server
    rows = ["Product Number\tImage URL"]
    for fmt in ("jpg", "png", "webp", "gif", "avif"):
        rows.append(f"A-1\t{s.url(f'/img/a.{fmt}', host=1)}")
    rows += [
        f"B_2\t{s.url('/same/1')}",
        f"B_2\t{s.url('/same/2', host=2)}",  # same bytes, later position: duplicate
        f"C\t{s.url('/status/404')}",
        f"C\t{s.url('/flaky/c1?fails=2')}",
        f"C\t{s.url('/html-as-jpeg')}",
    ]
    services = make_services(tmp_path)
    job_id = run_job(services, "\r\n".join(rows))

    summary = jobs.job_summary(services.db, job_id)
    assert summary.job.status == "completed"
    assert summary.counts.as_dict() == {
        "queued": 0,
        "downloading": 0,
        "done": 7,
        "duplicate": 1,
        "failed": 2,
        "skipped": 0,
    }
    manifest = {(r.product, r.position): r for r in jobs.manifest_rows(services.db, job_id)}
    assert [manifest[("A-1", i)].format for i in range(1, 6)] == [
        "jpg",
        "png",
        "webp",
        "gif",
        "avif",
    ]
    assert manifest[("A-1", 2)].file == "A-1_2.png"
    assert manifest[("A-1", 1)].sha256 == hashlib.sha256(image_bytes("a", "jpg")).hexdigest()
    assert manifest[("B_2", 2)].status == "duplicate"
    assert manifest[("B_2", 2)].duplicate_of == "B_2_1.jpg"
    assert manifest[("C", 1)].http_status == 404 and manifest[("C", 1)].attempts == 1
    assert manifest[("C", 2)].status == "done" and manifest[("C", 2)].attempts == 3
    assert "not_an_image" in (manifest[("C", 3)].error or "")

    # the stored files are exactly the done images, and the ZIP matches the manifest
    stored = sorted(p.name for p in (tmp_path / "media" / "jobs").rglob("*.*"))
    assert len(stored) == 7
    archive = zipfile.ZipFile(
        io.BytesIO(b"".join(jobs.job_zip(services.db, services.storage, job_id)))
    )
    for row in manifest.values():
        if row.status == "done":
            data = archive.read(f"{row.product}/{row.file}")
            assert hashlib.sha256(data).hexdigest() == row.sha256
    assert not list((tmp_path / "media" / ".tmp").glob("*"))  # no temp files left


def test_per_host_concurrency_holds_through_the_engine(
    tmp_path: Path, image_server: ImageServer
) -> None:
    s = image_server
    rows = [f"P{i % 10}\t{s.url(f'/slow/0.05/{i}', host=i % 2)}" for i in range(80)]
    services = make_services(tmp_path, max_global_concurrency=16, max_per_host_concurrency=3)
    job_id = run_job(services, "\n".join(rows))
    assert jobs.job_counts(services.db, job_id).done == 80
    assert s.peak_concurrency(0) <= 3 and s.peak_concurrency(1) <= 3
    assert s.peak_concurrency(0) >= 2  # the limit was actually reached, not trivially held


def test_cancel_skips_queued_images_and_retry_requeues_them(
    tmp_path: Path, image_server: ImageServer
) -> None:
    s = image_server
    services = make_services(tmp_path)
    job = jobs.create_job(
        services.db, parse_text("\n".join(f"P\t{s.url(f'/img/{i}.jpg')}" for i in range(5)))
    )
    assert jobs.cancel_job(services.db, job.id)
    counts = jobs.job_counts(services.db, job.id)
    assert counts.skipped == 5 and jobs.get_job(services.db, job.id).status == "cancelled"
    assert jobs.retry_failed(services.db, job.id) == 5
    engine = Engine(services.db, services.storage, services.settings, job_id=job.id, share=1.0)
    anyio.run(lambda: engine.run(until_idle=True))
    assert jobs.job_counts(services.db, job.id).done == 5
    assert jobs.get_job(services.db, job.id).status == "completed"


def test_a_paused_job_is_not_worked_on_until_resumed(
    tmp_path: Path, image_server: ImageServer
) -> None:
    s = image_server
    services = make_services(tmp_path)
    job = jobs.create_job(services.db, parse_text(f"P\t{s.url('/img/x.jpg')}"))
    jobs.pause_job(services.db, job.id)
    engine = Engine(services.db, services.storage, services.settings, job_id=job.id, share=1.0)
    anyio.run(lambda: engine.run(until_idle=True))
    assert s.count() == 0 and jobs.job_counts(services.db, job.id).queued == 1
    jobs.resume_job(services.db, job.id)
    engine = Engine(services.db, services.storage, services.settings, job_id=job.id, share=1.0)
    anyio.run(lambda: engine.run(until_idle=True))
    assert jobs.job_counts(services.db, job.id).done == 1


def test_download_qps_is_honoured(tmp_path: Path, image_server: ImageServer) -> None:
    s = image_server
    qps = 10
    services = make_services(tmp_path)
    services.settings.download_qps = qps
    run_job(services, "\n".join(f"P\t{s.url(f'/img/q{i}.jpg', host=i % 3)}" for i in range(25)))
    starts = sorted(r.start for r in s.requests)
    assert len(starts) == 25
    # 25 requests paced at 10/s span at least 2.4 s; a burst would finish far sooner
    assert starts[-1] - starts[0] >= (len(starts) - 1) / qps * 0.9
    # no window of one second holds much more than qps (server-side timing jitter allowed)
    for i, t in enumerate(starts):
        assert sum(1 for u in starts[i:] if u - t < 1.0) <= qps + 3


def test_download_tasks_cancel_all_ends_every_running_download() -> None:
    """The engine's downloads are plain asyncio tasks: `cancel_all` cancels the running ones
    and returns only once they have ended (their leases are released after it)."""
    ended: list[str] = []

    async def download(name: str) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            ended.append(name)

    async def main() -> None:
        tasks = DownloadTasks()
        tasks.start(download("a"))
        tasks.start(download("b"))
        await asyncio.sleep(0)
        await tasks.cancel_all()
        assert sorted(ended) == ["a", "b"]
        await tasks.cancel_all()  # nothing left: returns at once

    asyncio.run(main())
