"""Which hosts an engine may download from: each host belongs to one live engine at a time.

The live engines (the `worker` table: workers, the app's embedded engine, `run` engines, all
heartbeating) split the hosts that have work: the hosts of the queued and downloading images
of active jobs. Each engine computes the same split from the same two lists, so no table or
lock is needed:

- rendezvous hashing (highest random weight): a host goes to the engine with the highest
  hash(host, engine), so when an engine joins or leaves only the hosts it gains or loses move;
- with a bounded load: no engine takes more than ceil(hosts / engines), so every engine gets
  work as long as there are at least as many hosts as engines (plain rendezvous leaves some
  engines idle by chance when there are few hosts).

A host moves when its owner dies (its heartbeat stops and it drops out of the live list) or the
set of engines or hosts changes. The new owner takes a host only once no other engine holds a
lease on an image of it (`Split.claimable`), and the old owner gives back the images it claimed
for it and had not started, so the host's per-host limits, learned rate and breaker stay in one
engine. Leases still make every image recorded exactly once, whatever the split says.

Host names are compared as stored (`image.host`), hashed after `downloader.hosts.host_key`
normalisation, so two spellings of one host go to the same engine.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from sqlalchemy import case, func, select

from downloader.db import Database
from downloader.hosts import host_key
from downloader.models import IMAGE, JOB, ImageStatus, JobStatus


@lru_cache(maxsize=65_536)
def _key(stored: str) -> str:
    """The `host_key` of a stored host[:port] (the port as typed, 0 when absent)."""
    try:
        parts = urlsplit(f"//{stored}")
        port = parts.port or 0
        name = parts.hostname or stored
    except ValueError:
        return stored
    return host_key(name, port)


def _weight(host: str, engine: str) -> int:
    digest = hashlib.blake2b(f"{host}\x00{engine}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign(hosts: Iterable[str], engines: Sequence[str]) -> dict[str, str]:
    """host -> engine: rendezvous hashing with a bounded load of ceil(hosts / engines).

    Deterministic: every engine that sees the same hosts and engines gets the same answer."""
    names = sorted(set(hosts), key=lambda h: (_weight(_key(h), ""), h))
    if not engines:
        return {}
    cap = max(1, math.ceil(len(names) / len(engines)))
    load = dict.fromkeys(engines, 0)
    owners: dict[str, str] = {}
    for host in names:
        key = _key(host)
        for engine in sorted(engines, key=lambda e: _weight(key, e), reverse=True):
            if load[engine] < cap:
                owners[host] = engine
                load[engine] += 1
                break
    return owners


@dataclass(frozen=True, slots=True)
class Split:
    """This engine's part of the hosts with work."""

    owned: frozenset[str]  # hosts this engine owns now
    claimable: frozenset[str]  # ... of which no other engine holds a lease now


def hosts_with_work(db: Database, me: str) -> dict[str, bool]:
    """Stored host -> whether another engine holds a lease on one of its images, for every
    host with queued or downloading images in active jobs. One grouped read through the
    (job_id, status) index."""
    busy_elsewhere = func.max(
        case(
            (
                (IMAGE.c.status == ImageStatus.DOWNLOADING) & (IMAGE.c.lease_owner != me),
                1,
            ),
            else_=0,
        )
    )
    active = select(JOB.c.id).where(JOB.c.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
    with db.read() as session:
        rows = session.execute(
            select(IMAGE.c.host, busy_elsewhere)
            .where(
                IMAGE.c.job_id.in_(active.scalar_subquery()),
                IMAGE.c.status.in_([ImageStatus.QUEUED, ImageStatus.DOWNLOADING]),
            )
            .group_by(IMAGE.c.host)
        ).all()
    return {host or "": bool(busy) for host, busy in rows}


def split(db: Database, me: str, engines: Sequence[str]) -> Split:
    """This engine's hosts among `engines` (the live ones, `me` among them)."""
    work = hosts_with_work(db, me)
    owners = assign(work, engines)
    owned = frozenset(host for host, engine in owners.items() if engine == me)
    return Split(owned, frozenset(host for host in owned if not work[host]))
