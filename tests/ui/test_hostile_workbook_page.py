"""A hostile workbook through the upload widget: the page explains it, the server lives on.

Before the workbook guard, a 1.6 KB sparse XLSX made python-calamine abort the Streamlit
process (every user's session with it); a zip bomb's reason surfaced as a traceback. In
AppTest the page is checked for the error; with `streamlit run app.py` in Chromium, the
server is checked to survive the sparse workbook and to go on serving the same session.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from downloader.services import Services
from tests.ui.test_browser import CHROMIUM, app_server, browser, wait_idle
from tests.workbook_support import MIB, shared_strings_bomb, sheet_xml, sparse_workbook, workbook

__all__ = ["app_server", "browser"]  # fixtures for the browser test below

AppFactory = Callable[..., AppTest]
ROWS = "Product Number,Image URL\nAB-1,http://127.0.0.9:9/a.jpg\n"


def errors(at: AppTest) -> list[str]:
    return [element.value.replace("\\", "") for element in at.error]


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("sparse", "Sheet 'Sheet1' spans A1:XFD1048576"),
        ("lying header", "xl/sharedStrings.xml unpacks to more than the 1,024 bytes"),
        ("bomb", "unpacks to more than 512 MiB"),
    ],
)
def test_a_hostile_workbook_upload_shows_its_reason(
    services: Services, app: AppFactory, case: str, needle: str
) -> None:
    if case == "sparse":
        data = sparse_workbook("XFD1048576")
    else:
        stated = 1024 if case == "lying header" else None
        bomb = shared_strings_bomb(600 * MIB if stated is None else 8 * MIB, stated=stated)
        data = workbook({"Sheet1": sheet_xml("")}, shared_strings=bomb)
    at = app()
    at.segmented_control(key="source").set_value("Upload a file").run()
    at.file_uploader(key="upload").upload("book.xlsx", data).run()
    assert not at.exception, [e.message for e in at.exception]
    assert any(needle in error for error in errors(at)), errors(at)
    assert at.button(key="queue").disabled
    # the same session goes on: a good file is previewed
    at.file_uploader(key="upload").upload("good.csv", ROWS.encode(), "text/csv").run()
    assert not at.exception and not at.error
    assert not at.button(key="queue").disabled


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"Debian's chromium is not at {CHROMIUM}")
def test_a_sparse_workbook_upload_leaves_the_server_running(
    app_server: Any, browser: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    sparse = tmp_path / "sparse.xlsx"
    sparse.write_bytes(sparse_workbook("XFD1048576"))
    good = tmp_path / "good.csv"
    good.write_text(ROWS)
    page = browser.page
    page.goto(app_server.url)
    wait_idle(page)
    page.get_by_text("Upload a file", exact=True).click()
    wait_idle(page)
    page.locator("input[type='file']").set_input_files(str(sparse))
    alert = page.get_by_test_id("stAlertContentError").filter(has_text="spans A1:XFD1048576")
    expect(alert).to_be_visible(timeout=60_000)
    assert app_server.process.poll() is None, app_server.log_text()
    with urllib.request.urlopen(f"{app_server.url}/_stcore/health", timeout=10) as reply:
        assert reply.status == 200
    # the same browser session goes on: another file replaces the workbook and is previewed
    page.locator("input[type='file']").set_input_files(str(good))
    wait_idle(page)
    images = page.get_by_test_id("stMetric").filter(has_text="Images")
    expect(images.get_by_test_id("stMetricValue")).to_have_text("1", timeout=30_000)
    assert "Traceback" not in app_server.log_text()
