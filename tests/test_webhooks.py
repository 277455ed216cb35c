"""Job webhooks (issue 25), engine side: one delivery per ending across engines, backoff,
a new delivery when a job ends again, the guard on the target, no redirects followed."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import update

from downloader import jobs, webhooks
from downloader.db import Database
from downloader.inputs import parse_text
from downloader.models import JOB, JobStatus
from downloader.services import Services, build_services
from downloader.settings import load_settings

SECRET = "unit-test-webhook-secret"


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    built = build_services(
        load_settings(
            database_url=f"sqlite:///{tmp_path / 'app.db'}",
            media_root=str(tmp_path / "media"),
            webhook_secret=SECRET,
            webhook_allowlist=["127.0.0.2/32"],
        )
    )
    yield built
    built.db.dispose()


def ended_job(services: Services, url: str = "http://127.0.0.2:9/hook") -> str:
    parsed = parse_text("Product\tURL\nP\thttps://images.example.invalid/p.jpg")
    job = jobs.create_job(services.db, parsed, owner="ann@example.com")
    webhooks.set_callback(services.db, job.id, url)
    with services.db.write() as session:
        session.execute(
            update(JOB)
            .where(JOB.c.id == job.id)
            .values(status=JobStatus.COMPLETED, finished_at=time.time())
        )
    return job.id


def test_one_delivery_per_ending_whatever_the_number_of_engines(
    services: Services, tmp_path: Path
) -> None:
    job_id = ended_job(services)
    engines = [Database(f"sqlite:///{tmp_path / 'app.db'}") for _ in range(6)]
    start = threading.Barrier(len(engines))
    won: list[list[webhooks.Delivery]] = []

    def claim(db: Database) -> None:
        start.wait()
        won.append(webhooks.claim_due(db))

    threads = [threading.Thread(target=claim, args=(db,)) for db in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for db in engines:
        db.dispose()
    claimed = [d for batch in won for d in batch]
    assert [(d.job_id, d.attempts) for d in claimed] == [(job_id, 1)]
    assert webhooks.claim_due(services.db) == []  # claimed: nobody else sends it


def test_a_failed_attempt_backs_off_then_retries_and_a_new_ending_sends_again(
    services: Services,
) -> None:
    db = services.db
    job_id = ended_job(services)
    first = webhooks.claim_due(db)[0]
    webhooks.record(db, first, "The callback answered HTTP 503.")
    state = webhooks.state(db, job_id, "ann@example.com")
    assert state is not None and (state["status"], state["attempts"]) == ("pending", 1)
    assert webhooks.claim_due(db, now=time.time()) == []  # backing off
    second = webhooks.claim_due(db, now=time.time() + webhooks.RETRY_BASE + 0.5)
    assert [d.attempts for d in second] == [2]
    webhooks.record(db, second[0], None)
    assert webhooks.claim_due(db, now=time.time() + 3600) == []  # sent: once
    # failures retried, the job ends again: a new delivery, counted from 1
    with db.write() as session:
        session.execute(update(JOB).where(JOB.c.id == job_id).values(finished_at=time.time() + 10))
    again = webhooks.claim_due(db, now=time.time() + 20)
    assert [(d.job_id, d.attempts) for d in again] == [(job_id, 1)]
    # the URL is the owner's to see
    assert webhooks.state(db, job_id, "bob@example.com")["callback_url"] is None  # type: ignore[index]


def test_callback_targets_are_vetted_like_image_urls(services: Services) -> None:
    settings = services.settings
    assert webhooks.vet_callback(settings, "http://127.0.0.2:8080/hook") is None  # allowlisted
    assert webhooks.vet_callback(settings, "https://hooks.example.com/x") is None
    for refused in (
        "http://127.0.0.3/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/",
        "http://[::ffff:127.0.0.3]/",
        "file:///etc/passwd",
    ):
        assert webhooks.vet_callback(settings, refused), refused
    unsigned = settings.model_copy(update={"webhook_secret": None})
    assert "WEBHOOK_SECRET" in (webhooks.vet_callback(unsigned, "https://hooks.example.com") or "")


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[str, dict[str, str], bytes]]]]:
    """A loopback receiver on 127.0.0.2: /moved answers 302, anything else 204."""
    seen: list[tuple[str, dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(302 if self.path == "/moved" else 204)
            if self.path == "/moved":
                self.send_header("Location", "/landed")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.2:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_post_signs_the_body_and_never_follows_a_redirect(
    services: Services, receiver: tuple[str, list[tuple[str, dict[str, str], bytes]]]
) -> None:
    base, seen = receiver
    settings = services.settings
    assert asyncio.run(webhooks.post(settings, f"{base}/hook", b'{"id":"x"}')) == (None, False)
    path, headers, body = seen[0]
    expected = "sha256=" + hmac.new(SECRET.encode(), b'{"id":"x"}', hashlib.sha256).hexdigest()
    assert (path, body, headers["x-signature-256"]) == ("/hook", b'{"id":"x"}', expected)
    assert headers["content-type"] == "application/json"

    error, retry = asyncio.run(webhooks.post(settings, f"{base}/moved", b"{}"))
    assert error is not None and "redirect" in error and retry is False
    assert [p for p, _, _ in seen] == ["/hook", "/moved"]  # /landed was never asked

    # without the allowlist the same receiver is refused before any connection
    closed = settings.model_copy(update={"webhook_allowlist": []})
    error, retry = asyncio.run(webhooks.post(closed, f"{base}/hook", b"{}"))
    assert error is not None and "127.0.0.2" in error and retry is False
    assert len(seen) == 2
