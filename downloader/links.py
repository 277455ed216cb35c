"""Signed, expiring download links (OIDC mode: docs/identity.md).

Streamlit's custom routes (app.py's /download/job/...) do not see `st.user`, so the job page
mints each download link for the person viewing it: the link carries the user and an expiry,
and an HMAC-SHA256 over (job id, user, expiry) with a server secret. The route accepts it only
while it is unexpired and unaltered, and then still checks that the user may see the job
(downloader.identity.may_see): a link stops working when the job changes hands.

The secret is DOWNLOAD_LINK_SECRET; when it is unset, one is generated once and kept in a file
next to the media folder (MEDIA_ROOT's parent: data/ by default), readable by this user only.
Several app servers behind one address must share DOWNLOAD_LINK_SECRET.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from downloader.settings import Settings

SECRET_FILE = "download-link-secret"  # noqa: S105 (a file name)
USER, EXPIRES, SIGNATURE = "user", "expires", "signature"  # the query parameters


class LinkError(ValueError):
    """A download link that is unsigned, altered or expired; the message says which."""


@dataclass(frozen=True)
class SignedLink:
    user: str
    expires: int


def secret_path(settings: Settings) -> Path:
    return Path(settings.media_root).resolve().parent / SECRET_FILE


def link_secret(settings: Settings) -> bytes:
    """The HMAC key: DOWNLOAD_LINK_SECRET, else the generated one (made on first use)."""
    if settings.download_link_secret:
        return settings.download_link_secret.encode()
    path = secret_path(settings)
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: when two processes start at once, one writes and both read the same key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_secret(path)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    for _ in range(50):  # another process may be between creating and writing the file
        value = path.read_text().strip()
        if value:
            return value.encode()
        time.sleep(0.02)
    raise LinkError(f"The download link secret file {path} is empty; delete it to make a new one.")


def signature(secret: bytes, job_id: str, user: str, expires: int) -> str:
    # Unit separators keep the fields apart: ("ab", "c") and ("a", "bc") sign differently.
    message = "\x1f".join((job_id, user, str(expires))).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign(secret: bytes, job_id: str, user: str, ttl: int, now: float | None = None) -> str:
    """The query string (without "?") that lets `user` download job `job_id` for `ttl` s."""
    expires = int((time.time() if now is None else now) + ttl)
    return urlencode(
        {USER: user, EXPIRES: expires, SIGNATURE: signature(secret, job_id, user, expires)}
    )


def verify(
    secret: bytes, job_id: str, params: dict[str, str], now: float | None = None
) -> SignedLink:
    """The link's user and expiry; LinkError when it is unsigned, altered or expired."""
    user, expires_text, given = params.get(USER), params.get(EXPIRES), params.get(SIGNATURE)
    if not user or not expires_text or not given:
        raise LinkError("This download needs a signed link: open it from the job's page.")
    if not expires_text.isdigit() or len(expires_text) > 12:
        raise LinkError("This download link is damaged: open it again from the job's page.")
    expires = int(expires_text)
    expected = signature(secret, job_id, user, expires)
    if not hmac.compare_digest(expected.encode(), given.lower().encode("ascii", "replace")):
        raise LinkError("This download link is damaged: open it again from the job's page.")
    if expires < (time.time() if now is None else now):
        raise LinkError("This download link has expired: open it again from the job's page.")
    return SignedLink(user, expires)
