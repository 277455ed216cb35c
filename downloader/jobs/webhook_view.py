"""A job's webhook delivery as its page shows it: one line of state for whoever may open the
job, and the callback URL (redacted: downloader.redact) for the job's owner only."""

from __future__ import annotations

import re
from dataclasses import dataclass

from downloader import webhooks
from downloader.db import Database
from downloader.redact import redact_text, redact_url

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
ERROR_SHOWN = 300  # characters of a delivery's error on the page


@dataclass(frozen=True)
class WebhookView:
    line: str  # "Webhook: sent (1 attempt)", "Webhook: failed after 6 attempts: ..."
    url: str | None  # the callback URL, redacted; None unless the viewer owns the job


def _attempts(count: int) -> str:
    return f"{count} attempt{'' if count == 1 else 's'}"


def webhook_view(db: Database, job_id: str, viewer: str) -> WebhookView | None:
    """The job's webhook line for `viewer` (an e-mail); None when the job has no callback."""
    state = webhooks.state(db, job_id, viewer)
    if state is None:
        return None
    url = state["callback_url"]
    attempts = int(str(state["attempts"] or 0))
    error = str(state["error"] or "")
    # an error may quote the target: masked secrets for its owner, no URL at all for others
    error = redact_text(error) if url else _URL.sub("(the callback URL)", error)
    error = error[:ERROR_SHOWN]
    status = state["status"]
    if status == webhooks.SENT:
        line = f"Webhook: sent ({_attempts(attempts)})"
    elif status == webhooks.FAILED:
        line = f"Webhook: failed after {_attempts(attempts)}: {error or 'no reason recorded'}"
    elif status == webhooks.SENDING:
        line = f"Webhook: sending (attempt {attempts})"
    elif attempts:
        line = f"Webhook: pending, retried after {_attempts(attempts)}: {error}"
    else:
        line = "Webhook: pending (sent when the job ends)"
    return WebhookView(line, redact_url(str(url)) if url else None)
