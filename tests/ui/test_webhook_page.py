"""The job page's webhook line (issue 25): the delivery's state (pending, sent with its
attempts, failed with the error) for whoever may open the job; the callback URL, with its
secret-looking values masked, for the job's owner only. AppTest over the real app, the jobs
service and the real delivery bookkeeping (downloader.webhooks claim_due/record)."""

from __future__ import annotations

from downloader import jobs, webhooks
from downloader.identity import SINGLE_USER
from downloader.inputs import parse_text
from downloader.services import Services
from tests.ui.test_pages import AppFactory, no_exception

ROWS = "P1\thttps://img.example.invalid/a.jpg"
SECRET = "Zq8vN2rT5xK9mW3bY7cH4jL6"
TARGET = f"https://hooks.example.com/catalogue?token={SECRET}"


def _job(services: Services, owner: str) -> str:
    job = jobs.create_job(services.db, parse_text(ROWS), name="hooked", owner=owner)
    webhooks.set_callback(services.db, job.id, TARGET)
    return job.id


def _end_and_deliver(services: Services, job_id: str, error: str | None, times: int) -> None:
    """End the job, then claim and record `times` deliveries (the last one with `error`)."""
    jobs.cancel_job(services.db, job_id)
    for attempt in range(times):
        (delivery,) = webhooks.claim_due(services.db, now=1e12 + attempt * 1e4)
        last = attempt == times - 1
        webhooks.record(services.db, delivery, error if last else "HTTP 500", final=last)


def _captions(at: object) -> list[str]:
    from streamlit.testing.v1 import AppTest

    assert isinstance(at, AppTest)
    return [c.value.replace("\\", "").replace("\u2060", "") for c in at.caption]


def _webhook_lines(services: Services, app: AppFactory, job_id: str) -> list[str]:
    at = app("pages/job.py", id=job_id)
    no_exception(at)
    return [c for c in _captions(at) if c.startswith("Webhook:")]


def test_the_owner_sees_pending_then_sent_with_the_url_redacted(
    services: Services, app: AppFactory
) -> None:
    job_id = _job(services, SINGLE_USER)
    (line,) = _webhook_lines(services, app, job_id)
    assert line.startswith("Webhook: pending")
    assert "hooks.example.com/catalogue" in line
    assert SECRET not in line

    _end_and_deliver(services, job_id, None, 1)
    (line,) = _webhook_lines(services, app, job_id)
    assert line.startswith("Webhook: sent (1 attempt)")
    assert "hooks.example.com" in line and SECRET not in line


def test_a_failed_delivery_shows_its_attempts_and_error(
    services: Services, app: AppFactory
) -> None:
    job_id = _job(services, SINGLE_USER)
    _end_and_deliver(services, job_id, f"Refused: {TARGET} answered a redirect (302).", 5)
    (line,) = _webhook_lines(services, app, job_id)
    assert line.startswith("Webhook: failed after 5 attempts: Refused:")
    assert "answered a redirect (302)" in line
    assert SECRET not in line


def test_someone_elses_job_shows_the_state_but_never_the_url(
    services: Services, app: AppFactory
) -> None:
    # single-user mode opens every job; this one belongs to another person
    job_id = _job(services, "alice@example.com")
    _end_and_deliver(services, job_id, f"Refused: {TARGET} answered a redirect (302).", 2)
    (line,) = _webhook_lines(services, app, job_id)
    assert line.startswith("Webhook: failed after 2 attempts:")
    assert "hooks.example.com" not in line and SECRET not in line
    assert "(the callback URL)" in line


def test_a_job_without_a_callback_has_no_webhook_line(services: Services, app: AppFactory) -> None:
    job = jobs.create_job(services.db, parse_text(ROWS), name="plain", owner=SINGLE_USER)
    assert _webhook_lines(services, app, job.id) == []
