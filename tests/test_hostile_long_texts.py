"""Texts longer than their column (issue 18): a 1,000-digit spelling of a loopback address,
a server's 600-character reason phrase, and a result the database refuses outright.

Every case runs on a real SQLite file and on the real PostgreSQL server (its own database,
dropped afterwards): PostgreSQL refuses a VARCHAR value that is too long, SQLite stores it.
Today's failure mode on PostgreSQL was an engine that died on its result batch, and again
after every restart (the row was re-queued).
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from sqlalchemy import select

from downloader import jobs, queue
from downloader.db import Database, open_database
from downloader.engine import Engine
from downloader.errors import excerpt
from downloader.guard import Guard, ResolveResult, vet_resolved
from downloader.inputs import parse_text
from downloader.models import IMAGE, ImageStatus
from downloader.queue import Result
from downloader.services import build_services
from downloader.settings import load_settings
from tests.support import pg
from tests.support.imageserver import ImageServer

# A thousand digits that inet_aton reads as 127.0.0.1 (octal 0177 with 997 leading zeros).
LOOPBACK_1000_DIGITS = "0" * 997 + "177.0.0.1"
LONG_REASON = ("Not Found because " * 40)[:600]  # 600 characters of a status line's reason
REASON_HOST = "127.0.0.5"  # the raw server that answers with the long reason phrase

# The column lengths, from the schema itself.
STRING_LIMITS: dict[str, int] = {
    column.name: length for column in IMAGE.columns if (length := getattr(column.type, "length", 0))
}
ERROR_LIMIT = STRING_LIMITS["error"]


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'app.db'}"
        return
    pg.require_server()
    name = pg.create_database()
    try:
        yield pg.database_url(name)
    finally:
        pg.drop_database(name)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = open_database(database_url)
    try:
        yield database
    finally:
        database.dispose()


class _LongReasonHandler(socketserver.BaseRequestHandler):
    """Reads a request head and answers `404 <600 characters>` with an empty body, or
    `499 <600 characters>` for a path under /odd (a status without a standard phrase, whose
    reason the fetcher quotes)."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                return
            head += chunk
        status = 499 if b" /odd" in head.split(b"\r\n", 1)[0] else 404
        answer = f"HTTP/1.1 {status} {LONG_REASON}\r\nContent-Length: 0\r\nConnection: close\r\n"
        sock.sendall(answer.encode() + b"\r\n")


