"""Who is viewing: the identity mode's facts as Streamlit sees them (downloader.identity decides).

- `gate()` runs in the navigation script (app.py) before any page: signed-out visitors in
  OIDC mode get the sign-in page only; in header mode a request without the proxy's header
  gets the "sign in through your company portal" message only.
- `viewer()` is the person behind this page view, for the pages to pass to the jobs service.
- `signed_query(job_id)` makes the download links of the job page work in OIDC mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import streamlit as st

from downloader import identity, links
from downloader.identity import Mode, Viewer
from pages import _common as common


def _auth_section() -> Mapping[str, Any] | None:
    """The `[auth]` section of the secrets (.streamlit/secrets.toml), or None. A secrets file
    that exists but cannot be read stops the page (never falls back to single-user mode)."""
    from streamlit import config
    from streamlit.errors import StreamlitSecretNotFoundError

    try:
        auth = st.secrets.get("auth")
    except StreamlitSecretNotFoundError:
        if any(Path(path).is_file() for path in config.get_option("secrets.files")):
            raise
        return None
    return auth if isinstance(auth, Mapping) else None


def oidc_configured() -> bool:
    return _auth_section() is not None


def mode() -> Mode:
    return identity.identity_mode(common.services().settings, oidc_configured=oidc_configured())


def providers() -> list[str | None]:
    """The `st.login` providers: None for a lone `[auth]` provider, else the names of the
    `[auth.NAME]` sections."""
    auth = _auth_section() or {}
    if "client_id" in auth:
        return [None]
    return [name for name, value in auth.items() if isinstance(value, Mapping)]


def viewer() -> Viewer | None:
    """The person behind this page view; None when a sign-in mode has none."""
    settings = common.services().settings
    current = mode()
    if current == Mode.HEADER:
        name = settings.trusted_user_header or ""
        return identity.viewer(
            settings, current, identity.header_identity(st.context.headers.get_all(name))
        )
    if current == Mode.OIDC:
        if not st.user.is_logged_in:
            return None
        user = st.user.to_dict()
        return identity.viewer(settings, current, user.get("email") or user.get("sub"))
    return identity.viewer(settings, current)


def require_viewer() -> Viewer:
    """The viewer, for a page; a page view without one stops here (gate() normally has
    already answered it)."""
    person = viewer()
    if person is None:
        st.error(identity.PORTAL_MESSAGE)
        st.stop()
    return person


def _sign_in_page() -> None:
    st.title("Batch Image Downloader")
    st.write("Sign in to create jobs and see your downloads.")
    for provider in providers():
        label = "Sign in" if provider is None else f"Sign in with {provider}"
        st.button(
            label,
            type="primary",
            icon=":material/login:",
            key=f"sign-in-{provider or ''}",
            on_click=st.login,
            args=() if provider is None else (provider,),
        )


def _portal_page() -> None:
    st.title("Batch Image Downloader")
    st.error(identity.PORTAL_MESSAGE, icon=":material/lock:")


def gate() -> Viewer | None:
    """In the navigation script: the viewer, with the sidebar showing who is signed in; or,
    for nobody, the sign-in page (OIDC) or the portal message (header mode) only: the caller
    then shows no page."""
    person = viewer()
    if person is None:
        only = _sign_in_page if mode() == Mode.OIDC else _portal_page
        st.navigation([st.Page(only, title="Sign in", url_path="sign-in")], position="hidden").run()
        return None
    if person.mode != Mode.SINGLE:
        with st.sidebar:
            st.caption(
                f"Signed in as **{common.md_text(person.email, 320)}**"
                + (" (admin)" if person.admin else "")
            )
            if person.mode == Mode.OIDC:
                st.button("Sign out", icon=":material/logout:", key="sign-out", on_click=st.logout)
    return person


def signed_query(job_id: str, person: Viewer) -> str:
    """ "?user=…&expires=…&signature=…" for the job's download links in OIDC mode (the
    download routes do not see `st.user`); "" in the other modes."""
    if person.mode != Mode.OIDC:
        return ""
    settings = common.services().settings
    secret = links.link_secret(settings)
    return "?" + links.sign(secret, job_id, person.email, settings.download_link_ttl)
