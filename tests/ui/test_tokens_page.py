"""The "API tokens" page (issue 25): a signed-in person creates a token, sees it once, and
revokes it; the token works for the API until then."""

from __future__ import annotations

from collections.abc import Callable

from streamlit.testing.v1 import AppTest

from downloader import identity, tokens
from downloader.services import Services


def test_create_shows_the_token_once_and_revoke_ends_it(
    services: Services, app: Callable[..., AppTest]
) -> None:
    at = app("pages/tokens.py")
    assert at.title[0].value == "API tokens"
    assert any("You have no active tokens" in i.value for i in at.info)
    at.text_input[0].input("nightly sync")
    at.button[0].click().run()
    secret = at.code[0].value
    assert secret.startswith(tokens.PREFIX) and len(secret) >= 40
    made = tokens.authenticate(services.db, secret)
    assert made is not None and made.owner == identity.SINGLE_USER and made.name == "nightly sync"
    assert made.expires_at is not None  # 90 days by default
    at.run()  # the next run no longer shows the secret
    assert not at.code
    assert any("nightly sync" in m.value for m in at.markdown)
    revoke = next(b for b in at.button if b.key == f"revoke-{made.id}")
    revoke.click().run()
    assert tokens.authenticate(services.db, secret) is None
    assert any("You have no active tokens" in i.value for i in at.info)
