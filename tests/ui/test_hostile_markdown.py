"""User text is shown as text: a job name, an upload's file name or a `?id=` written in
Markdown (a link, an image beacon, HTML) never becomes a link, an image or an element.

Streamlit renders titles, captions, alerts and Markdown bodies as (GitHub-flavoured)
Markdown. Through AppTest each element's body is checked: every Markdown-active character of
the user's text reaches it backslash-escaped (the text still reads as typed). In Debian's
Chromium (`streamlit run app.py`), the page is checked for the link and the image themselves.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from streamlit.testing.v1 import AppTest

from downloader import jobs
from downloader.db import open_database
from downloader.inputs import parse_text
from downloader.services import Services
from pages._common import WORD_JOINER
from tests.ui.test_browser import CHROMIUM, app_server, browser, wait_idle

__all__ = ["app_server", "browser"]  # fixtures for the browser test below

AppFactory = Callable[..., AppTest]

HOSTILE = "[click](http://127.0.0.9/x) ![b](http://127.0.0.9/beacon.png) <img src=x>"
# A file name has no slash: a javascript: link, a relative image beacon and an HTML element.
HOSTILE_FILE = "[click](javascript:alert(1)) ![b](f.png) <img src=x onerror=alert(1)>.csv"
ROWS = "Product Number\tImage URL\r\nAB-1\thttp://127.0.0.9:9/a.jpg\r\n"
MARKDOWN_ELEMENTS = (
    "title",
    "header",
    "subheader",
    "caption",
    "markdown",
    "error",
    "warning",
    "info",
    "success",
    "toast",
)
ACTIVE = set("[]()<>!")


def unescaped(body: str) -> str:
    """The characters of `body` that Markdown would see unescaped (a backslash escapes the
    next character)."""
    out = []
    index = 0
    while index < len(body):
        if body[index] == "\\":
            index += 2
            continue
        out.append(body[index])
        index += 1
    return "".join(out)


def without_escapes(body: str) -> str:
    """`body` as Markdown displays it: each backslash escape replaced by its character (and
    without the invisible WORD JOINERs that keep bare URLs from being linked)."""
    return re.sub(r"\\(.)", r"\1", body).replace(WORD_JOINER, "")


def bodies(at: AppTest) -> list[str]:
    """The Markdown source of every Markdown-rendering element and widget label shown."""
    found = []
    for kind in MARKDOWN_ELEMENTS:
        for element in at.get(kind):
            found.append(str(getattr(element, "value", None) or element.proto.body))
    for kind in ("button", "download_button", "page_link"):
        for element in at.get(kind):
            found.append(str(element.proto.label))
    return found


def assert_shown_as_text(at: AppTest, text: str) -> None:
    """`text` is shown as typed, and no element showing user text (all hostile texts here
    say "click") leaves a Markdown character active."""
    assert not at.exception, [e.message for e in at.exception]
    showing = [body for body in bodies(at) if "click" in body]
    assert any(text in without_escapes(body) for body in showing), showing
    for body in showing:
        active = ACTIVE & set(unescaped(body))
        assert not active, f"{sorted(active)} left active in {body!r}"
        assert "http://" not in body, body  # no bare URL for GFM to turn into a link


def test_a_job_name_in_markdown_is_shown_as_text_on_the_job_page(
    services: Services, app: AppFactory
) -> None:
    job = jobs.create_job(services.db, parse_text(ROWS), name=HOSTILE, source=HOSTILE_FILE)
    at = app("pages/job.py", id=job.id)
    assert_shown_as_text(at, HOSTILE)  # the title
    assert_shown_as_text(at, HOSTILE_FILE)  # the caption names the source file


def test_an_id_parameter_in_markdown_is_shown_as_text(services: Services, app: AppFactory) -> None:
    at = app("pages/job.py", id=HOSTILE)
    assert_shown_as_text(at, HOSTILE)  # "There is no job with id …"
    assert any("no job with id" in e.value for e in at.error)


def test_a_very_long_id_parameter_is_cut_in_the_message(
    services: Services, app: AppFactory
) -> None:
    at = app("pages/job.py", id="[click](x)" * 20_000)
    assert not at.exception
    message = at.error[0].value
    assert "no job with id" in message and len(message) < 1000


def test_an_upload_file_name_in_markdown_is_shown_as_text(
    services: Services, app: AppFactory
) -> None:
    at = app()
    at.segmented_control(key="source").set_value("Upload a file").run()
    # A header without data rows: the error names the file.
    at.file_uploader(key="upload").upload(HOSTILE_FILE, b"Product Number,Image URL\n").run()
    assert at.error, "the unusable file is explained"
    assert_shown_as_text(at, HOSTILE_FILE.removesuffix(".csv"))


def test_a_queued_upload_shows_its_file_name_as_text_on_the_job_page(
    services: Services, app: AppFactory
) -> None:
    at = app()
    at.segmented_control(key="source").set_value("Upload a file").run()
    at.file_uploader(key="upload").upload(HOSTILE_FILE, ROWS.encode(), "text/csv").run()
    at.button(key="queue").click().run()
    assert not at.exception, [e.message for e in at.exception]
    job = jobs.list_jobs(services.db)[0].job
    assert job.source == HOSTILE_FILE
    assert_shown_as_text(at, HOSTILE_FILE)  # the title (default name) and the caption


# ---------------------------------------------------------------- in the browser


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"Debian's chromium is not at {CHROMIUM}")
def test_no_link_image_or_element_from_user_text_in_the_browser(
    app_server: Any, browser: Any, tmp_path: Path
) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'app.db'}")
    try:
        job = jobs.create_job(db, parse_text(ROWS), name=HOSTILE, source=HOSTILE_FILE)
    finally:
        db.dispose()
    page = browser.page
    beacons: list[str] = []

    def beacon(request: Any) -> None:
        where = urlsplit(request.url)
        if where.hostname == "127.0.0.9" or where.path.endswith(("/f.png", "/x")):
            beacons.append(request.url)

    page.on("request", beacon)
    for address in (
        f"{app_server.url}/job?id={job.id}",
        f"{app_server.url}/job?id={quote(HOSTILE)}",
    ):
        page.goto(address)
        wait_idle(page)
        page.get_by_text("click", exact=False).first.wait_for(timeout=30_000)
        time.sleep(0.5)
        for selector in (
            "a[href*='127.0.0.9']",
            "a[href^='javascript']",
            "img[src*='127.0.0.9']",
            "img[src='x']",
            "img[src='f.png']",
        ):
            found = page.locator(selector)
            assert found.count() == 0, [
                found.nth(i).evaluate("e => e.outerHTML") for i in range(found.count())
            ]
        shown = page.inner_text("body").replace(WORD_JOINER, "")
        assert "[click](http://127.0.0.9" in shown  # shown as typed
    assert not beacons, beacons
