"""The registry of live engines: register, heartbeat (renewing leases), reap the dead.

A worker's leases go back to the queue when it unregisters, stops heartbeating, or its
process is gone from this host. Every function takes the Database explicitly.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence

from sqlalchemy import delete, func, select, update
from sqlmodel import Session, col

from downloader.db import Database, rowcount
from downloader.leases import Renewal
from downloader.models import IMAGE, WORKER, ImageStatus, Worker
from downloader.processes import pid_alive


def make_worker_id(kind: str) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{kind}:{os.urandom(3).hex()}"


def register_worker(db: Database, worker_id: str, kind: str) -> None:
    with db.write() as session:
        session.add(Worker(id=worker_id, hostname=socket.gethostname(), pid=os.getpid(), kind=kind))


def unregister_worker(db: Database, worker_id: str) -> None:
    """Release every lease this worker holds and forget it."""
    with db.write() as session:
        _release_leases(session, [worker_id])
        session.execute(delete(WORKER).where(WORKER.c.id == worker_id))


def heartbeat(
    db: Database, worker_id: str, lease_seconds: float, in_flight: int, done_total: int
) -> Renewal:
    """Renew this worker's row and the leases of everything it holds; returns which images
    were found still its own (for leases.LeaseBook)."""
    now = time.time()
    with db.write() as session:
        session.execute(
            update(WORKER)
            .where(WORKER.c.id == worker_id)
            .values(heartbeat_at=now, in_flight=in_flight, done_total=done_total)
        )
        # Rows another transaction holds (this worker's own result batch, a reaper) are
        # being settled right now: skip them instead of waiting, so no lock cycle can form.
        mine = [
            row[0]
            for row in session.execute(
                select(col(IMAGE.c.id))
                .where(
                    col(IMAGE.c.lease_owner) == worker_id,
                    col(IMAGE.c.status) == ImageStatus.DOWNLOADING,
                )
                .with_for_update(skip_locked=True)
            )
        ]
        if mine:
            session.execute(
                update(IMAGE)
                .where(col(IMAGE.c.id).in_(mine))
                .values(lease_expires=now + lease_seconds)
            )
    return Renewal(until=now + lease_seconds, image_ids=frozenset(mine))


def live_worker_count(
    db: Database, stale_after: float, kinds: Sequence[str] = ("worker", "embedded")
) -> int:
    """Long-running engines that heartbeated recently (they share the deployment's limits)."""
    with db.read() as session:
        count = session.execute(
            select(func.count())
            .select_from(WORKER)
            .where(
                WORKER.c.heartbeat_at > time.time() - stale_after,
                WORKER.c.kind.in_(kinds),
            )
        ).scalar_one()
    return max(1, int(count))


def live_engines(
    db: Database, stale_after: float, kinds: Sequence[str] = ("worker", "embedded")
) -> list[str]:
    """Ids of the long-running engines that heartbeated recently, oldest first."""
    with db.read() as session:
        rows = session.execute(
            select(col(WORKER.c.id))
            .where(
                col(WORKER.c.heartbeat_at) > time.time() - stale_after,
                col(WORKER.c.kind).in_(kinds),
            )
            .order_by(col(WORKER.c.started_at), col(WORKER.c.id))
        ).scalars()
        return list(rows)


def reap_dead_workers(db: Database, stale_after: float) -> int:
    """Return leases of workers that stopped heartbeating or whose local process died.

    A process on this host that no longer exists cannot be holding anything, so its leases
    are returned at once instead of waiting for them to expire.
    """
    now = time.time()
    host = socket.gethostname()
    with db.write() as session:
        workers = session.execute(
            select(WORKER.c.id, WORKER.c.hostname, WORKER.c.pid, WORKER.c.heartbeat_at)
        ).all()
        dead = [
            wid
            for wid, hostname, pid, beat in workers
            if beat < now - stale_after or (hostname == host and not pid_alive(pid))
        ]
        if dead:
            _release_leases(session, dead)
            session.execute(delete(WORKER).where(WORKER.c.id.in_(dead)))
        # Leases whose owner vanished without a worker row (or expired) go back too.
        stale = (
            select(col(IMAGE.c.id))
            .where(col(IMAGE.c.status) == ImageStatus.DOWNLOADING, col(IMAGE.c.lease_expires) < now)
            .with_for_update(skip_locked=True)  # rows being written now: next round
        )
        expired = session.connection().execute(
            update(IMAGE)
            .where(col(IMAGE.c.id).in_(stale.scalar_subquery()))
            .values(status=ImageStatus.QUEUED, lease_owner=None, lease_expires=None)
        )
    return len(dead) + rowcount(expired)


def _release_leases(session: Session, worker_ids: Sequence[str]) -> None:
    session.execute(
        update(IMAGE)
        .where(
            IMAGE.c.lease_owner.in_(worker_ids),
            IMAGE.c.status == ImageStatus.DOWNLOADING,
        )
        .values(status=ImageStatus.QUEUED, lease_owner=None, lease_expires=None)
    )
