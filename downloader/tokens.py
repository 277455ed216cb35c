"""Personal API tokens for the HTTP API (downloader/api): create, list, revoke, authenticate.

A token is `bid_` + 43 URL-safe characters (32 random bytes). It is shown once, when made;
the database keeps only its SHA-256 (hex), so a copy of the database lets nobody in. A token
acts as its owner (an e-mail, as job.owner records it). Revocation and expiry are checked on
every request, so a revoked token is refused from the next request on.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import select, update

from downloader.db import Database, rowcount
from downloader.models import API_TOKEN, ApiToken

PREFIX = "bid_"  # tells a leaked token apart in logs and secret scanners
SECRET_BYTES = 32
MAX_NAME = 100
LAST_USED_EVERY = 60.0  # seconds: last_used_at is written at most this often per token


class TokenError(ValueError):
    """A token cannot be made as asked (the message is one sentence for a person)."""


@dataclass(frozen=True)
class TokenInfo:
    """A token as it may be shown: never its secret."""

    id: str
    owner: str
    name: str
    created_at: float
    last_used_at: float | None
    expires_at: float | None
    revoked_at: float | None

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "created_at": self.created_at,
            "last_used_at": self.last_used_at,
            "expires_at": self.expires_at,
        }


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def _info(row: ApiToken) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        owner=row.owner,
        name=row.name,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


def create_token(
    db: Database, owner: str, *, name: str = "", expires_days: float | None = None
) -> tuple[TokenInfo, str]:
    """Make a token for `owner`; (its info, the secret). The secret is not stored."""
    from downloader.identity import normalise

    person = normalise(owner)
    if person is None:
        raise TokenError("The owner must be an e-mail address or user name (no spaces).")
    if expires_days is not None and not 0 < expires_days <= 3650:
        raise TokenError("The expiry must be between 1 and 3650 days.")
    secret = PREFIX + secrets.token_urlsafe(SECRET_BYTES)
    now = time.time()
    row = ApiToken(
        owner=person,
        name=" ".join(name.split())[:MAX_NAME],
        token_hash=hash_secret(secret),
        created_at=now,
        expires_at=now + expires_days * 86400 if expires_days else None,
    )
    with db.write() as session:
        session.add(row)
        session.flush()
        info = _info(row)
    return info, secret


def list_tokens(
    db: Database, owner: str | None = None, *, active_only: bool = True
) -> list[TokenInfo]:
    """Tokens of `owner` (None: everyone's), newest first; without revoked and expired ones
    unless `active_only` is False."""
    query = select(ApiToken).order_by(API_TOKEN.c.created_at.desc())
    if owner is not None:
        query = query.where(API_TOKEN.c.owner == owner)
    if active_only:
        now = time.time()
        query = query.where(
            API_TOKEN.c.revoked_at.is_(None),
            (API_TOKEN.c.expires_at.is_(None)) | (API_TOKEN.c.expires_at > now),
        )
    with db.read() as session:
        return [_info(row) for row in session.execute(query).scalars()]


def revoke_token(db: Database, token_id: str, owner: str | None = None) -> bool:
    """Revoke token `token_id` (only when it is `owner`'s, unless owner is None); False when
    there is no such active token (or it is someone else's: the same answer)."""
    query = update(API_TOKEN).where(API_TOKEN.c.id == token_id, API_TOKEN.c.revoked_at.is_(None))
    if owner is not None:
        query = query.where(API_TOKEN.c.owner == owner)
    with db.write() as session:
        return bool(rowcount(session.execute(query.values(revoked_at=time.time()))))


def authenticate(db: Database, secret: str) -> TokenInfo | None:
    """The token behind `secret` when it is known, not revoked and not expired; else None."""
    if not secret.startswith(PREFIX) or len(secret) > 200:
        return None
    digest = hash_secret(secret)
    now = time.time()
    with db.read() as session:
        row = session.execute(
            select(ApiToken).where(API_TOKEN.c.token_hash == digest)
        ).scalar_one_or_none()
        info = _info(row) if row is not None else None
    if info is None or info.revoked_at is not None:
        return None
    if info.expires_at is not None and info.expires_at <= now:
        return None
    if info.last_used_at is None or now - info.last_used_at > LAST_USED_EVERY:
        with db.write() as session:
            session.execute(
                update(API_TOKEN).where(API_TOKEN.c.id == info.id).values(last_used_at=now)
            )
    return info
