"""An engine never publishes a file for an image whose lease it lost (leases.LeaseBook)."""

from __future__ import annotations

import hashlib
import signal
import sys
import time
from pathlib import Path

from downloader import queue, worker_registry
from downloader.leases import LeaseBook, Renewal
from downloader.models import ImageStatus
from downloader.queue import Claim, Result
from downloader.storage import image_key
from tests.support.imageserver import ImageServer, Reply, image_bytes
from tests.test_cli import Cli, last_json, write_input
from tests.test_crash import in_process_services, spawn, sql, wait_until

LEASE = 30.0


def claim(image_id: int, leased_until: float) -> Claim:
    return Claim(image_id, "job", 1, image_id, "http://127.0.0.2/a.jpg", 0, leased_until)


def test_a_fresh_claim_is_safe_and_one_near_its_end_is_not() -> None:
    book, now = LeaseBook(LEASE), 1000.0
    assert book.safe(claim(1, now + LEASE), now)
    assert book.safe(claim(1, now + LEASE * 0.4), now)
    assert not book.safe(claim(1, now + LEASE * 0.3), now)  # within a third of a lease
    assert not book.safe(claim(1, now - 1), now)  # expired


def test_a_later_heartbeat_extends_the_leases_it_found() -> None:
    book, now = LeaseBook(LEASE), 1000.0
    old = claim(1, now + 5)  # claimed long ago
    book.renewed(Renewal(until=now + LEASE, image_ids=frozenset({1})))
    assert book.safe(old, now)


def test_a_later_heartbeat_that_did_not_find_the_image_makes_it_unsafe() -> None:
    book, now = LeaseBook(LEASE), 1000.0
    taken = claim(2, now + LEASE - 1)  # looks fresh, but the heartbeat after it missed it
    book.renewed(Renewal(until=now + LEASE, image_ids=frozenset({1})))
    assert not book.safe(taken, now)


def test_a_heartbeat_older_than_the_claim_says_nothing_about_it() -> None:
    book, now = LeaseBook(LEASE), 1000.0
    book.renewed(Renewal(until=now + 1, image_ids=frozenset()))
    assert book.safe(claim(3, now + LEASE), now)


def test_a_worker_stopped_past_its_lease_leaves_the_new_owners_file_alone(
    tmp_path: Path, image_server: ImageServer
) -> None:
    """A real worker process is SIGSTOPped mid-download until its lease runs out; another
    worker takes the image over, stores different bytes (the picture changed on the site)
    and records them. Resumed, the stopped worker finishes its download: it must neither
    overwrite the file nor have its result recorded."""
    s = image_server
    s.add_route(r"/slow\.jpg", lambda req: Reply.image("slow", delay=1.0))
    cli = Cli(tmp_path)
    src = write_input(tmp_path / "in.csv", [("P1", s.url("/slow.jpg"))])
    job_id = str(last_json(cli("submit", str(src)).stdout)["job_id"])
    db_path = cli.db_path
    log = tmp_path / "worker.log"
    args = [sys.executable, "-m", "downloader", "worker", "--until-idle"]
    worker = spawn(cli, args, log, WORKER_LEASE_SECONDS="1")
    try:
        # the request is out: the worker is mid-download
        wait_until(lambda: s.count("/slow.jpg") > 0, 30, worker, log)
        worker.send_signal(signal.SIGSTOP)
        time.sleep(2.5)  # past its lease (1 s) and past being counted dead (2 leases)

        services = in_process_services(tmp_path)
        worker_registry.reap_dead_workers(services.db, stale_after=2.0)
        (item,) = queue.claim(services.db, "other-worker", 10, 60, job_id=job_id)
        other = image_bytes("other", "jpg")
        key = image_key(job_id, item.product_id, item.position, "jpg")
        services.storage.put_bytes(other, key)
        report = queue.record_results(
            services.db,
            "other-worker",
            [
                Result(
                    image_id=item.image_id,
                    status=ImageStatus.DONE,
                    attempts=1,
                    sha256=hashlib.sha256(other).hexdigest(),
                    size_bytes=len(other),
                    format="jpg",
                    width=64,
                    height=48,
                    storage_key=key,
                )
            ],
        )
        assert report.written == 1
    finally:
        worker.send_signal(signal.SIGCONT)
    assert worker.wait(timeout=60) == 0, log.read_text()

    assert s.count("/slow.jpg") == 1  # the stopped worker did finish its own download
    assert services.storage.read_bytes(key) == other
    ((status, sha, size),) = sql(db_path, "SELECT status, sha256, size_bytes FROM image")
    assert (status, sha, size) == ("done", hashlib.sha256(other).hexdigest(), len(other))
    assert "lease on image" in log.read_text()
