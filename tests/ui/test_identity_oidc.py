"""Sign-in with `st.login` (issue 19): `oidc-provider-mock` is a real OpenID provider on
127.0.0.1, `streamlit run app.py` reads a temporary secrets.toml with its `[auth]` section
(`--secrets.files`), and Debian's Chromium signs in as two different people.

Signed-out visitors get the sign-in page only; each person sees their own jobs; another
person's job answers as a missing one; the job page's download links are signed for the
person and expire; a bare, altered or borrowed link is refused.
"""

from __future__ import annotations

import io
import secrets
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from downloader import links
from tests.support.imageserver import ImageServer
from tests.ui.identity_support import (
    ALICE,
    BOB,
    app_server,
    browsers,
    get,
    jobs_offered,
    open_page,
    owned_jobs,
)
from tests.ui.test_browser import CHROMIUM, READY, free_port

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason=f"Debian's chromium is not at {CHROMIUM}"
    ),
]


# The provider's own pages ask a CDN for their stylesheet: aborted like everything beyond
# loopback, and expected.
PROVIDER_STYLESHEET = ("https://cdn.jsdelivr.net/npm/@picocss/",)


@pytest.fixture
def provider() -> Iterator[str]:
    """oidc-provider-mock on 127.0.0.1 (any client id; the person types who they are)."""
    import oidc_provider_mock
    import werkzeug.serving

    server = werkzeug.serving.make_server(
        "127.0.0.1", 0, oidc_provider_mock.app(require_nonce=True), threaded=True
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def write_secrets(path: Path, app_url: str, provider: str) -> Path:
    path.write_text(
        "[auth]\n"
        f'redirect_uri = "{app_url}/oauth2callback"\n'
        f'cookie_secret = "{secrets.token_hex(32)}"\n'
        'client_id = "batch-image-downloader"\n'
        f'client_secret = "{secrets.token_hex(16)}"\n'
        f'server_metadata_url = "{provider}/.well-known/openid-configuration"\n'
    )
    return path


def sign_in(page: object, app_url: str, email: str) -> str:
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    text = open_page(page, app_url)
    assert "Sign in" in text and "New job" not in text, text[-2000:]
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector("input[name=sub]")  # the provider's own page
    page.fill("input[name=sub]", email)
    page.get_by_role("button", name="Authorize").click()
    page.wait_for_url(f"{app_url}/**")
    page.wait_for_selector(READY, timeout=60_000)
    page.get_by_text("Signed in as").wait_for()
    text = str(page.get_by_test_id("stApp").inner_text()).replace("\u2060", "")
    assert f"Signed in as {email}" in text and "Sign out" in text, text[-2000:]
    return text


def test_two_people_sign_in_and_see_only_their_own_jobs(
    tmp_path: Path, image_server: ImageServer, provider: str
) -> None:
    owned = owned_jobs(tmp_path, image_server)
    port = free_port()
    app_url = f"http://127.0.0.1:{port}"
    secrets_file = write_secrets(tmp_path / "secrets.toml", app_url, provider)
    with (
        app_server(tmp_path, {}, ["--secrets.files", str(secrets_file)], port=port) as server,
        browsers(expected_blocked=PROVIDER_STYLESHEET) as chromium,
    ):
        alice, bob, stranger = chromium.page(), chromium.page(), chromium.page()

        # signed out: the sign-in page only, whatever the address
        for path in ("/jobs", f"/job?id={owned.alice}"):
            text = open_page(stranger, f"{server.url}{path}")
            assert "Sign in" in text and "Alice catalogue" not in text, text[-2000:]

        sign_in(alice, server.url, ALICE)
        assert "1 job(s) shown" in open_page(alice, f"{server.url}/jobs")
        assert jobs_offered(alice, server.url) == ["Alice catalogue"]
        refused = open_page(alice, f"{server.url}/job?id={owned.bob}")
        assert "There is no job with id" in refused and "Bob catalogue" not in refused

        sign_in(bob, server.url, BOB)
        assert "1 job(s) shown" in open_page(bob, f"{server.url}/jobs")
        assert jobs_offered(bob, server.url) == ["Bob catalogue"]

        # Alice's page mints signed links for her; they download her job
        open_page(alice, f"{server.url}/job?id={owned.alice}")
        href = str(alice.get_by_test_id("bid-download-link").first.get_attribute("href"))
        link = urlsplit(href)
        query = dict(parse_qsl(link.query))
        assert query["user"] == ALICE and query["signature"]
        status, body = get(f"{server.url}{link.path}?{link.query}")
        assert status == 200 and "manifest.csv" in zipfile.ZipFile(io.BytesIO(body)).namelist()
        with alice.expect_download() as download:
            alice.get_by_test_id("bid-download-link").first.click()
        assert "manifest.csv" in zipfile.ZipFile(Path(download.value.path())).namelist()

        # a bare route, an altered link, a link moved to another job: refused
        assert get(f"{server.url}{link.path}")[0] == 403
        for change in ({"user": BOB}, {"expires": str(int(query["expires"]) + 3600)}):
            assert get(f"{server.url}{link.path}?{urlencode(query | change)}")[0] == 403
        moved = link.path.replace(owned.alice, owned.bob)
        assert get(f"{server.url}{moved}?{link.query}")[0] == 403
        # a link signed with the server's own secret (kept next to MEDIA_ROOT) that expired
        secret = (tmp_path / links.SECRET_FILE).read_bytes().strip()
        stale = links.sign(secret, owned.alice, ALICE, ttl=-1)
        status, body = get(f"{server.url}{link.path}?{stale}")
        assert status == 403 and b"expired" in body
        fresh = links.sign(secret, owned.alice, ALICE, ttl=60)
        assert get(f"{server.url}{link.path}?{fresh}")[0] == 200

        # signing out leaves only the sign-in page
        alice.get_by_role("button", name="Sign out").click()
        alice.get_by_role("button", name="End session").click()  # the provider's page
        alice.wait_for_url(f"{server.url}/**")
        text = open_page(alice, f"{server.url}/jobs")
        assert "job(s) shown" not in text and "Sign in" in text
