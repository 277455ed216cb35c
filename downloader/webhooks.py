"""Job webhooks: one signed POST to a job's callback_url when the job ends.

- Sent once per ending, whatever number of engines run: an engine claims a delivery with an
  atomic UPDATE (the row's status and attempt count as they were read), so only one of them
  sends it. A claim left by a process that died is taken over after CLAIM_STALE seconds.
- Retried with exponential backoff (RETRY_BASE * 2**attempts, at most RETRY_CAP) up to
  MAX_ATTEMPTS; the state is recorded on the job: webhook_status (pending, sending, sent,
  failed), webhook_attempts, webhook_error (one sentence), webhook_sent_at.
- The target passes the same guard as image URLs (downloader.guard), on the address actually
  connected to; a private address needs ALLOWED_PRIVATE_NETWORKS or WEBHOOK_ALLOWLIST (CIDRs).
  URL_ALLOWLIST is about image hosts and does not apply; URL_DENYLIST does. Redirects are
  never followed (a 3xx is a failure).
- Body: JSON {"id","name","status","products","images","done","duplicate","failed",
  "finished_at"}; header `X-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>` keyed by
  WEBHOOK_SECRET (GitHub's convention).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import or_, select, update

from downloader.db import Database, rowcount
from downloader.guard import AddressBlockedError, Guard, ResolveResult
from downloader.models import JOB, JobStatus
from downloader.settings import Settings

log = logging.getLogger(__name__)

PENDING, SENDING, SENT, FAILED = "pending", "sending", "sent", "failed"
ENDED = (JobStatus.COMPLETED, JobStatus.CANCELLED)
MAX_ATTEMPTS = 6
RETRY_BASE = 1.0  # seconds before the first retry; doubled each time
RETRY_CAP = 300.0
CLAIM_STALE = 120.0  # a "sending" claim older than this belongs to a dead process
SEND_TIMEOUT = 10.0  # seconds for the whole request
POLL_SECONDS = 1.0  # how often an engine looks for deliveries due
BATCH = 20
SIGNATURE_HEADER = "X-Signature-256"


def signature(secret: str, body: bytes) -> str:
    """The X-Signature-256 value for `body`: sha256=<hex HMAC-SHA256>."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_guard(settings: Settings) -> Guard:
    """The image guard with WEBHOOK_ALLOWLIST exempted too and without URL_ALLOWLIST."""
    exempt = [*settings.allowed_private_networks, *settings.webhook_allowlist]
    return Guard(
        settings.model_copy(update={"allowed_private_networks": exempt, "url_allowlist": []})
    )


def vet_callback(settings: Settings, url: str) -> str | None:
    """Why `url` cannot be a job's callback (one sentence), or None. No DNS (the address
    connected to is checked again when the webhook is sent)."""
    if len(url) > 2048:
        return "The callback_url is longer than 2048 characters."
    if not settings.webhook_secret:
        return "Webhooks are off: the server has no WEBHOOK_SECRET to sign them with."
    refusal = webhook_guard(settings).vet_url(url)
    return f"The callback_url is refused: {refusal.reason}" if refusal else None


def set_callback(db: Database, job_id: str, url: str) -> None:
    """Record `url` as the job's webhook target, pending until the job ends."""
    with db.write() as session:
        session.execute(
            update(JOB)
            .where(JOB.c.id == job_id)
            .values(callback_url=url, webhook_status=PENDING, webhook_attempts=0)
        )


def state(db: Database, job_id: str, viewer: str) -> dict[str, object] | None:
    """A job's webhook delivery for its page or the API (None: no callback): the URL only
    when `viewer` (an e-mail) owns the job."""
    with db.read() as session:
        row = session.execute(
            select(
                JOB.c.owner,
                JOB.c.callback_url,
                JOB.c.webhook_status,
                JOB.c.webhook_attempts,
                JOB.c.webhook_error,
                JOB.c.webhook_sent_at,
            ).where(JOB.c.id == job_id)
        ).first()
    if row is None or row[1] is None:
        return None
    owner, url, status, attempts, error, sent_at = row
    return {
        "callback_url": url if owner is not None and owner == viewer else None,
        "status": status,
        "attempts": attempts or 0,
        "error": error,
        "sent_at": sent_at,
    }


@dataclass
class Delivery:
    job_id: str
    url: str
    attempts: int  # counting this one


@dataclass(frozen=True)
class _Due:
    job_id: str
    url: str
    status: str  # as read: the claim only wins while it is unchanged
    stored_attempts: int
    tries: int  # attempts so far for this ending (0 for a job that ended again)


def _due(db: Database, now: float) -> list[_Due]:
    """Deliveries due now: pending ones past their backoff, claims of dead processes, and
    jobs that ended again (failures retried) after their last delivery."""
    with db.read() as session:
        rows = session.execute(
            select(
                JOB.c.id,
                JOB.c.callback_url,
                JOB.c.webhook_status,
                JOB.c.webhook_attempts,
                JOB.c.webhook_sent_at,
            )
            .where(
                JOB.c.callback_url.is_not(None),
                JOB.c.status.in_(ENDED),
                or_(
                    JOB.c.webhook_status == PENDING,
                    (JOB.c.webhook_status == SENDING) & (JOB.c.webhook_sent_at < now - CLAIM_STALE),
                    JOB.c.webhook_status.in_([SENT, FAILED])
                    & (JOB.c.finished_at > JOB.c.webhook_sent_at),
                ),
            )
            .limit(BATCH)
        ).all()
    due = []
    for job_id, url, status, attempts, last in rows:
        stored = int(attempts or 0)
        if status in (SENT, FAILED):  # a new ending: a new delivery
            due.append(_Due(job_id, url, status, stored, 0))
            continue
        waiting = min(RETRY_BASE * 2 ** (stored - 1), RETRY_CAP) if stored else 0.0
        if status == PENDING and last is not None and now < last + waiting:
            continue  # backing off after a failed attempt
        due.append(_Due(job_id, url, status, stored, stored))
    return due


