"""Converted outputs from the new-job page in Debian's headless Chromium (issue 23): the
"Output" section's conversion controls queue a job whose master ZIP holds JPEGs no larger
than the chosen side, and the job page's "Report (Excel)" downloads a workbook with a
picture per image."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.support.imageserver import ImageServer
from tests.ui.test_browser import (
    CHROMIUM,
    Browser,
    Server,
    app_server,
    browser,
    metric,
    paste,
    wait_idle,
)

__all__ = ["app_server", "browser"]  # fixtures used below

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason=f"Debian's chromium is not at {CHROMIUM}"
    ),
]


def test_conversion_chosen_on_the_page_reaches_the_zip_and_the_report(
    app_server: Server, browser: Browser, image_server: ImageServer
) -> None:
    from playwright.sync_api import expect

    s = image_server
    tsv = "Product Number\tImage URL\r\n" + "".join(
        f"{product}\t{s.url(path, host=host)}\r\n"
        for product, path, host in [
            ("SHOE-1", "/img/front.png?w=900&h=600", 0),
            ("SHOE-1", "/img/back.webp?w=400&h=800", 1),
            ("HAT-3", "/img/hat.gif?w=640&h=480", 2),
        ]
    )
    page = browser.page
    page.goto(app_server.url)
    wait_idle(page)
    paste(page, tsv)
    expect(metric(page, "Images")).to_have_text("3", timeout=30_000)
    page.get_by_text("Output", exact=True).click()
    wait_idle(page)
    choose = page.get_by_role("combobox", name="Images in the ZIPs")
    jpeg = page.get_by_role("option", name="JPEG")
    for _ in range(3):  # a click while the page reruns can land before the list opens
        choose.click()
        try:
            jpeg.wait_for(timeout=10_000)
            break
        except PlaywrightTimeoutError:
            page.keyboard.press("Escape")
    jpeg.click()
    wait_idle(page)
    side = page.get_by_role("spinbutton", name="Longest side at most (px)")
    side.fill("300")
    side.press("Enter")
    wait_idle(page)
    page.get_by_role("button", name="Analyze & Queue Downloads").click()
    page.wait_for_url("**/job?id=*")
    job_id = page.url.split("id=")[1]
    expect(page.get_by_text(re.compile(r"\bCompleted\b")).first).to_be_visible(timeout=60_000)
    wait_idle(page)
    expect(metric(page, "Done")).to_have_text("3")

    with page.expect_download() as caught:
        page.get_by_text("All products (ZIP)").click()
    archive = zipfile.ZipFile(caught.value.path())
    pictures = [name for name in archive.namelist() if name != "manifest.csv"]
    assert sorted(pictures) == ["HAT-3/HAT-3_1.jpg", "SHOE-1/SHOE-1_1.jpg", "SHOE-1/SHOE-1_2.jpg"]
    for name in pictures:
        with Image.open(io.BytesIO(archive.read(name))) as picture:
            assert picture.format == "JPEG" and max(picture.size) == 300

    with page.expect_download() as caught:
        page.get_by_role("button", name="Report (Excel)").click()
    assert caught.value.suggested_filename == f"job-{job_id}-report.xlsx"
    with zipfile.ZipFile(caught.value.path()) as package:
        assert package.read("xl/worksheets/sheet1.xml").count(b' vm="') == 3
    assert not browser.errors, browser.errors
