"""What the identity browser tests share (issue 19): the app as `streamlit run` with extra
settings or arguments, jobs of several owners run to their end beforehand, plain HTTP GETs
of the download routes, and a browser whose every context may only reach loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from downloader import jobs
from downloader.engine import Engine
from downloader.inputs import parse_text
from tests.support.imageserver import ImageServer
from tests.ui.conftest import make_services
from tests.ui.test_browser import CHROMIUM, CHROMIUM_ARGS, READY, Server, free_port

ROOT = Path(__file__).resolve().parents[2]
ALICE, BOB, BOSS = "alice@example.com", "bob@example.com", "boss@example.com"


@dataclass
class Owned:
    """Three finished jobs: Alice's, Bob's, and one made before owners."""

    alice: str
    bob: str
    nobody: str


def owned_jobs(tmp_path: Path, server: ImageServer) -> Owned:
    services = make_services(tmp_path)
    try:

        def run(owner: str | None, name: str, image: str) -> str:
            text = f"Product Number\tImage URL\r\nSKU-1\t{server.url(f'/img/{image}.jpg')}"
            job = jobs.create_job(services.db, parse_text(text), name=name, owner=owner)
            engine = Engine(
                services.db, services.storage, services.settings, job_id=job.id, share=1.0
            )
            anyio.run(lambda: engine.run(until_idle=True))
            return job.id

        return Owned(
            alice=run(ALICE, "Alice catalogue", "alice"),
            bob=run(BOB, "Bob catalogue", "bob"),
            nobody=run(None, "Old catalogue", "old"),
        )
    finally:
        services.db.dispose()


@contextmanager
def app_server(
    tmp_path: Path,
    env: dict[str, str],
    args: Sequence[str] = (),
    port: int = 0,
) -> Iterator[Server]:
    """`streamlit run app.py` on loopback with the test's database and `env`, `args`."""
    port = port or free_port()
    full_env = {
        **{k: v for k, v in os.environ.items() if k not in ("TRUSTED_USER_HEADER", "ADMIN_USERS")},
        "DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}",
        "MEDIA_ROOT": str(tmp_path / "media"),
        "ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8",
        "DOWNLOAD_QPS": "0",
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
        **env,
    }
    log = tmp_path / f"streamlit-{port}.log"
    command = [
        sys.executable, "-m", "streamlit", "run", "app.py",
        "--server.headless", "true",
        "--server.port", str(port),
        "--server.address", "127.0.0.1",
        *args,
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT
        )
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


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET `url` with `headers`: (status, body), errors included."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@dataclass
class Browsers:
    chromium: Any
    blocked: list[str] = field(default_factory=list)
    contexts: list[Any] = field(default_factory=list)
    # aborted like every other request beyond loopback, but expected (not a failure)
    expected_blocked: tuple[str, ...] = ()

    def page(self, headers: dict[str, str] | None = None) -> Any:
        """A new page in its own context (its own cookies), sending `headers` on every
        request, as a proxy in front of the app would (on the WebSocket's handshake too, and
        on downloads, which Chromium starts without the context's extra headers); only
        loopback may be reached."""
        context = self.chromium.new_context(
            accept_downloads=True,
            viewport={"width": 1400, "height": 1000},
            extra_http_headers=headers or {},
        )

        def guard(route: Any) -> None:
            url = route.request.url
            if url.startswith("http://127."):
                route.continue_(headers={**route.request.headers, **(headers or {})})
            elif url.startswith(("ws://127.", "data:", "blob:", "about:")):
                route.continue_()
            else:
                if not url.startswith(self.expected_blocked):
                    self.blocked.append(url)
                route.abort()

        context.route("**/*", guard)
        self.contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)
        return page


@contextmanager
def browsers(expected_blocked: tuple[str, ...] = ()) -> Iterator[Browsers]:
    """Debian's Chromium; `expected_blocked`: URL prefixes beyond loopback that a page is
    known to ask for (aborted too, without failing the test)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        state = Browsers(chromium, expected_blocked=expected_blocked)
        try:
            yield state
        finally:
            for context in state.contexts:
                context.close()
            chromium.close()
    assert not state.blocked, f"a page tried to reach beyond loopback: {state.blocked}"


def open_page(page: Any, url: str) -> str:
    """Go to `url`, wait until the script has finished, and return the app's text (without
    the invisible word joiners that keep e-mail addresses from being linked)."""
    page.goto(url)
    page.wait_for_selector(READY, timeout=60_000)
    page.wait_for_timeout(300)  # the last elements of the run are drawn
    page.wait_for_selector(READY, timeout=60_000)
    return str(page.get_by_test_id("stApp").inner_text()).replace("\u2060", "")


def jobs_offered(page: Any, app_url: str) -> list[str]:
    """The names of the jobs the Job detail page offers to open (the Jobs page's table is
    drawn on a canvas; this list is the same query, visible_to the person, as text)."""
    text = open_page(page, f"{app_url}/job")
    if "No jobs yet" in text:
        return []
    page.get_by_test_id("stSelectbox").click()
    options = page.get_by_role("option")
    options.first.wait_for()
    names = [str(option).split(" — ")[0] for option in options.all_inner_texts()]
    page.keyboard.press("Escape")
    return sorted(names)
