"""The durable work queue on a real SQLite file: claims, leases, fencing, duplicates."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select, update

from downloader import queue, worker_registry
from downloader.db import Database, newest_revision, open_database
from downloader.models import IMAGE, Image, ImageStatus, Job, JobStatus, Product, Worker
from downloader.queue import Result


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return open_database(f"sqlite:///{tmp_path / 'app.db'}")


def add_job(db: Database, products: dict[str, int], status: str = JobStatus.QUEUED) -> str:
    with db.write() as session:
        job = Job(status=status, products=len(products), images=sum(products.values()))
        session.add(job)
        session.flush()
        for p_index, (number, count) in enumerate(products.items()):
            product = Product(job_id=job.id, number=number, position=p_index + 1, image_count=count)
            session.add(product)
            session.flush()
            assert product.id is not None
            for pos in range(1, count + 1):
                session.add(
                    Image(
                        job_id=job.id,
                        product_id=product.id,
                        position=pos,
                        url=f"http://127.0.0.2/{number}/{pos}.jpg",
                        host="127.0.0.2",
                    )
                )
        return job.id


def statuses(db: Database, job_id: str) -> list[str]:
    with db.read() as session:
        return list(
            session.execute(
                select(IMAGE.c.status).where(IMAGE.c.job_id == job_id).order_by(IMAGE.c.id)
            ).scalars()
        )


def done(image_id: int, sha: str = "a" * 64, key: str | None = None) -> Result:
    return Result(
        image_id=image_id,
        status=ImageStatus.DONE,
        attempts=1,
        sha256=sha,
        size_bytes=10,
        format="jpg",
        width=1,
        height=1,
        storage_key=key or f"k/{image_id}",
    )


def test_schema_is_created_by_migrations_and_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    open_database(url)
    db = open_database(url)  # second start: nothing to do, no error
    with db.engine.connect() as conn:
        version = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one()
    assert version == newest_revision() == "0007"


def test_a_database_from_before_crc32_upgrades_and_keeps_its_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = Database(url)
    old.migrate("0001")
    with old.engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO job (id, name, source, status, created_at, products, images,"
            " rejected_rows, duplicates_removed, created_by, input_sha256)"
            " VALUES ('j1', 'old', 'paste', 'completed', 0, 1, 1, 0, 0, '', 'x')"
        )
    old.dispose()
    db = open_database(url)
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT name FROM job").scalar_one() == "old"
        columns = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(image)")}
    assert "crc32" in columns


def test_sqlite_runs_in_wal_mode(db: Database) -> None:
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_claims_are_leased_once_and_the_job_starts(db: Database) -> None:
    job_id = add_job(db, {"P1": 3, "P2": 2})
    first = queue.claim(db, "w1", 3, 30)
    second = queue.claim(db, "w2", 10, 30)
    assert [c.position for c in first] == [1, 2, 3]
    assert len(second) == 2
    assert not {c.image_id for c in first} & {c.image_id for c in second}
    assert queue.claim(db, "w3", 10, 30) == []
    with db.read() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == JobStatus.RUNNING and job.started_at


def test_paused_jobs_are_not_claimed(db: Database) -> None:
    add_job(db, {"P1": 2}, status=JobStatus.PAUSED)
    assert queue.claim(db, "w1", 10, 30) == []


def test_results_from_a_lost_lease_are_not_written(db: Database) -> None:
    job_id = add_job(db, {"P1": 1})
    (item,) = queue.claim(db, "w1", 10, 30)
    # w1's lease expires and w2 takes the image over
    with db.write() as session:
        session.execute(update(Image).values(lease_expires=time.time() - 1))
    worker_registry.reap_dead_workers(db, stale_after=60)
    (again,) = queue.claim(db, "w2", 10, 30)
    assert again.image_id == item.image_id
    report = queue.record_results(db, "w1", [done(item.image_id)])
    assert report.written == 0 and report.stale == 1
    assert statuses(db, job_id) == ["downloading"]
    report = queue.record_results(db, "w2", [done(item.image_id)])
    assert report.written == 1 and report.completed_jobs == [job_id]


def test_same_bytes_later_in_input_order_is_the_duplicate(db: Database) -> None:
    job_id = add_job(db, {"P1": 3, "P2": 1})
    claims = queue.claim(db, "w1", 10, 30)
    by_pos = {(c.product_id, c.position): c for c in claims}
    p1 = min(c.product_id for c in claims)
    # position 3 finishes first with the same bytes as position 1: 3 is still the duplicate
    queue.record_results(db, "w1", [done(by_pos[(p1, 3)].image_id, sha="x" * 64)])
    assert statuses(db, job_id)[2] == "done"  # product not finished yet: no verdict
    report = queue.record_results(
        db,
        "w1",
        [
            done(by_pos[(p1, 1)].image_id, sha="x" * 64),
            done(by_pos[(p1, 2)].image_id, sha="y" * 64),
        ],
    )
    assert statuses(db, job_id)[:3] == ["done", "done", "duplicate"]
    assert report.duplicate_keys == [f"k/{by_pos[(p1, 3)].image_id}"]
    with db.read() as session:
        dup = session.get(Image, by_pos[(p1, 3)].image_id)
        assert dup is not None
        assert dup.duplicate_of_id == by_pos[(p1, 1)].image_id and dup.storage_key is None
    # the same bytes in another product are not a duplicate
    other = next(c for c in claims if c.product_id != p1)
    queue.record_results(db, "w1", [done(other.image_id, sha="x" * 64)])
    assert statuses(db, job_id)[3] == "done"


def test_leases_of_a_dead_local_process_are_returned_at_once(db: Database) -> None:
    job_id = add_job(db, {"P1": 2})
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead_id = f"{os.uname().nodename}:{proc.pid}:run:abc"
    with db.write() as session:
        session.add(Worker(id=dead_id, hostname=socket.gethostname(), pid=proc.pid))
    queue.claim(db, dead_id, 10, 3600)  # a long lease that would otherwise strand the work
    assert statuses(db, job_id) == ["downloading", "downloading"]
    worker_registry.reap_dead_workers(db, stale_after=3600)
    assert statuses(db, job_id) == ["queued", "queued"]


def test_heartbeat_renews_leases(db: Database) -> None:
    add_job(db, {"P1": 1})
    worker_registry.register_worker(db, "w1", "worker")
    (item,) = queue.claim(db, "w1", 10, 1)
    assert time.time() < item.leased_until <= time.time() + 1
    renewal = worker_registry.heartbeat(db, "w1", 600, in_flight=1, done_total=0)
    assert renewal.image_ids == {item.image_id} and renewal.until > time.time() + 500
    worker_registry.reap_dead_workers(db, stale_after=600)
    with db.read() as session:
        image = session.execute(select(Image)).scalar_one()
        assert image.status == ImageStatus.DOWNLOADING and image.lease_expires > time.time() + 500


def test_heartbeat_reports_only_the_leases_still_held(db: Database) -> None:
    add_job(db, {"P1": 2})
    first, second = queue.claim(db, "w1", 10, 30)
    with db.write() as session:  # the second one's lease ran out and w2 took it over
        session.execute(update(Image).where(IMAGE.c.id == second.image_id).values(lease_owner="w2"))
    renewal = worker_registry.heartbeat(db, "w1", 30, in_flight=2, done_total=0)
    assert renewal.image_ids == {first.image_id}


def test_renew_lease_extends_only_a_lease_still_held(db: Database) -> None:
    add_job(db, {"P1": 2})
    mine, lost = queue.claim(db, "w1", 10, 1)
    with db.write() as session:
        session.execute(update(Image).where(IMAGE.c.id == lost.image_id).values(lease_owner="w2"))
    assert queue.renew_lease(db, "w1", mine.image_id, 600)
    assert not queue.renew_lease(db, "w1", lost.image_id, 600)
    with db.read() as session:
        expires = dict(session.execute(select(IMAGE.c.id, IMAGE.c.lease_expires)).all())
    assert expires[mine.image_id] > time.time() + 500
    assert expires[lost.image_id] < time.time() + 2
    queue.record_results(db, "w1", [done(mine.image_id)])
    assert not queue.renew_lease(db, "w1", mine.image_id, 600)  # settled: nothing to renew


def test_concurrent_writers_never_see_database_is_locked(db: Database) -> None:
    """Many threads claiming and recording at once: BEGIN IMMEDIATE queues them."""
    job_id = add_job(db, {f"P{i}": 5 for i in range(40)})
    errors: list[BaseException] = []
    finished: list[int] = []

    def worker(name: str) -> None:
        try:
            while True:
                claims = queue.claim(db, name, 7, 30)
                if not claims:
                    return
                queue.record_results(
                    db, name, [done(c.image_id, sha=f"{c.image_id:064d}") for c in claims]
                )
                finished.extend(c.image_id for c in claims)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(finished) == sorted(set(finished)) and len(finished) == 200
    assert set(statuses(db, job_id)) == {"done"}
    with db.read() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == JobStatus.COMPLETED
