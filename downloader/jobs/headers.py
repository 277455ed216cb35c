"""A job's own request headers in the jobs service: replace them, and what the job page shows.

Parsing and validation live in downloader.request_headers (also used by the CLI and the
engine); the values (cookies, tokens) are never returned from here, only names and hosts.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update

from downloader.db import Database
from downloader.errors import JobNotFound
from downloader.job_headers import load_job_headers
from downloader.models import JOB
from downloader.request_headers import HeaderError, RequestHeaders, parse_header_text, to_json

__all__ = [
    "MASK",
    "HeaderError",
    "RequestHeaders",
    "ShownHeader",
    "parse_header_text",
    "request_headers_shown",
    "set_request_headers",
]

MASK = "••••••"


@dataclass(frozen=True)
class ShownHeader:
    """One header as the job page shows it to the job's owner: where and which, never its value."""

    scope: str  # "every host" or the host pattern
    name: str
    value: str = MASK


def shown(stored: RequestHeaders) -> list[ShownHeader]:
    """Names and hosts of `stored`, every value masked (Cookie, Authorization and the rest)."""
    rows = [ShownHeader("every host", name) for name, _ in stored.common]
    rows += [ShownHeader(host, name) for host, items in stored.hosts for name, _ in items]
    return rows


def set_request_headers(db: Database, job_id: str, headers: RequestHeaders) -> None:
    """Replace job `job_id`'s request headers (`run` resuming a job with this command line's)."""
    with db.write() as session:
        session.execute(
            update(JOB).where(JOB.c.id == job_id).values(request_headers=to_json(headers))
        )


def request_headers_shown(
    db: Database, job_id: str, viewer: str | None
) -> tuple[list[ShownHeader], bool] | None:
    """The job's header names and hosts (values masked) and its "any format" option, for the
    job page: for the job's owner (`viewer` equal to the job's owner) or, for a job without an
    owner (single-user mode, jobs made before owners), for whoever may open the job. None for
    anyone else, and for a job without headers."""
    with db.read() as session:
        row = session.execute(
            select(JOB.c.owner, JOB.c.request_headers).where(JOB.c.id == job_id)
        ).first()
    if row is None:
        raise JobNotFound(f"no job {job_id}")
    owner, stored = row
    if not stored or (owner is not None and viewer != owner):
        return None
    headers = load_job_headers(db, job_id)
    return shown(headers), headers.any_format
