"""Batch Image Downloader: the Streamlit app.

`streamlit run app.py` finds the `st.App` below and serves it:
- its lifespan builds the services once per server process, starts the embedded engine
  (when EMBEDDED_WORKER is on) and stops it cleanly on shutdown;
- its custom routes stream the big downloads (the master ZIP, the manifest, the failed and the
  rejected rows) straight from storage, never through st.download_button, which holds data in
  memory;
- its script is this same file: run by Streamlit (with a script context), it is the navigation
  script that lists the pages in pages/ with st.navigation + st.Page.

`python app.py` starts the same server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import streamlit as st
from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

HERE = Path(__file__).resolve().parent
SIZED_ZIP_MAX_IMAGES = 100_000  # bigger finished jobs' ZIPs are sent without Content-Length


@lru_cache(maxsize=1)
def _favicon() -> Any:
    """A small picture-frame icon drawn with Pillow (served by Streamlit itself)."""
    from PIL import Image, ImageDraw

    icon = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(icon)
    draw.rounded_rectangle((2, 8, 62, 56), radius=8, fill=(255, 75, 75, 255))
    draw.polygon([(10, 48), (26, 26), (38, 40), (44, 32), (54, 48)], fill=(255, 255, 255, 255))
    draw.ellipse((42, 14, 52, 24), fill=(255, 255, 255, 255))
    return icon


def main() -> None:
    """The navigation script: one run per page view."""
    st.set_page_config(
        page_title="Batch Image Downloader",
        # A generated image: a material or emoji icon (ours or a page's) makes the browser
        # fetch the favicon from a CDN.
        page_icon=_favicon(),
        layout="wide",
    )
    st.session_state["app_runs"] = st.session_state.get("app_runs", 0) + 1
    from pages import _identity

    if _identity.gate() is None:  # signed out: the sign-in page or the portal message only
        return
    pages = [
        st.Page(
            "pages/new_job.py",
            title="New job",
            icon=":material/add_photo_alternate:",
            default=True,
        ),
        st.Page("pages/jobs.py", title="Jobs", icon=":material/list_alt:", url_path="jobs"),
        st.Page("pages/job.py", title="Job detail", icon=":material/monitoring:", url_path="job"),
        st.Page("pages/tokens.py", title="API tokens", icon=":material/key:", url_path="tokens"),
        st.Page(
            "pages/system.py",
            title="System check",
            icon=":material/health_and_safety:",
            url_path="system",
        ),
    ]
    st.navigation(pages).run()


# ---------------------------------------------------------------- server side (st.App)


@asynccontextmanager
async def lifespan(_app: Any) -> AsyncIterator[dict[str, Any]]:
    """Once per server process: build the services, run the embedded engine, stop it."""
    import anyio

    from downloader.services import EngineThread, build_services
    from pages import _common

    services = await anyio.to_thread.run_sync(build_services)
    engine = EngineThread(services) if services.settings.embedded_worker else None
    if engine is not None:
        engine.start()
    _common.install(services, engine)
    try:
        yield {"services": services, "engine": engine}
    finally:
        _common.install(None)
        if engine is not None:
            await anyio.to_thread.run_sync(engine.stop)
        services.db.dispose()


def _attachment(filename: str) -> dict[str, str]:
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "_")
    return {
        "Content-Disposition": f'attachment; filename="{ascii_name}"; '
        f"filename*=UTF-8''{quote(filename)}",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }


def _authorised_job(services: Any, request: Any, job_id: str) -> Any:
    """The job a download request may have (docs/identity.md): by the SSO proxy's header, a
    signed link (st.login), or anyone in single-user mode; jobs.DownloadRefused or
    jobs.JobNotFound otherwise."""
    from downloader import identity, jobs
    from pages import _identity

    settings = services.settings
    mode = identity.identity_mode(settings, oidc_configured=_identity.oidc_configured())
    name = settings.trusted_user_header
    return jobs.job_to_download(
        services.db,
        settings,
        job_id,
        mode=mode,
        header_values=request.headers.getlist(name) if name else [],
        params=dict(request.query_params),
    )


def _export_endpoint(kind: str) -> Any:
    """A Starlette endpoint streaming one export of a job: 'zip', 'manifest', 'failed' or
    'rejected'."""
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response

    from downloader import byte_ranges, exports, jobs
    from downloader.models import JobStatus
    from downloader.read_ahead import read_ahead
    from pages import _common

    async def endpoint(request: Request) -> Response:
        services = _common.installed_services()
        if services is None:
            return PlainTextResponse("The app is starting; try again in a moment.", 503)
        job_id = str(request.path_params["job_id"])
        try:
            job = await run_in_threadpool(_authorised_job, services, request, job_id)
        except jobs.DownloadRefused as refused:  # no header, no valid signed link
            return PlainTextResponse(refused.message, 403)
        except jobs.JobNotFound:  # also another person's job: the same answer
            return PlainTextResponse(f"No job with id {job_id!r}.", 404)
        body: Iterator[bytes] | Iterator[bytes | memoryview]
        headers: dict[str, str] = {}
        status = 200
        if kind == "zip":
            body = jobs.job_zip(services.db, services.storage, job.id)
            name, media = jobs.zip_file_name(job), "application/zip"
            if job.status == JobStatus.COMPLETED and job.images <= SIZED_ZIP_MAX_IMAGES:
                # A finished job's rows no longer change, so its length is known up front:
                # the browser shows progress, and the body goes out without chunk framing.
                # Sizing reads every row once first (~15 ms per 1,000 images), so huge jobs
                # start at once instead, chunked.
                size = await run_in_threadpool(
                    exports.job_zip_size, services.db, services.storage, job.id
                )
                # ... and so is a range of it: resumed downloads (downloader.byte_ranges)
                answer = byte_ranges.plan(
                    size,
                    byte_ranges.zip_etag(job.id, size, job.finished_at),
                    request.headers.get("range"),
                    request.headers.get("if-range"),
                )
                if answer.status == 416:  # (the ZIP's generator has not started: nothing open)
                    return PlainTextResponse("Range Not Satisfiable", 416, answer.headers)
                headers, status = answer.headers, answer.status
                if status == 206:
                    body = byte_ranges.sliced(body, answer.start, answer.end)
        elif kind == "manifest":
            body = jobs.manifest_csv(services.db, job.id)
            name, media = f"job-{job.id}-manifest.csv", "text/csv; charset=utf-8"
        elif kind == "failed":
            body = jobs.failed_csv(services.db, job.id)
            name, media = f"job-{job.id}-failed.csv", "text/csv; charset=utf-8"
        else:
            body = jobs.rejected_csv(services.db, job.id)
            name, media = f"job-{job.id}-rejected.csv", "text/csv; charset=utf-8"
        return _stall_guarded_response()(
            read_ahead(body),
            status_code=status,
            media_type=media,
            headers=_attachment(name) | headers,
            stall_timeout=services.settings.download_stall_timeout,
        )

    return endpoint


SEND_PIECE_BYTES = 512 * 1024  # the most one send hands over (see _stall_guarded_response)


@lru_cache(maxsize=1)
def _stall_guarded_response() -> Any:
    """The response class of the downloads: a StreamingResponse that cuts off a client that
    stops reading.

    Under uvicorn (Streamlit's server) a send waits until the client has taken enough of what
    was sent before; a client that connects and never reads makes it wait forever, holding
    the stream (its read-ahead buffers and thread) all that time. Here each send gets
    `stall_timeout` seconds, and pieces are at most SEND_PIECE_BYTES, so a client counts as
    stalled when it takes less than that in `stall_timeout` seconds. A stalled stream is
    closed (its files and threads released) and the response ends unfinished: uvicorn then
    closes the connection, and the client sees a truncated download, never a complete-looking
    one.
    """
    import logging

    import anyio
    from starlette.responses import StreamingResponse
    from starlette.types import Message, Send

    log = logging.getLogger("app.downloads")

    class StallGuardedResponse(StreamingResponse):
        def __init__(self, *args: Any, stall_timeout: float, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.stall_timeout = stall_timeout

        async def stream_response(self, send: Send) -> None:
            async def send_in_time(message: Message) -> bool:
                with anyio.move_on_after(self.stall_timeout):
                    await send(message)
                    return True
                log.warning(
                    "A download client read nothing for %s s; its connection is closed.",
                    self.stall_timeout,
                )
                return False

            body = self.body_iterator
            try:
                start = {"type": "http.response.start", "status": self.status_code}
                if not await send_in_time(start | {"headers": self.raw_headers}):
                    return
                async for chunk in body:
                    view = memoryview(
                        chunk.encode(self.charset) if isinstance(chunk, str) else chunk
                    )
                    for at in range(0, len(view), SEND_PIECE_BYTES):
                        piece = view[at : at + SEND_PIECE_BYTES]
                        message = {"type": "http.response.body", "body": piece, "more_body": True}
                        if not await send_in_time(message):
                            return
                await send_in_time({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                close = getattr(body, "aclose", None)
                if close is not None:
                    await close()  # stops the read-ahead thread, closes files and reads

    return StallGuardedResponse


def routes(prefix: str = "") -> list[Any]:
    """The download routes (prefix = server.baseUrlPath, as "/path" or "")."""
    from starlette.routing import Mount, Route

    from downloader.api import create_api, metrics

    return [
        Route(f"{prefix}/download/job/{{job_id}}.zip", _export_endpoint("zip")),
        Route(f"{prefix}/download/job/{{job_id}}/manifest.csv", _export_endpoint("manifest")),
        Route(f"{prefix}/download/job/{{job_id}}/failed.csv", _export_endpoint("failed")),
        Route(f"{prefix}/download/job/{{job_id}}/rejected.csv", _export_endpoint("rejected")),
        # the HTTP API (downloader/api, docs/api.md) and Prometheus metrics (METRICS_ENABLED)
        Mount(f"{prefix}/api", app=create_api(_installed_services)),
        Route(f"{prefix}/metrics", metrics.endpoint(_installed_services)),
    ]


def _installed_services() -> Any:
    from pages import _common

    return _common.installed_services()


def _base_prefix() -> str:
    from streamlit import config

    base = str(config.get_option("server.baseUrlPath") or "").strip("/")
    return f"/{base}" if base else ""


if __name__ == "__main__" and get_script_run_ctx(suppress_warning=True) is not None:
    main()
else:
    from streamlit.runtime.pages_manager import PagesManager

    # pages/ holds the st.Page scripts that main() lists, not a "pages directory" app: left
    # to guess, Streamlit runs a fresh server's first page view of /jobs, /job, ... as that
    # file alone (its multipage v1 mode), skipping main() and so the sign-in gate.
    PagesManager.uses_pages_directory = False
    app = st.App(HERE / "app.py", lifespan=lifespan, routes=routes(_base_prefix()))
    if __name__ == "__main__":
        app.run()
