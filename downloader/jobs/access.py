"""Who may open a job: the owner and admins (downloader.identity), everyone in single-user mode.

Anyone else gets exactly the answer for a job that does not exist (None, or JobNotFound with
the same message), so nothing about another person's job leaks: not its name, its counts or
its products.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import select

from downloader import identity, links
from downloader.db import Database
from downloader.errors import JobNotFound
from downloader.identity import Mode, Viewer, may_see
from downloader.models import JOB, Job, JobPublic
from downloader.settings import Settings


class DownloadRefused(Exception):
    """A download route's request with no identity (403): no header, no valid signed link."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def not_found(job_id: str) -> JobNotFound:
    return JobNotFound(f"No job with id {job_id!r}.")


def job_for(db: Database, job_id: str, person: Viewer) -> JobPublic | None:
    """Job `job_id` when `person` may see it; None when it does not exist or is not theirs."""
    with db.read() as session:
        job = session.get(Job, job_id)
        if job is None or not may_see(person, job.owner):
            return None
        return JobPublic.model_validate(job, from_attributes=True)


def require_job(db: Database, job_id: str, person: Viewer | None) -> None:
    """Raise JobNotFound (as for a missing job) unless `person` may control job `job_id`;
    None (the command line, the engine) may control every job."""
    if person is None:
        return
    with db.read() as session:
        row = session.execute(select(JOB.c.owner).where(JOB.c.id == job_id)).first()
    if row is None or not may_see(person, row[0]):
        raise not_found(job_id)


def job_owners(db: Database, limit: int = 1000) -> list[str | None]:
    """The distinct owners of jobs, for an admin's filter (None: jobs made before owners)."""
    with db.read() as session:
        rows = session.execute(
            select(JOB.c.owner).distinct().order_by(JOB.c.owner).limit(limit)
        ).all()
    return [row[0] for row in rows]


def job_to_download(
    db: Database,
    settings: Settings,
    job_id: str,
    *,
    mode: Mode,
    header_values: Sequence[str] = (),
    params: Mapping[str, str] | None = None,
    now: float | None = None,
) -> JobPublic:
    """The job a download route (app.py's /download/job/...) may send, for the person asking:
    in header mode the proxy's header (`header_values`: its every occurrence), with st.login
    a signed link (`params`: the query, downloader.links), in single-user mode anyone.
    DownloadRefused (403) without either; JobNotFound, exactly as for a missing job, when
    the job is someone else's."""
    if mode == Mode.HEADER:
        person = identity.viewer(settings, mode, identity.header_identity(header_values))
        if person is None:
            raise DownloadRefused(identity.PORTAL_MESSAGE)
    elif mode == Mode.OIDC:
        try:
            link = links.verify(links.link_secret(settings), job_id, dict(params or {}), now)
        except links.LinkError as exc:
            raise DownloadRefused(str(exc)) from None
        person = identity.viewer(settings, mode, link.user)
        if person is None:  # signed with a secret, so made by us: never expected
            raise DownloadRefused(
                "This download link is damaged: open it again from the job's page."
            )
    else:
        person = identity.viewer(settings, mode)
    assert person is not None
    job = job_for(db, job_id, person)
    if job is None:
        raise not_found(job_id)
    return job
