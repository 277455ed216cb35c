"""The durable queue on the real PostgreSQL server: migrations, SKIP LOCKED claims under
real concurrency, leases, and result settlement by concurrent workers.

Each test runs in its own database (tests/support/pg.py).
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlmodel import col

from downloader import queue, worker_registry
from downloader.db import Database, normalize_url, open_database
from downloader.models import Image, ImageStatus, Job, JobStatus, Product, Worker
from downloader.queue import Result
from tests.support import pg

pytestmark = pytest.mark.postgres


def add_job(db: Database, products: dict[str, int], hosts: int = 1) -> str:
    with db.write() as session:
        job = Job(status=JobStatus.QUEUED, products=len(products), images=sum(products.values()))
        session.add(job)
        session.flush()
        n = 0
        for p_index, (number, count) in enumerate(products.items()):
            product = Product(job_id=job.id, number=number, position=p_index + 1, image_count=count)
            session.add(product)
            session.flush()
            assert product.id is not None
            for pos in range(1, count + 1):
                host = f"127.0.0.{2 + n % hosts}"
                n += 1
                session.add(
                    Image(
                        job_id=job.id,
                        product_id=product.id,
                        position=pos,
                        url=f"http://{host}/{number}/{pos}.jpg",
                        host=host,
                    )
                )
        return job.id


def done(image_id: int, sha: str | None = None) -> Result:
    return Result(
        image_id=image_id,
        status=ImageStatus.DONE,
        attempts=1,
        sha256=sha or f"{image_id:064d}",
        size_bytes=10,
        format="jpg",
        width=1,
        height=1,
        storage_key=f"k/{image_id}",
    )


def status_counts(db: Database, job_id: str) -> Counter[str]:
    with db.read() as session:
        return Counter(
            session.execute(select(col(Image.status)).where(col(Image.job_id) == job_id)).scalars()
        )


def job_status(db: Database, job_id: str) -> str:
    with db.read() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.status


# ---------------------------------------------------------------- schema


def test_plain_postgresql_url_uses_psycopg3(pg_db: Database) -> None:
    assert normalize_url("postgresql://u@127.0.0.1/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@127.0.0.1/db").drivername == "postgresql+psycopg"
    assert pg_db.is_postgres and pg_db.engine.dialect.driver == "psycopg"


def test_same_migrations_as_sqlite_and_idempotent(pg_url: str) -> None:
    db = open_database(pg_url)
    db.dispose()
    db = open_database(pg_url)  # second start: nothing to do
    try:
        with db.engine.connect() as conn:
            version = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one()
            tables = set(
                conn.exec_driver_sql(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                ).scalars()
            )
        assert version == "0007"
        assert {"job", "product", "image", "rejected_row", "worker"} <= tables
    finally:
        db.dispose()


def _migrate(url: str) -> None:
    open_database(url).dispose()


def test_many_processes_starting_at_once_migrate_once(pg_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_migrate, args=(pg_url,)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    db = open_database(pg_url, migrate=False)
    try:
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar_one() == 1
    finally:
        db.dispose()


# ---------------------------------------------------------------- claiming


def test_claim_skips_rows_locked_by_another_transaction(pg_db: Database) -> None:
    """FOR UPDATE SKIP LOCKED: a claim neither waits for nor takes rows another worker's
    claim transaction holds."""
    add_job(pg_db, {"P1": 10})
    with pg_db.engine.connect() as other:
        locked = list(
            other.execute(text("SELECT id FROM image ORDER BY id LIMIT 4 FOR UPDATE")).scalars()
        )
        started = time.monotonic()
        claims = queue.claim(pg_db, "w1", 100, 30)
        assert time.monotonic() - started < 5  # did not block on the locked rows
        other.rollback()
    assert len(claims) == 6
    assert not {c.image_id for c in claims} & set(locked)
    assert len(queue.claim(pg_db, "w2", 100, 30)) == 4


def _claim_until_empty(url: str, name: str, batch: int, out: Any) -> None:
    db = open_database(url, migrate=False)
    got: list[int] = []
    try:
        while True:
            claims = queue.claim(db, name, batch, 30)
            if not claims:
                break
            got.extend(c.image_id for c in claims)
    finally:
        db.dispose()
        out.put((name, got))


def test_concurrent_processes_and_threads_never_claim_an_image_twice(pg_db: Database) -> None:
    job_id = add_job(pg_db, {f"P{i}": 20 for i in range(100)})  # 2,000 images
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    url = pg_db.url.render_as_string(hide_password=False)
    procs = [
        ctx.Process(target=_claim_until_empty, args=(url, f"proc{i}", 9 + i, out)) for i in range(4)
    ]
    for p in procs:
        p.start()
    # ...and threads in this process claiming at the same time
    thread_results: dict[str, list[int]] = {}

    def in_thread(name: str) -> None:
        got: list[int] = []
        while claims := queue.claim(pg_db, name, 5, 30):
            got.extend(c.image_id for c in claims)
        thread_results[name] = got

    threads = [threading.Thread(target=in_thread, args=(f"thread{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for t in threads:
        t.join(120)
    for p in procs:
        p.join(30)
    results.update(thread_results)
    all_ids = [i for ids in results.values() for i in ids]
    assert len(all_ids) == 2000
    assert len(set(all_ids)) == 2000, "an image was claimed twice"
    assert sum(1 for ids in results.values() if ids) >= 2  # they really competed
    # every claim is recorded under the worker that got it
    with pg_db.read() as session:
        owners: dict[int, str] = {
            i: o for i, o in session.execute(select(col(Image.id), col(Image.lease_owner)))
        }
    for name, ids in results.items():
        assert all(owners[i] == name for i in ids)
    assert status_counts(pg_db, job_id) == Counter({"downloading": 2000})


def test_expired_lease_of_a_worker_on_another_machine_is_reclaimed(pg_db: Database) -> None:
    job_id = add_job(pg_db, {"P1": 3})
    with pg_db.write() as session:
        session.add(Worker(id="elsewhere:1:worker:x", hostname="another-machine", pid=1))
    first = queue.claim(pg_db, "elsewhere:1:worker:x", 10, lease_seconds=1)
    assert len(first) == 3
    # its pid means nothing on this host: nothing is returned before the lease expires
    worker_registry.reap_dead_workers(pg_db, stale_after=3600)
    assert status_counts(pg_db, job_id) == Counter({"downloading": 3})
    time.sleep(1.2)
    worker_registry.reap_dead_workers(pg_db, stale_after=3600)
    again = queue.claim(pg_db, "live", 10, 30)
    assert sorted(c.image_id for c in again) == sorted(c.image_id for c in first)
    # the late results of the lost lease are fenced off
    report = queue.record_results(pg_db, "elsewhere:1:worker:x", [done(c.image_id) for c in first])
    assert report.written == 0 and report.stale == 3
    report = queue.record_results(pg_db, "live", [done(c.image_id) for c in again])
    assert report.written == 3 and report.completed_jobs == [job_id]


def test_silent_worker_is_reaped_and_heartbeat_keeps_leases(pg_db: Database) -> None:
    job_id = add_job(pg_db, {"P1": 4})
    worker_registry.register_worker(pg_db, "alive", "worker")
    with pg_db.write() as session:
        session.add(
            Worker(id="silent", hostname="another-machine", pid=1, heartbeat_at=time.time() - 600)
        )
    queue.claim(pg_db, "silent", 2, lease_seconds=3600)
    queue.claim(pg_db, "alive", 2, lease_seconds=1)
    worker_registry.heartbeat(pg_db, "alive", 600, in_flight=2, done_total=0)
    time.sleep(1.1)
    worker_registry.reap_dead_workers(pg_db, stale_after=60)
    assert status_counts(pg_db, job_id) == Counter({"queued": 2, "downloading": 2})
    with pg_db.read() as session:
        assert session.get(Worker, "silent") is None
        owners = set(
            session.execute(
                select(col(Image.lease_owner)).where(col(Image.status) == ImageStatus.DOWNLOADING)
            ).scalars()
        )
    assert owners == {"alive"}
    assert worker_registry.live_worker_count(pg_db, stale_after=60) == 1


# ---------------------------------------------------------------- results


def test_concurrent_workers_finishing_the_same_products_settle_them(pg_db: Database) -> None:
    """Two workers record the last images of the same products at the same moment: the
    products still get their duplicate verdicts and the job completes (on PostgreSQL each
    transaction does not see the other's uncommitted rows, so settling must serialise)."""
    rounds = 40
    for _ in range(rounds):
        job_id = add_job(pg_db, {f"P{i}": 2 for i in range(5)})
        claims = queue.claim(pg_db, "a", 100, 30, job_id=job_id)
        # worker a keeps position 1 of each product, worker b gets position 2
        second = [c for c in claims if c.position == 2]
        with pg_db.write() as session:
            session.execute(
                update(Image)
                .where(col(Image.id).in_([c.image_id for c in second]))
                .values(lease_owner="b")
            )
        # same bytes at positions 1 and 2: position 2 must become the duplicate
        batches = {
            "a": [done(c.image_id, sha="f" * 64) for c in claims if c.position == 1],
            "b": [done(c.image_id, sha="f" * 64) for c in second],
        }
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def record(name: str, batch: list[Result]) -> None:
            try:
                barrier.wait()
                queue.record_results(pg_db, name, batch)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=record, args=item) for item in batches.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert status_counts(pg_db, job_id) == Counter({"done": 5, "duplicate": 5})
        assert job_status(pg_db, job_id) == JobStatus.COMPLETED


