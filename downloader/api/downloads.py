"""The job's files: GET /v1/jobs/{id}/zip, /products/{product}/zip, /manifest.csv,
/failed.csv. The same streamed exports as the app's download routes (downloader.exports,
row chunks in short reads), cut off when the client stops reading (DOWNLOAD_STALL_TIMEOUT).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from downloader import byte_ranges, exports, jobs
from downloader.api.auth import Caller, CallerDep
from downloader.api.errors import ERRORS, ApiError, ErrorBody
from downloader.api.routes import visible_job
from downloader.api.streaming import StallGuardedResponse
from downloader.models import JobStatus
from downloader.read_ahead import read_ahead

router = APIRouter(tags=["downloads"], responses=ERRORS)
SIZED_ZIP_MAX_IMAGES = 100_000  # as app.py: bigger ZIPs start at once, without a length
ZIP: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/zip": {}}, "description": "The ZIP, streamed"}
}
RANGED: dict[int | str, dict[str, Any]] = {
    206: {"content": {"application/zip": {}}, "description": "One byte range of the ZIP"},
    416: {"model": ErrorBody, "description": "The range is outside the ZIP"},
}
CSV: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {}}, "description": "The CSV (UTF-8 with BOM), streamed"}
}


def _attachment(filename: str) -> dict[str, str]:
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "_")
    return {
        "Content-Disposition": f'attachment; filename="{ascii_name}"; '
        f"filename*=UTF-8''{quote(filename)}",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }


def _send(who: Caller, body: Iterator[Any], name: str, media: str, **more: str) -> Any:
    return StallGuardedResponse(
        read_ahead(body),
        media_type=media,
        headers=_attachment(name) | more,
        stall_timeout=who.services.settings.download_stall_timeout,
    )


@router.get(
    "/v1/jobs/{job_id}/zip",
    responses=ZIP | RANGED,
    summary="The master ZIP (a finished job's with HTTP Range)",
)
async def master_zip(job_id: str, request: Request, who: CallerDep) -> Any:
    services = who.services
    job = await run_in_threadpool(visible_job, who, job_id)
    more: dict[str, str] = {}
    status, start, end = 200, 0, -1
    if job.status == JobStatus.COMPLETED and job.images <= SIZED_ZIP_MAX_IMAGES:
        # a finished job's ZIP is the same bytes every time, of a known length: ranges hold
        size = await run_in_threadpool(exports.job_zip_size, services.db, services.storage, job.id)
        answer = byte_ranges.plan(
            size,
            byte_ranges.zip_etag(job.id, size, job.finished_at),
            request.headers.get("range"),
            request.headers.get("if-range"),
        )
        if answer.status == 416:
            raise ApiError(
                416,
                "range_not_satisfiable",
                f"The ZIP has {size} bytes; the range asked for is outside it.",
                headers=answer.headers,
            )
        more, status, start, end = answer.headers, answer.status, answer.start, answer.end
    body: Iterator[Any] = jobs.job_zip(services.db, services.storage, job.id)
    if status == 206:
        body = byte_ranges.sliced(body, start, end)
    response = _send(who, body, jobs.zip_file_name(job), "application/zip", **more)
    response.status_code = status
    return response


@router.get(
    "/v1/jobs/{job_id}/products/{product:path}/zip",
    responses=ZIP,
    summary="One product's ZIP (the product number URL-encoded)",
)
async def product_zip(job_id: str, product: str, who: CallerDep) -> Any:
    services = who.services
    job = await run_in_threadpool(visible_job, who, job_id)
    folders = await run_in_threadpool(jobs.product_folders, services.db, job.id, [product])
    if product not in folders:
        raise ApiError(404, "not_found", f"Job {job.id!r} has no product {product[:128]!r}.")
    body = jobs.product_zip(services.db, services.storage, job.id, product)
    name = jobs.zip_file_name(job, product, folder=folders[product])
    return _send(who, body, name, "application/zip")


@router.get("/v1/jobs/{job_id}/manifest.csv", responses=CSV, summary="The manifest")
async def manifest(job_id: str, who: CallerDep) -> Any:
    job = await run_in_threadpool(visible_job, who, job_id)
    body = jobs.manifest_csv(who.services.db, job.id)
    return _send(who, body, f"job-{job.id}-manifest.csv", "text/csv; charset=utf-8")


@router.get("/v1/jobs/{job_id}/failed.csv", responses=CSV, summary="The failed images")
async def failed(job_id: str, who: CallerDep) -> Any:
    job = await run_in_threadpool(visible_job, who, job_id)
    body = jobs.failed_csv(who.services.db, job.id)
    return _send(who, body, f"job-{job.id}-failed.csv", "text/csv; charset=utf-8")
