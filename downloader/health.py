"""The system check: is everything the app needs working? Used by the page and the CLI."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from downloader import jobs
from downloader.redact import redact_text
from downloader.services import Services

MIN_FREE_DISK_BYTES = 1 << 30


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def system_check(services: Services, *, engine_expected: bool | None = None) -> list[Check]:
    settings = services.settings
    checks: list[Check] = []
    try:
        services.db.ping()
        checks.append(Check("Database", True, f"{services.db.url.get_backend_name()} reachable"))
    except Exception as exc:
        checks.append(Check("Database", False, f"Cannot reach the database: {exc}"))
    try:
        checks.append(Check("Storage", True, services.storage.check()))
    except Exception as exc:
        checks.append(Check("Storage", False, str(exc)))
    if settings.media_backend == "local":
        root = Path(settings.media_root)
        root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(root).free
        checks.append(
            Check(
                "Free disk",
                free >= MIN_FREE_DISK_BYTES,
                f"{free / 2**30:.1f} GiB free under {root}",
            )
        )
    expected = settings.embedded_worker if engine_expected is None else engine_expected
    try:
        workers = jobs.live_workers(services.db, stale_after=settings.worker_lease_seconds * 2)
        if workers:
            newest = max(w.heartbeat_at for w in workers)
            detail = (
                f"{len(workers)} live engine(s); last heartbeat {time.time() - newest:.0f} s ago"
            )
            checks.append(Check("Engine", True, detail))
        else:
            checks.append(
                Check(
                    "Engine",
                    not expected,
                    "No engine is running" + ("" if expected else " (external workers expected)"),
                )
            )
    except Exception as exc:
        checks.append(Check("Engine", False, f"Cannot read workers: {exc}"))
    # Details quote endpoints and driver errors: no credentials or tokens in what is shown.
    return [Check(check.name, check.ok, redact_text(check.detail)) for check in checks]


def effective_settings(services: Services) -> dict[str, str]:
    """The settings in force, for display: secrets masked (Settings.masked)."""
    return {name: str(value) for name, value in services.settings.masked().items()}
