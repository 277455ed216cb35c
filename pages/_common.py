"""What every page shares: the process-wide services, the session id, links and formatting.

The app's lifespan (app.py) builds the Services once per server process and starts the
embedded engine; it registers both here with `install`. Where no lifespan ran (AppTest, or a
plain script run), `services()` falls back to building them once with st.cache_resource.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from typing import TYPE_CHECKING
from urllib.parse import quote

import pandas as pd
import streamlit as st

from downloader.redact import redact_text
from downloader.services import Services, build_services

if TYPE_CHECKING:
    from downloader.services import EngineThread

JOB_PAGE = "pages/job.py"
JOBS_PAGE = "pages/jobs.py"
NEW_JOB_PAGE = "pages/new_job.py"
SYSTEM_PAGE = "pages/system.py"

_lock = threading.Lock()
_installed: dict[str, object] = {}


def install(services: Services | None, engine: EngineThread | None = None) -> None:
    """Register (or with None, forget) the process-wide services and embedded engine."""
    with _lock:
        _installed.clear()
        if services is not None:
            _installed["services"] = services
        if engine is not None:
            _installed["engine"] = engine


def installed_services() -> Services | None:
    found = _installed.get("services")
    return found if isinstance(found, Services) else None


def engine_thread() -> EngineThread | None:
    return _installed.get("engine")  # type: ignore[return-value]


@st.cache_resource(show_spinner=False)
def _fallback_services() -> Services:
    return build_services()


def services() -> Services:
    """The process-wide Services (from the lifespan, else built once for this process)."""
    return installed_services() or _fallback_services()


def session_id() -> str:
    """A random id for this browser session (the job rate limit counts per session)."""
    if "session_id" not in st.session_state:
        st.session_state["session_id"] = "web-" + uuid.uuid4().hex[:16]
    return str(st.session_state["session_id"])


def base_path() -> str:
    """server.baseUrlPath as a prefix ("" or "/something") for links to the custom routes."""
    from streamlit import config

    base = str(config.get_option("server.baseUrlPath") or "").strip("/")
    return f"/{base}" if base else ""


def job_url(job_id: str) -> str:
    """Relative link to a job's page; bookmarkable and shareable."""
    return f"{base_path()}/job?id={quote(job_id)}"


def job_zip_url(job_id: str) -> str:
    return f"{base_path()}/download/job/{quote(job_id)}.zip"


def manifest_url(job_id: str) -> str:
    return f"{base_path()}/download/job/{quote(job_id)}/manifest.csv"


def failed_csv_url(job_id: str) -> str:
    return f"{base_path()}/download/job/{quote(job_id)}/failed.csv"


def rejected_csv_url(job_id: str) -> str:
    return f"{base_path()}/download/job/{quote(job_id)}/rejected.csv"


_MARKDOWN_ACTIVE = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
# GitHub-flavoured Markdown links bare URLs, www. names and e-mail addresses by a search over
# the parsed text, after escapes are resolved: an invisible WORD JOINER breaks the pattern.
_AUTOLINK = re.compile(r"(?i)(?<![a-z0-9])(https?|ftp|www|mailto|xmpp)(?=[:.])|(@)")
WORD_JOINER = "\u2060"


def md_text(value: object, limit: int = 300) -> str:
    """User text (a job or file name, a query parameter, a server's message) for an element
    that renders Markdown (title, caption, alerts, markdown): every ASCII punctuation
    character is backslash-escaped, so links, images, HTML, code spans, emphasis and
    directives show as the characters typed; bare URLs and e-mail addresses get an invisible
    WORD JOINER so they are not linked; control characters become spaces; more than `limit`
    characters are cut with an ellipsis. (Streamlit has no escaper of its own, and
    `unsafe_allow_html=False` still renders links and images.)"""
    text = _CONTROL.sub(" ", str(value))
    if len(text) > limit:
        text = text[:limit] + "…"
    text = _AUTOLINK.sub(lambda match: match.group(0) + WORD_JOINER, text)
    return _MARKDOWN_ACTIVE.sub(r"\\\1", text)


def redacted(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """`frame` with the URLs in `columns` redacted for display (userinfo passwords, token
    query values: downloader.redact); the exports keep them as given."""
    shown = frame.copy()
    for column in columns:
        if column in shown.columns:
            shown[column] = shown[column].map(
                lambda value: redact_text(value) if isinstance(value, str) else value
            )
    return shown


def open_job(job_id: str) -> None:
    """Go to a job's detail page (stable URL /job?id=...)."""
    st.switch_page(JOB_PAGE, query_params={"id": job_id})


def age(timestamp: float | None, now: float | None = None) -> str:
    """'just now', '5 min ago', '3 h ago', '2 days ago'."""
    if not timestamp:
        return ""
    seconds = max(0.0, (now or time.time()) - timestamp)
    if seconds < 45:
        return "just now"
    if seconds < 3600:
        return f"{round(seconds / 60)} min ago"
    if seconds < 86400 * 2:
        return f"{round(seconds / 3600)} h ago"
    return f"{round(seconds / 86400)} days ago"


def duration(seconds: float | None) -> str:
    """'45 s', '3 min 20 s', '2 h 05 min'; '—' when unknown."""
    if seconds is None:
        return "—"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


STATUS_BADGES = {
    "queued": ("Queued", "gray", ":material/schedule:"),
    "running": ("Running", "blue", ":material/sync:"),
    "paused": ("Paused", "orange", ":material/pause:"),
    "cancelled": ("Cancelled", "red", ":material/cancel:"),
    "completed": ("Completed", "green", ":material/check_circle:"),
}


def status_label(status: str) -> str:
    return STATUS_BADGES.get(status, (status.title(), "gray", ""))[0]


def status_badge(status: str) -> None:
    label, color, icon = STATUS_BADGES.get(status, (status.title(), "gray", None))
    st.badge(label, color=color, icon=icon or None)  # type: ignore[arg-type]