def claim_due(db: Database, now: float | None = None) -> list[Delivery]:
    """Claim the deliveries that are due; each is claimed by one caller only (an UPDATE
    that matches only while the row is as it was read)."""
    now = time.time() if now is None else now
    claimed = []
    for item in _due(db, now):
        with db.write() as session:
            won = rowcount(
                session.execute(
                    update(JOB)
                    .where(
                        JOB.c.id == item.job_id,
                        JOB.c.webhook_status == item.status,
                        JOB.c.webhook_attempts == item.stored_attempts,
                    )
                    .values(
                        webhook_status=SENDING,
                        webhook_attempts=item.tries + 1,
                        webhook_error=None,
                        webhook_sent_at=now,
                    )
                )
            )
        if won:
            claimed.append(Delivery(item.job_id, item.url, item.tries + 1))
    return claimed


def payload(db: Database, job_id: str) -> bytes:
    from downloader.jobs.progress import get_job, job_counts

    job, counts = get_job(db, job_id), job_counts(db, job_id)
    body = {
        "id": job.id,
        "name": job.name,
        "status": job.status,
        "products": job.products,
        "images": job.images,
        "done": counts.done,
        "duplicate": counts.duplicate,
        "failed": counts.failed,
        "finished_at": job.finished_at,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def record(db: Database, delivery: Delivery, error: str | None, *, final: bool = False) -> None:
    """Write a delivery's outcome: sent, or its error (pending again, or failed when it was
    the last attempt or cannot succeed)."""
    if error is None:
        status = SENT
    elif final or delivery.attempts >= MAX_ATTEMPTS:
        status = FAILED
    else:
        status = PENDING
    with db.write() as session:
        session.execute(
            update(JOB)
            .where(JOB.c.id == delivery.job_id, JOB.c.webhook_status == SENDING)
            .values(
                webhook_status=status,
                webhook_error=(error or None) and error[:300],
                webhook_sent_at=time.time(),
            )
        )


def _resolver(guard: Guard) -> Any:
    """An aiohttp resolver that only hands out addresses the guard allows."""
    from aiohttp.abc import AbstractResolver

    class GuardedAiohttpResolver(AbstractResolver):
        def __init__(self) -> None:
            self._inner = guard.resolver()

        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_UNSPEC
        ) -> list[ResolveResult]:
            return await self._inner.resolve(host, port, family)

        async def close(self) -> None:
            await self._inner.close()

    return GuardedAiohttpResolver()


async def post(settings: Settings, url: str, body: bytes) -> tuple[str | None, bool]:
    """POST `body` to `url`: (None, _) when the receiver took it (2xx); else (the error
    sentence, whether a retry may help)."""
    import aiohttp

    guard = webhook_guard(settings)
    refusal = guard.vet_url(url)
    if refusal is not None:
        return refusal.reason, False
    secret = settings.webhook_secret or ""
    if not secret:
        return "WEBHOOK_SECRET is not set, so the webhook cannot be signed.", False
    headers = {
        "Content-Type": "application/json",
        "User-Agent": settings.user_agent,
        SIGNATURE_HEADER: signature(secret, body),
    }
    connector = aiohttp.TCPConnector(resolver=_resolver(guard), use_dns_cache=False)
    timeout = aiohttp.ClientTimeout(total=SEND_TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as s,
            s.post(url, data=body, headers=headers, allow_redirects=False) as resp,
        ):
            await resp.content.read(64 * 1024)  # a little of the answer, never all of it
            code = resp.status
    except AddressBlockedError as exc:
        return str(exc)[:300], False
    except aiohttp.ClientConnectorError as exc:
        cause = exc.os_error
        if isinstance(cause, AddressBlockedError):
            return str(cause)[:300], False
        return f"Could not connect to the callback host ({type(cause).__name__}).", True
    except TimeoutError:
        return f"The callback did not answer within {SEND_TIMEOUT:g} s.", True
    except (aiohttp.ClientError, OSError) as exc:
        return f"The callback request failed ({type(exc).__name__}).", True
    if 200 <= code < 300:
        return None, False
    if 300 <= code < 400:
        return f"The callback answered HTTP {code} (a redirect; redirects are not followed).", False
    retry = code in (408, 425, 429) or code >= 500
    return f"The callback answered HTTP {code}.", retry


async def deliver_due(db: Database, settings: Settings) -> int:
    """Claim and send every delivery that is due; how many were claimed."""
    import anyio

    deliveries = await anyio.to_thread.run_sync(claim_due, db)
    for delivery in deliveries:
        try:
            body = await anyio.to_thread.run_sync(payload, db, delivery.job_id)
            error, retry = await post(settings, delivery.url, body)
        except Exception as exc:
            log.exception("webhook of job %s failed", delivery.job_id)
            error, retry = f"The webhook could not be sent ({type(exc).__name__}).", True
        final = not retry and error is not None
        await anyio.to_thread.run_sync(partial(record, db, delivery, error, final=final))
    return len(deliveries)


async def webhook_loop(db: Database, settings: Settings) -> None:
    """An engine's housekeeping task: send the webhooks that are due, every POLL_SECONDS."""
    import anyio

    while True:
        try:
            await deliver_due(db, settings)
        except Exception:  # a database hiccup: try again next time
            log.exception("webhook delivery failed")
        await anyio.sleep(POLL_SECONDS)
