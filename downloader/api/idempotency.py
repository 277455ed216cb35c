"""Idempotency-Key for POST /v1/jobs: the same key from the same owner within 24 h gives the
first job instead of a second one.

The key is reserved before the job is made (a row with job_id NULL; unique owner + key), so
two requests racing with one key make one job: the second waits for the first's job id. A
request that fails before making its job releases the key.
"""

from __future__ import annotations

import re
import time

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from downloader.api.errors import ApiError
from downloader.db import Database
from downloader.models import IDEMPOTENCY_KEY

KEEP_SECONDS = 24 * 3600
WAIT_SECONDS = 60.0  # how long a racing request waits for the first one's job
_KEY = re.compile(r"[!-~]{1,200}")  # printable ASCII without spaces
RESERVED = ""


def check_key(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise ApiError(
            400, "bad_idempotency_key", "Idempotency-Key must be 1-200 printable ASCII characters."
        )
    return key


def reserve(db: Database, owner: str, key: str) -> str:
    """RESERVED when this request is the key's first (it must then `complete` or `release`
    it); else the job id the key's first request made."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        now = time.time()
        with db.write() as session:
            session.execute(
                delete(IDEMPOTENCY_KEY).where(
                    IDEMPOTENCY_KEY.c.owner == owner,
                    IDEMPOTENCY_KEY.c.key == key,
                    IDEMPOTENCY_KEY.c.created_at < now - KEEP_SECONDS,
                )
            )
        try:
            with db.write() as session:
                session.execute(
                    insert(IDEMPOTENCY_KEY).values(
                        owner=owner, key=key, job_id=None, created_at=now
                    )
                )
            return RESERVED
        except IntegrityError:
            pass
        with db.read() as session:
            row = session.execute(
                select(IDEMPOTENCY_KEY.c.job_id).where(
                    IDEMPOTENCY_KEY.c.owner == owner, IDEMPOTENCY_KEY.c.key == key
                )
            ).first()
        if row is not None and row[0]:
            return str(row[0])
        if time.monotonic() > deadline:
            raise ApiError(
                409, "in_progress", "A request with this Idempotency-Key is still being handled."
            )
        time.sleep(0.2)  # the first request is still making its job (or has just failed)


def complete(db: Database, owner: str, key: str, job_id: str) -> None:
    with db.write() as session:
        session.execute(
            update(IDEMPOTENCY_KEY)
            .where(IDEMPOTENCY_KEY.c.owner == owner, IDEMPOTENCY_KEY.c.key == key)
            .values(job_id=job_id)
        )


def release(db: Database, owner: str, key: str) -> None:
    with db.write() as session:
        session.execute(
            delete(IDEMPOTENCY_KEY).where(
                IDEMPOTENCY_KEY.c.owner == owner, IDEMPOTENCY_KEY.c.key == key
            )
        )
