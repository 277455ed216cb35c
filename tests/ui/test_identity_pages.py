"""Identity on the pages through AppTest (issue 19): single-user mode as before (every job,
the system check says no sign-in is configured), per-person limits on the New job page, and
header mode without the proxy's header: no page at all. The signed-in modes' browsers are in
test_identity_header.py and test_identity_oidc.py."""

from __future__ import annotations

import pytest

from downloader import jobs
from downloader.identity import PORTAL_MESSAGE
from downloader.inputs import parse_text
from downloader.services import Services
from tests.ui.test_pages import TSV, AppFactory, no_exception

ROWS = "P1\thttps://img.example.invalid/a.jpg"


def queue_pasted(at: object) -> None:
    from streamlit.testing.v1 import AppTest

    assert isinstance(at, AppTest)
    at.segmented_control(key="source").set_value("Paste as text").run()
    at.text_area(key="paste_text").input(TSV).run()
    at.button(key="queue").click().run()


def test_single_user_mode_shows_every_job_and_says_no_sign_in(
    services: Services, app: AppFactory
) -> None:
    for owner in ("alice@example.com", "cli", None):
        jobs.create_job(services.db, parse_text(ROWS), name=f"job of {owner}", owner=owner)
    at = app("pages/jobs.py")
    no_exception(at)
    table = at.dataframe[0].value
    assert sorted(table["name"]) == ["job of None", "job of alice@example.com", "job of cli"]
    assert not at.selectbox  # no owner filter: one user
    at = app("pages/system.py")
    no_exception(at)
    assert any("No sign-in is configured" in c.value.replace("\\", "") for c in at.caption)


def test_the_rate_limit_counts_per_person_not_per_session(
    services: Services, app: AppFactory
) -> None:
    services.settings.job_rate_limit_per_minute = 1
    first = app()
    queue_pasted(first)
    no_exception(first)
    assert len(jobs.list_jobs(services.db)) == 1
    second = app()  # another browser session of the same person
    queue_pasted(second)
    no_exception(second)
    assert any("limit 1" in e.value for e in second.error)
    assert len(jobs.list_jobs(services.db)) == 1


def test_max_active_jobs_per_user_is_explained(services: Services, app: AppFactory) -> None:
    services.settings.max_active_jobs_per_user = 1
    at = app()
    queue_pasted(at)
    second = app()
    queue_pasted(second)
    no_exception(second)
    assert any("1 jobs queued or running (limit 1 per person)" in e.value for e in second.error)
    assert len(jobs.list_jobs(services.db)) == 1


def test_header_mode_without_the_header_shows_no_page(services: Services, app: AppFactory) -> None:
    services.settings.trusted_user_header = "X-Forwarded-Email"
    jobs.create_job(services.db, parse_text(ROWS), name="Secret catalogue")
    at = app()
    no_exception(at)
    assert [e.value for e in at.error] == [PORTAL_MESSAGE]
    assert not at.title[1:] and not at.dataframe and not at.button and not at.text_area
    # no page is registered for this visitor: Jobs, a job, the system check are unreachable
    for page in ("pages/jobs.py", "pages/job.py", "pages/system.py", "pages/new_job.py"):
        with pytest.raises(ValueError, match=r"Known pages: \['Sign in'\]"):
            at.switch_page(page)
