"""The new-job page's "Output" section in Debian's headless Chromium (issue 23): real SKUs
(`AB/12.5`, its case twin, `CON`, `Größe 42`) with a Color column, pasted as text and queued
with a naming template, give a master ZIP named with the colour in four safe folders."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

from tests.support.imageserver import ImageServer
from tests.ui.test_browser import (
    CHROMIUM,
    Browser,
    Server,
    app_server,
    browser,
    metric,
    read_zip,
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


def test_output_section_names_files_with_an_input_column(
    app_server: Server, browser: Browser, image_server: ImageServer
) -> None:
    from playwright.sync_api import expect

    s = image_server
    rows = [
        ("AB/12.5", "a1.jpg", "Red"),
        ("ab/12.5", "b1.jpg", "Blue"),
        ("CON", "c1.png", "Green"),
        ("Größe 42", "g1.jpg", "Black"),
    ]
    tsv = "SKU\tImage URL\tColor\n" + "".join(
        f"{sku}\t{s.url(f'/img/{image}')}\t{color}\n" for sku, image, color in rows
    )
    page = browser.page
    page.goto(app_server.url)
    wait_idle(page)
    page.get_by_text("Paste as text", exact=True).click()
    wait_idle(page)
    page.get_by_role("textbox", name="Rows copied from a sheet").fill(tsv)
    page.keyboard.press("ControlOrMeta+Enter")  # a text area applies on Ctrl+Enter
    expect(metric(page, "Images")).to_have_text("4", timeout=30_000)
    expect(metric(page, "Rejected rows")).to_have_text("0")

    page.get_by_text("Output", exact=True).click()
    names = page.get_by_role("textbox", name="File names")
    names.fill("{product}-{colour}")
    names.press("Enter")
    expect(page.get_by_text(re.compile(r"Unknown field .*colour"))).to_be_visible(timeout=30_000)
    expect(page.get_by_role("button", name="Analyze & Queue Downloads")).to_be_disabled()
    names.fill("{product}-{color}-{position}")
    names.press("Enter")
    wait_idle(page)
    queue = page.get_by_role("button", name="Analyze & Queue Downloads")
    expect(queue).to_be_enabled(timeout=30_000)
    queue.click()
    page.wait_for_url("**/job?id=*")
    expect(page.get_by_text(re.compile(r"\bCompleted\b")).first).to_be_visible(timeout=60_000)
    wait_idle(page)

    with page.expect_download() as caught:
        page.get_by_text("All products (ZIP)").click()
    archive = read_zip(caught.value.path())
    assert archive.namelist() == [
        "AB_12.5/AB_12.5-Red-1.jpg",
        "ab_12.5-2/ab_12.5-2-Blue-1.jpg",
        "CON_/CON_-Green-1.png",
        "Größe 42/Größe 42-Black-1.jpg",
        "manifest.csv",
    ]
    manifest = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode("utf-8"))))
    assert [(r["product"], r["Color"]) for r in manifest] == [
        (sku, color) for sku, _, color in rows
    ]
    assert not browser.errors, browser.errors
