"""The "Advanced: request headers" box in Debian's headless Chromium (issue 20): a job queued
from the new-job page with a Referer and a per-host cookie downloads hotlink-protected images
through the app's embedded engine, and the cookie's value is in no page the browser gets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.imageserver import ImageServer, Reply, Req
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

REFERER = "https://shop.example/"
SECRET = "S3CR3T-c00kie-4242"


def test_headers_from_the_box_fetch_hotlink_protected_images_and_the_cookie_stays_hidden(
    app_server: Server, browser: Browser, image_server: ImageServer
) -> None:
    from playwright.sync_api import expect

    def hotlink(req: Req) -> Reply:
        if req.record.headers.get("referer") != REFERER:
            return Reply.text(403, "hotlinking is not allowed")
        return Reply.image(f"hotlink-{req.param('id')}", "jpg")

    image_server.add_route(r"^/hotlink/(?P<id>\w+)\.jpg$", hotlink)
    cookie_host = image_server.host(1)
    page = browser.page
    page.goto(app_server.url)
    wait_idle(page)
    paste(
        page,
        "".join(f"P{i}\t{image_server.url(f'/hotlink/{i}.jpg', host=i % 3)}\r\n" for i in range(3)),
    )
    expect(metric(page, "Images")).to_have_text("3", timeout=30_000)
    page.get_by_text("Advanced: request headers").click()
    box = page.get_by_role("textbox", name="Request headers, one a line")
    box.fill(f"Referer: {REFERER}\n{cookie_host} | Cookie: sid={SECRET}")
    box.press("Control+Enter")  # Streamlit sends a text area's value on Ctrl+Enter (or blur)
    wait_idle(page)
    page.get_by_role("button", name="Analyze & Queue Downloads").click()
    page.wait_for_url("**/job?id=*")
    expect(page.get_by_text(re.compile(r"\bCompleted\b")).first).to_be_visible(timeout=60_000)
    wait_idle(page)
    expect(metric(page, "Done")).to_have_text("3")
    page.get_by_text("Request headers (2)").click()  # names and hosts, values masked
    wait_idle(page)
    assert SECRET not in page.content()
    for record in image_server.requests:
        assert record.headers.get("referer") == REFERER
        assert record.headers.get("cookie") == (
            f"sid={SECRET}" if record.host == cookie_host else None
        )
    assert not browser.errors, browser.errors
