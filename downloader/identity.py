"""Who is asking: the three identity modes, admins, and who may see a job (docs/identity.md).

- single user: nothing configured (a laptop; the server listens on 127.0.0.1). Everyone who
  reaches the app is the one user and sees every job.
- OIDC: `st.login` with an `[auth]` section in .streamlit/secrets.toml. The pages read the
  signed-in e-mail from `st.user` and pass it here; downloads carry a signed link
  (downloader.links) because Streamlit's custom routes do not see `st.user`.
- header: TRUSTED_USER_HEADER names the request header an SSO proxy (oauth2-proxy, an
  identity-aware proxy) sets to the signed-in e-mail. A request without it gets nothing. The
  app must then be reachable only through the proxy, or anyone could send the header.

A proxy header wins over `[auth]` when both are configured: the proxy already signed the
person in. ADMIN_USERS (e-mails) see and control every job. Jobs made before owners were
recorded (owner NULL) are seen by admins, and by everyone in single-user mode.

No Streamlit here: the pages and app.py find the facts (is `[auth]` configured, what do
`st.user` and the request headers say) and this module decides.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from downloader.settings import Settings

SINGLE_USER = "local"  # the owner of jobs created in single-user mode
MAX_EMAIL_LENGTH = 320  # job.owner's column
# An identity as the proxy or the provider sends it: printable ASCII without spaces, quotes,
# angle brackets or backslashes (an e-mail address or a user name), so it is safe anywhere it
# is shown or stored.
_IDENTITY = re.compile(r"[!#-&(-;=?-\[\]-~]{1,320}")
PORTAL_MESSAGE = "Sign in through your company portal to use this app."


class Mode(StrEnum):
    SINGLE = "single"
    OIDC = "oidc"
    HEADER = "header"


MODE_DESCRIPTIONS = {
    Mode.SINGLE: "No sign-in is configured: single-user mode (everyone who reaches the app sees "
    "every job; keep the server on 127.0.0.1).",
    Mode.OIDC: "Sign-in with OpenID Connect (st.login, [auth] in .streamlit/secrets.toml).",
    Mode.HEADER: "Signed in by an SSO proxy: the e-mail comes from the {header} request header "
    "(the app must be reachable only through the proxy).",
}


@dataclass(frozen=True)
class Viewer:
    """The person behind a page view or a download."""

    email: str
    admin: bool
    mode: Mode

    @property
    def sees_everything(self) -> bool:
        return self.admin or self.mode == Mode.SINGLE

    @property
    def owner(self) -> str:
        """What a job this person creates records as its owner."""
        return self.email


def identity_mode(settings: Settings, *, oidc_configured: bool) -> Mode:
    if settings.trusted_user_header:
        return Mode.HEADER
    return Mode.OIDC if oidc_configured else Mode.SINGLE


def describe(settings: Settings, mode: Mode) -> str:
    """One sentence for the system check: which sign-in is configured."""
    return MODE_DESCRIPTIONS[mode].format(header=settings.trusted_user_header or "")


def normalise(identity: object) -> str | None:
    """An e-mail (or user name) as sent by a proxy or provider, lower-cased; None when it is
    missing, too long, or holds characters no address has."""
    if not isinstance(identity, str):
        return None
    value = identity.strip()
    if not _IDENTITY.fullmatch(value):
        return None
    return value.lower()


def is_admin(settings: Settings, email: str) -> bool:
    return email.lower() in settings.admin_users


def viewer(settings: Settings, mode: Mode, identity: object = None) -> Viewer | None:
    """The viewer for `identity` (the signed-in e-mail) in `mode`; None when a sign-in mode
    has no usable identity. Single-user mode ignores `identity`: there is one user."""
    if mode == Mode.SINGLE:
        return Viewer(SINGLE_USER, admin=False, mode=mode)
    email = normalise(identity)
    if email is None:
        return None
    return Viewer(email, admin=is_admin(settings, email), mode=mode)


def header_identity(values: Sequence[str]) -> str | None:
    """The identity in the TRUSTED_USER_HEADER values of one request (every occurrence of the
    header): None when it is missing, or repeated with different values (a client's own
    header that the proxy appended to instead of replacing)."""
    distinct = {value.strip() for value in values}
    return distinct.pop() if len(distinct) == 1 else None


def may_see(person: Viewer, owner: str | None) -> bool:
    """May `person` see (and control, and download) a job owned by `owner`?"""
    if person.sees_everything:
        return True
    return owner is not None and owner == person.email
