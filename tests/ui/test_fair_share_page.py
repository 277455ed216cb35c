"""A job's place on its page (issue 19, fair share): "Waiting for a free slot" while its
images are queued and none is being downloaded, "Downloading" once some are leased."""

from __future__ import annotations

from collections.abc import Callable

from streamlit.testing.v1 import AppTest

from downloader import jobs, queue
from downloader.inputs import parse_text
from downloader.services import Services

AppFactory = Callable[..., AppTest]


def texts(at: AppTest) -> str:
    assert not at.exception, [e.message for e in at.exception]
    return "\n".join(str(element.value) for element in (*at.caption, *at.markdown))


def test_the_job_page_shows_whether_the_job_waits_for_a_slot_or_downloads(
    services: Services, app: AppFactory
) -> None:
    rows = "Product Number\tImage URL\n" + "\n".join(
        f"P{i}\thttps://img.example.invalid/{i}.jpg" for i in range(3)
    )
    job = jobs.create_job(services.db, parse_text(rows), name="Place")

    page = texts(app("pages/job.py", id=job.id))
    assert "Waiting for a free slot" in page
    assert "Downloading" not in page

    queue.claim(services.db, "some-engine", 1, 30)  # an engine has started on it
    page = texts(app("pages/job.py", id=job.id))
    assert "Downloading" in page and "Waiting for a free slot" not in page
