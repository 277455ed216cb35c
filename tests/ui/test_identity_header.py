"""Behind an SSO proxy (issue 19): TRUSTED_USER_HEADER names the header with the signed-in
e-mail. `streamlit run app.py` with X-Forwarded-Email; Debian's Chromium with one browser
context per person (each sending its own header, as the proxy would) plus one without.

Each person sees only their own jobs and job pages; another person's job answers exactly as a
missing one; the download routes follow the same header; a request without it gets only the
"sign in through your company portal" message.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from downloader.identity import PORTAL_MESSAGE
from tests.support.imageserver import ImageServer
from tests.ui.identity_support import (
    ALICE,
    BOB,
    BOSS,
    app_server,
    browsers,
    get,
    jobs_offered,
    open_page,
    owned_jobs,
)
from tests.ui.test_browser import CHROMIUM

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason=f"Debian's chromium is not at {CHROMIUM}"
    ),
]

HEADER = "X-Forwarded-Email"
NAMES = {"alice": "Alice catalogue", "bob": "Bob catalogue", "nobody": "Old catalogue"}


def no_such_job(text: str, job_id: str) -> str:
    """The not-found answer with the id taken out, to compare two answers."""
    assert "There is no job with id" in text, text[-2000:]
    return text.replace(job_id, "<id>")


def test_each_person_sees_only_their_own_jobs_behind_the_proxy(
    tmp_path: Path, image_server: ImageServer
) -> None:
    owned = owned_jobs(tmp_path, image_server)
    env = {"TRUSTED_USER_HEADER": HEADER, "ADMIN_USERS": BOSS}
    with app_server(tmp_path, env) as server, browsers() as chromium:
        alice = chromium.page({HEADER: ALICE})
        bob = chromium.page({HEADER: BOB})
        boss = chromium.page({HEADER: BOSS})
        stranger = chromium.page()

        # the Jobs page: each their own; the admin everything, with an owner filter
        text = open_page(alice, f"{server.url}/jobs")
        assert f"Signed in as {ALICE}" in text and "1 job(s) shown" in text, text[-2000:]
        assert "Owner" not in text
        assert jobs_offered(alice, server.url) == [NAMES["alice"]]
        text = open_page(bob, f"{server.url}/jobs")
        assert f"Signed in as {BOB}" in text and "1 job(s) shown" in text
        assert jobs_offered(bob, server.url) == [NAMES["bob"]]
        text = open_page(boss, f"{server.url}/jobs")
        assert f"Signed in as {BOSS} (admin)" in text and "3 job(s) shown" in text
        boss.get_by_test_id("stSelectbox").filter(has_text="Owner").wait_for()  # a filter
        assert jobs_offered(boss, server.url) == sorted(NAMES.values())

        # a job page: the owner's; anyone else gets exactly the missing-job answer
        text = open_page(alice, f"{server.url}/job?id={owned.alice}")
        assert NAMES["alice"] in text and "There is no job" not in text
        refused = open_page(alice, f"{server.url}/job?id={owned.bob}")
        missing = open_page(alice, f"{server.url}/job?id=000000000000")
        assert no_such_job(refused, owned.bob) == no_such_job(missing, "000000000000")
        assert NAMES["bob"] not in refused and "SKU-1" not in refused
        no_such_job(open_page(alice, f"{server.url}/job?id={owned.nobody}"), owned.nobody)
        assert NAMES["nobody"] in open_page(boss, f"{server.url}/job?id={owned.nobody}")

        # the owner's own download links work, fetched as her browser context (Chromium's
        # download manager leaves out Playwright's extra headers, which a real proxy adds)
        open_page(alice, f"{server.url}/job?id={owned.alice}")
        hrefs = alice.get_by_test_id("bid-download-link").evaluate_all(
            "links => links.map(link => link.getAttribute('href'))"
        )
        assert len(hrefs) == 3 and not any("signature=" in href for href in hrefs)
        for href in hrefs:
            reply = alice.request.get(f"{server.url}{href}")
            assert reply.status == 200, (href, reply.status)
        reply = alice.request.get(f"{server.url}{hrefs[0]}")
        names = zipfile.ZipFile(io.BytesIO(reply.body())).namelist()
        assert "manifest.csv" in names and any(name.startswith("SKU-1/") for name in names)
        assert bob.request.get(f"{server.url}{hrefs[0]}").status == 404  # not Bob's

        # no header: no page at all, only the portal message
        for path in ("/", "/jobs", f"/job?id={owned.alice}", "/system"):
            text = open_page(stranger, f"{server.url}{path}")
            assert PORTAL_MESSAGE in text, (path, text[-2000:])
            assert NAMES["alice"] not in text and "New job" not in text

        # the download routes follow the same header
        zip_url = f"{server.url}/download/job/{{}}.zip"
        status, body = get(zip_url.format(owned.alice), {HEADER: ALICE})
        assert status == 200 and "manifest.csv" in zipfile.ZipFile(io.BytesIO(body)).namelist()
        assert get(zip_url.format(owned.alice), {HEADER: BOSS})[0] == 200  # an admin
        # a bare route: refused
        status, body = get(zip_url.format(owned.alice))
        assert (status, body.decode()) == (403, PORTAL_MESSAGE)
        # another person's job, for every route: exactly as a missing job
        for route in (".zip", "/manifest.csv", "/failed.csv", "/rejected.csv"):
            url = f"{server.url}/download/job/{{}}{route}"
            other = get(url.format(owned.bob), {HEADER: ALICE})
            absent = get(url.format("000000000000"), {HEADER: ALICE})
            assert other[0] == absent[0] == 404, (route, other, absent)
            assert other[1].replace(owned.bob.encode(), b"<id>") == absent[1].replace(
                b"000000000000", b"<id>"
            )
            assert get(url.format(owned.bob), {HEADER: BOB})[0] == 200
        # two different values of the header (one the client's own): nobody
        status, _ = get(zip_url.format(owned.bob), {HEADER: f"{BOB}, {ALICE}"})
        assert status == 403
