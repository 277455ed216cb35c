"""The path a person takes, in Debian's headless Chromium through Playwright.

`streamlit run app.py` runs as a subprocess on a free loopback port with its own SQLite file
and media folder; the images come from the loopback image server. The browser may only talk
to loopback: every other request is aborted and fails the test.

Set UPDATE_SCREENSHOTS=1 to also refresh the screenshots in docs/.
"""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.imageserver import ImageServer, image_bytes

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
READY = "[data-testid='stApp'][data-test-script-state='notRunning']"
GRID_FRAME = "iframe[title='st_aggrid.AgGrid.agGrid']"
SCREENSHOTS = ROOT / "docs" if os.environ.get("UPDATE_SCREENSHOTS") else None

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason=f"Debian's chromium is not at {CHROMIUM}"
    ),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    log: Path
    process: subprocess.Popen[bytes]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]


@pytest.fixture
def app_server(tmp_path: Path) -> Iterator[Server]:
    """The app as a person runs it: `streamlit run app.py` on loopback."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}",
        "MEDIA_ROOT": str(tmp_path / "media"),
        "ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8",
        "DOWNLOAD_QPS": "0",
        "BACKOFF_BASE": "0.05",
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
    }
    log = tmp_path / "streamlit.log"
    command = [
        sys.executable, "-m", "streamlit", "run", "app.py",
        "--server.headless", "true",
        "--server.port", str(port),
        "--server.address", "127.0.0.1",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", log, process)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{server.url}/_stcore/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start:\n{server.log_text()}")
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Browser:
    page: Any
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = chromium.new_context(
            accept_downloads=True, viewport={"width": 1400, "height": 1000}
        )
        state = Browser(page=None)

        def guard(route: Any) -> None:
            url = route.request.url
            if url.startswith(("http://127.", "ws://127.", "data:", "blob:", "about:")):
                route.continue_()
            else:
                state.blocked.append(url)
                route.abort()

        context.route("**/*", guard)
        page = context.new_page()
        page.on("pageerror", lambda exc: state.errors.append(str(exc)))
        page.set_default_timeout(30_000)
        state.page = page
        try:
            yield state
        finally:
            context.close()
            chromium.close()
    assert not state.blocked, f"the page tried to reach beyond loopback: {state.blocked}"


def wait_idle(page: Any) -> None:
    page.wait_for_selector(READY, timeout=60_000)


PASTE_JS = """(body, text) => {
    const data = new DataTransfer();
    data.setData('text/plain', text);
    const init = {clipboardData: data, bubbles: true, cancelable: true};
    (document.activeElement || body).dispatchEvent(new ClipboardEvent('paste', init));
}"""


def paste(page: Any, text: str, row: int = 0) -> None:
    """Click the Product Number cell of `row` and paste `text` as the clipboard's text/plain
    (what Ctrl+V does after copying cells in Excel or Google Sheets)."""
    grid = page.frame_locator(GRID_FRAME)
    grid.locator(f".ag-row[row-index='{row}'] .ag-cell[col-id='product']").click()
    grid.locator("body").evaluate(PASTE_JS, text)


def metric(page: Any, label: str) -> Any:
    return page.get_by_test_id("stMetric").filter(has_text=label).get_by_test_id("stMetricValue")


def shot(page: Any, name: str) -> None:
    if SCREENSHOTS is not None:
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def read_zip(path: str) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(Path(path).read_bytes()))


def test_paste_queue_watch_and_download(
    app_server: Server, browser: Browser, image_server: ImageServer
) -> None:
    page = browser.page
    s = image_server
    images = [  # (product, name, format, host): six rows over three "hosts"
        ("SHOE-1", "shoe1-front", "jpg", 0),
        ("SHOE-1", "shoe1-back", "png", 1),
        ("SHOE-1", "shoe1-side", "webp", 2),
        ("BAG_2", "bag2-main", "jpg", 1),
        ("BAG_2", "bag2-detail", "gif", 2),
        ("HAT-3", "hat3", "png", 0),
    ]
    tsv = "Product Number\tImage URL\r\n" + "".join(
        f"{product}\t{s.url(f'/img/{name}.{fmt}', host=host)}\r\n"
        for product, name, fmt, host in images
    )

    page.goto(app_server.url)
    wait_idle(page)
    paste(page, tsv)
    # the grid reports its rows; the preview counts them (the header row is not data)
    from playwright.sync_api import expect

    expect(metric(page, "Images")).to_have_text("6", timeout=30_000)
    expect(metric(page, "Products")).to_have_text("3")
    expect(metric(page, "Rejected rows")).to_have_text("0")
    grid = page.frame_locator(GRID_FRAME)
    expect(grid.locator(".ag-row .ag-cell[col-id='product']").nth(5)).to_have_text("HAT-3")

    page.get_by_role("button", name="Analyze & Queue Downloads").click()
    page.wait_for_url("**/job?id=*")
    job_id = page.url.split("id=")[1]
    expect(page.get_by_text(re.compile(r"\bCompleted\b")).first).to_be_visible(timeout=60_000)
    wait_idle(page)
    expect(metric(page, "Done")).to_have_text("6")

    # one product's ZIP: the button labelled with the product number
    with page.expect_download() as caught:
        page.get_by_role("button", name="SHOE-1").click()
    download = caught.value
    assert download.suggested_filename == "SHOE-1.zip"
    archive = read_zip(download.path())
    assert sorted(archive.namelist()) == [
        "SHOE-1_1.jpg",
        "SHOE-1_2.png",
        "SHOE-1_3.webp",
        "manifest.csv",
    ]
    assert archive.read("SHOE-1_2.png") == image_bytes("shoe1-back", "png")
    manifest = archive.read("manifest.csv").decode("utf-8-sig").splitlines()
    assert manifest[0].startswith("product,position,source_url,status,file,sha256")
    assert len(manifest) == 4

    # the master ZIP, streamed by the custom route
    with page.expect_download() as caught:
        page.get_by_text("All products (ZIP)").click()
    download = caught.value
    assert download.suggested_filename == f"job-{job_id}.zip"
    archive = read_zip(download.path())
    names = sorted(archive.namelist())
    assert names == sorted(
        ["manifest.csv"]
        + [f"{product}/{product}_{pos}.{fmt}" for product, pos, fmt in (
            ("SHOE-1", 1, "jpg"), ("SHOE-1", 2, "png"), ("SHOE-1", 3, "webp"),
            ("BAG_2", 1, "jpg"), ("BAG_2", 2, "gif"), ("HAT-3", 1, "png"),
        )]
    )  # fmt: skip
    assert archive.read("HAT-3/HAT-3_1.png") == image_bytes("hat3", "png")

    assert not browser.errors, browser.errors


def test_paste_without_header_into_a_filled_grid_then_edit_and_delete(
    app_server: Server, browser: Browser
) -> None:
    from playwright.sync_api import expect

    page = browser.page
    page.goto(app_server.url)
    wait_idle(page)
    paste(page, "A-1\thttps://img.example.invalid/1.jpg\nA-1\thttps://img.example.invalid/2.jpg\n")
    expect(metric(page, "Images")).to_have_text("2", timeout=30_000)

    grid = page.frame_locator(GRID_FRAME)
    # paste more rows (no header, CRLF) below the filled ones: they are appended
    paste(
        page,
        "B-2\thttps://img.example.invalid/3.jpg\r\n"
        + "X" * 129  # a product number too long: rejected
        + "\thttps://img.example.invalid/4.jpg\r\n",
        row=2,
    )
    expect(metric(page, "Rejected rows")).to_have_text("1", timeout=30_000)
    expect(metric(page, "Images")).to_have_text("3")
    # the invalid cell is highlighted
    expect(
        grid.locator(".ag-row[row-index='3'] .ag-cell[col-id='product'].bid-invalid")
    ).to_be_visible()

    # edit the bad cell: type a valid product number
    cell = grid.locator(".ag-row[row-index='3'] .ag-cell[col-id='product']")
    cell.dblclick()
    page.keyboard.press("ControlOrMeta+a")
    page.keyboard.type("C-3")
    page.keyboard.press("Enter")
    expect(metric(page, "Rejected rows")).to_have_text("0", timeout=30_000)
    expect(metric(page, "Images")).to_have_text("4")
    expect(metric(page, "Products")).to_have_text("3")

    # delete the first row with its ✕ button
    grid.locator(".ag-row[row-index='0'] .bid-del").click()
    expect(metric(page, "Images")).to_have_text("3", timeout=30_000)
    expect(metric(page, "Products")).to_have_text("3")
    grid.locator(".ag-row[row-index='0'] .bid-del").click()
    expect(metric(page, "Products")).to_have_text("2", timeout=30_000)

    # clear everything
    page.get_by_role("button", name="Clear the grid").click()
    expect(page.get_by_text("Nothing to queue yet")).to_be_visible()
    assert not browser.errors, browser.errors


@pytest.mark.skipif(SCREENSHOTS is None, reason="set UPDATE_SCREENSHOTS=1 to refresh docs/*.png")
def test_screenshots_for_the_readme(
    app_server: Server, browser: Browser, image_server: ImageServer
) -> None:
    from playwright.sync_api import expect

    page = browser.page
    page.set_viewport_size({"width": 1400, "height": 1500})
    s = image_server
    rows = [
        ("SHOE-1", "/img/shoe1-front.jpg?w=320&h=240"),
        ("SHOE-1", "/img/shoe1-back.png?w=320&h=240"),
    ]
    rows += [("SHOE-1", "/img/shoe1-side.webp?w=320&h=240"), ("BAG_2", "/img/bag2.jpg?w=320&h=240")]
    rows += [("BAG_2", "/status/404"), ("HAT-3", "/img/hat3.png?w=320&h=240")]
    rows += [("HAT 3", "/img/hat3b.png"), ("SCARF-4", "/slow/4/scarf")]
    tsv = "Product Number\tImage URL\r\n" + "".join(
        f"{product}\t{s.url(path, host=i % 3)}\r\n" for i, (product, path) in enumerate(rows)
    )
    page.goto(app_server.url)
    wait_idle(page)
    paste(page, tsv)
    expect(metric(page, "Rejected rows")).to_have_text("1", timeout=30_000)
    wait_idle(page)
    page.wait_for_timeout(1000)
    shot(page, "new-job.png")
    page.get_by_role("button", name="Analyze & Queue Downloads").click()
    page.wait_for_url("**/job?id=*")
    wait_idle(page)
    page.wait_for_timeout(1500)
    shot(page, "job-running.png")
    expect(page.get_by_text(re.compile(r"\bCompleted\b")).first).to_be_visible(timeout=60_000)
    wait_idle(page)
    page.wait_for_timeout(1000)
    shot(page, "job.png")
    page.get_by_role("tab", name="Failed images").click()
    page.wait_for_timeout(800)
    shot(page, "job-failed.png")
    page.get_by_role("tab", name="Gallery").click()
    page.wait_for_timeout(1500)
    shot(page, "job-gallery.png")
    page.goto(f"{app_server.url}/jobs")
    wait_idle(page)
    page.wait_for_timeout(1000)
    shot(page, "jobs.png")
    page.goto(f"{app_server.url}/system")
    wait_idle(page)
    page.wait_for_timeout(1000)
    shot(page, "system-check.png")