def test_heartbeat_and_result_batches_of_one_worker_do_not_deadlock(pg_db: Database) -> None:
    """The engine renews leases and writes results from different threads at once."""
    job_id = add_job(pg_db, {f"P{i}": 10 for i in range(100)})
    worker_registry.register_worker(pg_db, "w", "worker")
    claims = queue.claim(pg_db, "w", 1000, 30)
    stop = threading.Event()
    errors: list[BaseException] = []

    def beat() -> None:
        try:
            while not stop.is_set():
                worker_registry.heartbeat(pg_db, "w", 30, in_flight=1, done_total=0)
        except BaseException as exc:
            errors.append(exc)

    beater = threading.Thread(target=beat)
    beater.start()
    try:
        # results arrive in completion order, not id order
        order = sorted(claims, key=lambda c: (c.image_id * 7919) % 1000)
        for start in range(0, len(order), 50):
            queue.record_results(pg_db, "w", [done(c.image_id) for c in order[start : start + 50]])
    finally:
        stop.set()
        beater.join()
    assert errors == []
    assert status_counts(pg_db, job_id) == Counter({"done": 1000})


def test_without_a_server_tests_skip_visibly_or_fail_when_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pg, "PG_PORT", 1)  # nothing listens on 127.0.0.1:1
    pg.server_problem.cache_clear()
    try:
        monkeypatch.delenv("REQUIRE_POSTGRES", raising=False)
        with pytest.raises(pytest.skip.Exception, match=r"not answering on 127\.0\.0\.1:1"):
            pg.require_server()
        monkeypatch.setenv("REQUIRE_POSTGRES", "1")
        with pytest.raises(pytest.fail.Exception, match="REQUIRE_POSTGRES=1"):
            pg.require_server()
    finally:
        pg.server_problem.cache_clear()