@pytest.fixture
def long_reason_server() -> Iterator[str]:
    """A raw HTTP server on 127.0.0.5 whose every answer has a 600-character reason phrase;
    yields its base URL."""
    server = socketserver.ThreadingTCPServer((REASON_HOST, 0), _LongReasonHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{REASON_HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def image_rows(db: Database, job_id: str) -> list[dict[str, object]]:
    with db.read() as session:
        rows = session.execute(
            select(IMAGE).where(IMAGE.c.job_id == job_id).order_by(IMAGE.c.id)
        ).all()
    return [dict(row._mapping) for row in rows]


def assert_strings_fit(rows: list[dict[str, object]]) -> None:
    for row in rows:
        for name, limit in STRING_LIMITS.items():
            value = row[name]
            assert value is None or len(str(value)) <= limit, (name, len(str(value)))


def test_long_host_spelling_and_long_reason_phrase_fail_cleanly_end_to_end(
    tmp_path: Path, database_url: str, image_server: ImageServer, long_reason_server: str
) -> None:
    settings = load_settings(
        database_url=database_url,
        media_root=str(tmp_path / "media"),
        # the test servers only: 127.0.0.1 (the long spelling) stays blocked
        allowed_private_networks=[f"127.0.0.{n}/32" for n in (2, 3, 4, 5)],
        download_qps=0,
        backoff_base=0.05,
    )
    services = build_services(settings)
    try:
        port = image_server.host(0).rsplit(":", 1)[1]
        blocked = f"http://{LOOPBACK_1000_DIGITS}:{port}/img/never.jpg"
        text = "\n".join(
            [
                "Product Number\tImage URL",
                f"P1\t{image_server.url('/img/a.jpg')}",
                f"P1\t{blocked}",
                f"P2\t{image_server.url('/img/b.png', host=1)}",
                f"P2\t{long_reason_server}/missing.jpg",
                f"P2\t{long_reason_server}/odd/status.jpg",
            ]
        )
        job = jobs.create_job(services.db, parse_text(text))
        assert job.images == 5
        engine = Engine(services.db, services.storage, services.settings, job_id=job.id, share=1.0)

        async def main() -> None:
            with anyio.fail_after(60):
                await engine.run(until_idle=True)

        anyio.run(main)  # the engine survives its result batches

        assert engine.stats.finished == 5 and engine.stats.failed == 3
        summary = jobs.job_summary(services.db, job.id)
        assert summary.job.status == "completed"
        assert summary.counts.as_dict()["done"] == 2
        assert summary.counts.as_dict()["failed"] == 3
        rows = {row["url"]: row for row in image_rows(services.db, job.id)}
        assert_strings_fit(list(rows.values()))

        refused = rows[blocked]
        assert refused["status"] == ImageStatus.FAILED
        assert refused["error_code"] == "blocked_address"
        error = str(refused["error"])
        # the spelling is quoted in part, the address it means in full
        assert "127.0.0.1" in error and "loopback" in error
        assert len(error) <= 250, error

        answered = rows[f"{long_reason_server}/missing.jpg"]
        assert answered["status"] == ImageStatus.FAILED
        assert answered["error_code"] == "http_404"
        assert answered["http_status"] == 404
        assert str(answered["error"]).startswith("The server answered 404")
        assert len(str(answered["error"])) <= ERROR_LIMIT

        odd = rows[f"{long_reason_server}/odd/status.jpg"]
        assert odd["status"] == ImageStatus.FAILED
        assert odd["error_code"] == "http_499"
        assert odd["http_status"] == 499
        assert str(odd["error"]).startswith("The server answered 499 Not Found because")
        assert len(str(odd["error"])) <= ERROR_LIMIT
        assert image_server.count("/img/never.jpg") == 0  # refused before connecting
    finally:
        services.db.dispose()


def claimed_job(db: Database, count: int) -> tuple[str, list[int]]:
    """A job of one product with `count` images, all claimed by worker "w"; its id and the
    image ids in position order."""
    text = "Product Number\tImage URL\n" + "\n".join(
        f"P\thttp://203.0.113.9/{i}.jpg" for i in range(count)
    )
    job = jobs.create_job(db, parse_text(text))
    claims = queue.claim(db, "w", count, 600, job_id=job.id)
    assert len(claims) == count
    return job.id, [c.image_id for c in claims]


def done(image_id: int, **changes: object) -> Result:
    result = Result(
        image_id=image_id,
        status=ImageStatus.DONE,
        attempts=1,
        http_status=200,
        sha256=f"{image_id:064x}",
        crc32=1,
        size_bytes=10,
        format="jpg",
        width=1,
        height=1,
        storage_key=f"jobs/x/{image_id}.jpg",
    )
    for name, value in changes.items():
        setattr(result, name, value)
    return result


def test_every_string_a_result_carries_is_cut_to_its_column(db: Database) -> None:
    job_id, ids = claimed_job(db, 2)
    failed = Result(
        image_id=ids[0],
        status=ImageStatus.FAILED,
        attempts=1,
        error_code="http_" + "9" * 200,
        error="The server answered 404 " + "x" * 5000 + "\x00 and a NUL.",
        http_status=404,
    )
    odd = done(ids[1], format="jpeg" * 10, storage_key="k/" * 400, sha256="f" * 100)
    report = queue.record_results(db, "w", [failed, odd])
    assert report.written == 2

    rows = {row["id"]: row for row in image_rows(db, job_id)}
    assert_strings_fit(list(rows.values()))
    error = str(rows[ids[0]]["error"])
    assert len(error) == ERROR_LIMIT and error.startswith("The server answered 404 x")
    assert error.endswith("…") and "\x00" not in error
    assert len(str(rows[ids[0]]["error_code"])) == STRING_LIMITS["error_code"]
    assert rows[ids[1]]["status"] == ImageStatus.DONE


def test_a_batch_the_database_refuses_is_written_row_by_row(db: Database) -> None:
    job_id, ids = claimed_job(db, 4)
    # An INTEGER no database column holds: SQLite's driver and PostgreSQL both refuse it,
    # and no cutting applies to numbers.
    bad = done(ids[2], width=2**70)
    results = [done(ids[0]), done(ids[1]), bad, done(ids[3], sha256=f"{ids[0]:064x}")]
    report = queue.record_results(db, "w", results)

    assert report.written == 4 and report.stale == 0
    rows = {row["id"]: row for row in image_rows(db, job_id)}
    assert rows[ids[0]]["status"] == ImageStatus.DONE
    assert rows[ids[1]]["status"] == ImageStatus.DONE
    assert rows[ids[0]]["width"] == 1
    broken = rows[ids[2]]
    assert broken["status"] == ImageStatus.FAILED
    assert broken["error_code"] == "internal_error"
    assert broken["attempts"] == 1
    assert broken["width"] is None and broken["storage_key"] is None
    assert 0 < len(str(broken["error"])) <= 120
    assert broken["lease_owner"] is None
    # the last image repeats the first one's bytes: the row-by-row writes still settle it
    # as a duplicate. Its file and the refused row's are handed back for deletion (no row
    # refers to either any more).
    assert rows[ids[3]]["status"] == ImageStatus.DUPLICATE
    assert rows[ids[3]]["duplicate_of_id"] == ids[0]
    assert sorted(report.duplicate_keys) == sorted(f"jobs/x/{i}.jpg" for i in ids[2:])
    assert jobs.job_summary(db, job_id).job.status == "completed"
    assert sorted(report.completed_jobs) == [job_id]
    assert not any(row["status"] in ("queued", "downloading") for row in rows.values())


def test_a_refused_row_is_not_retried_forever(db: Database) -> None:
    """Recording the same refused result again leaves the row failed: nothing re-queues it."""
    job_id, ids = claimed_job(db, 1)
    queue.record_results(db, "w", [done(ids[0], height=-(2**70))])
    assert not queue.has_claimable_work(db, job_id)
    assert queue.claim(db, "w2", 10, 600, job_id=job_id) == []
    (row,) = image_rows(db, job_id)
    assert row["status"] == ImageStatus.FAILED and row["error_code"] == "internal_error"


def test_excerpt_cuts_with_an_ellipsis() -> None:
    assert excerpt("short") == "short"
    assert excerpt("x" * 100) == "x" * 100
    cut = excerpt("x" * 101)
    assert len(cut) == 100 and cut.endswith("…")
    assert excerpt("abcdef", limit=4) == "abc…"
    assert len(excerpt("y" * 10_000, limit=500)) == 500


def test_guard_messages_quote_at_most_100_characters_of_a_host() -> None:
    guard = Guard(load_settings(url_denylist=["*.example"], url_allowlist=["ok.example", "*.ok"]))
    long_name = "a" * 1000 + ".example"
    reasons: list[str | None] = [
        guard.check_host(LOOPBACK_1000_DIGITS),
        guard.check_host("a" * 1000 + ".localhost"),
        guard.check_host(long_name),
        guard.check_host("b" * 1000 + ".org"),
        guard.check_address("c" * 1000),
    ]
    try:
        vet_resolved(
            guard,
            "d" * 1000,
            [ResolveResult(hostname="d", host="127.0.0.1", port=80, family=2, proto=6, flags=0)],
        )
    except OSError as exc:
        reasons.append(str(exc))
    refusal = guard.vet_url(f"http://{LOOPBACK_1000_DIGITS}/x.jpg")
    assert refusal is not None
    reasons.append(refusal.reason)
    assert len(reasons) == 7
    for reason in reasons:
        assert reason is not None
        assert len(reason) <= 100 + 120, reason
    first = str(reasons[0])
    assert "127.0.0.1" in first and "…" in first
