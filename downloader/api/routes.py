"""Reading and controlling jobs: GET /v1/jobs, /v1/jobs/{id}, its products and failures;
POST pause|resume|cancel|retry and DELETE. Another person's job answers 404 everywhere."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from downloader import jobs, webhooks
from downloader.api.auth import Caller, CallerDep
from downloader.api.errors import ERRORS, ApiError, not_found
from downloader.api.schemas import (
    ControlOut,
    DeletedOut,
    FailedOut,
    JobListOut,
    JobOut,
    ProductListOut,
)
from downloader.models import JobPublic, JobStatus

router = APIRouter(tags=["jobs"], responses=ERRORS)
MAX_PAGE = 200
MAX_OFFSET = 10_000
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"description": "The job's state does not allow it"}
}


def visible_job(who: Caller, job_id: str) -> JobPublic:
    """The job when the caller may see it; 404 (as for a missing job) otherwise."""
    job = jobs.job_for(who.services.db, job_id[:64], who.person)
    if job is None:
        raise not_found(job_id)
    return job


def _webhook(who: Caller, job_id: str) -> dict[str, object] | None:
    """The job's webhook delivery; its URL only for the job's owner."""
    return webhooks.state(who.services.db, job_id, who.person.email)


def job_body(who: Caller, job_id: str) -> dict[str, Any]:
    summary = jobs.job_summary(who.services.db, job_id)
    job, counts = summary.job, summary.counts
    return {
        "id": job.id,
        "name": job.name,
        "owner": job.owner,
        "status": job.status,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "products": job.products,
        "images": job.images,
        "done": counts.done,
        "duplicate": counts.duplicate,
        "failed": counts.failed,
        "skipped": counts.skipped,
        "pending": counts.pending,
        "rejected_rows": job.rejected_rows,
        "counts": counts.as_dict(),
        "images_per_second": summary.images_per_second,
        "eta_seconds": summary.eta_seconds,
        "webhook": _webhook(who, job.id),
    }


@router.get("/v1/jobs", response_model=JobListOut, summary="Your jobs, newest first")
def list_my_jobs(
    who: CallerDep,
    status: Annotated[list[JobStatus] | None, Query(description="Only these states")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Any:
    items = jobs.list_jobs(
        who.services.db,
        statuses=[s.value for s in status] if status else None,
        limit=offset + limit + 1,
        visible_to=who.person,
    )
    page = items[offset : offset + limit]
    out = []
    for item in page:
        job, counts = item.job, item.counts
        out.append(
            {
                "id": job.id,
                "name": job.name,
                "owner": job.owner,
                "status": job.status,
                "created_at": job.created_at,
                "started_at": job.started_at,
                "finished_at": job.finished_at,
                "products": job.products,
                "images": job.images,
                "done": counts.done,
                "duplicate": counts.duplicate,
                "failed": counts.failed,
                "skipped": counts.skipped,
                "pending": counts.pending,
                "rejected_rows": job.rejected_rows,
                "counts": counts.as_dict(),
            }
        )
    more = len(items) > offset + limit and offset + limit <= MAX_OFFSET
    return {
        "items": out,
        "limit": limit,
        "offset": offset,
        "next_offset": offset + limit if more else None,
    }


@router.get("/v1/jobs/{job_id}", response_model=JobOut, summary="One job: state and counts")
def get_my_job(job_id: str, who: CallerDep) -> Any:
    visible_job(who, job_id)
    return job_body(who, job_id)


@router.get(
    "/v1/jobs/{job_id}/products", response_model=ProductListOut, summary="Per-product counts"
)
def list_products(
    job_id: str,
    who: CallerDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Any:
    visible_job(who, job_id)
    frame = jobs.product_progress(who.services.db, job_id, limit=limit + 1, offset=offset)
    columns = ["product", "images", "done", "duplicate", "failed", "skipped", "pending", "status"]
    rows = [
        {
            c: (str(v) if c in ("product", "status") else int(v))
            for c, v in zip(columns, values, strict=True)
        }
        for values in frame[columns].itertuples(index=False, name=None)
    ]
    more = len(rows) > limit
    return {
        "items": rows[:limit],
        "limit": limit,
        "offset": offset,
        "next_offset": offset + limit if more else None,
    }


@router.get("/v1/jobs/{job_id}/failed", response_model=list[FailedOut], summary="Failed images")
def list_failed(
    job_id: str,
    who: CallerDep,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    error_code: Annotated[str | None, Query(max_length=40)] = None,
) -> Any:
    visible_job(who, job_id)
    frame = jobs.failed_images(who.services.db, job_id, error_code=error_code, limit=limit)
    frame = frame.astype(object).where(frame.notna(), None)
    return [
        {
            "product": r["product"],
            "position": int(r["position"]),
            "url": r["url"],
            "error_code": r["error_code"],
            "error": r["error"],
            "http_status": int(r["http_status"]) if r["http_status"] is not None else None,
            "attempts": int(r["attempts"]),
        }
        for r in frame.to_dict("records")
    ]


def _control(who: Caller, job_id: str, action: str) -> dict[str, Any]:
    db = who.services.db
    visible_job(who, job_id)
    retried: int | None = None
    if action == "pause":
        changed = jobs.pause_job(db, job_id, person=who.person)
    elif action == "resume":
        changed = jobs.resume_job(db, job_id, person=who.person)
    elif action == "cancel":
        changed = jobs.cancel_job(db, job_id, person=who.person)
    else:
        retried = jobs.retry_failed(db, job_id, person=who.person)
        changed = retried > 0
    job = jobs.get_job(db, job_id)
    if not changed:
        what = "no failed or skipped images" if action == "retry" else f"status {job.status}"
        raise ApiError(
            409,
            "conflict",
            f"Cannot {action} job {job_id!r}: it has {what}.",
            extra={"status": job.status},
        )
    return {"id": job_id, "status": job.status, "retried": retried}


@router.post("/v1/jobs/{job_id}/pause", response_model=ControlOut, responses=CONFLICT)
def pause(job_id: str, who: CallerDep) -> Any:
    return _control(who, job_id, "pause")


@router.post("/v1/jobs/{job_id}/resume", response_model=ControlOut, responses=CONFLICT)
def resume(job_id: str, who: CallerDep) -> Any:
    return _control(who, job_id, "resume")


@router.post("/v1/jobs/{job_id}/cancel", response_model=ControlOut, responses=CONFLICT)
def cancel(job_id: str, who: CallerDep) -> Any:
    return _control(who, job_id, "cancel")


@router.post(
    "/v1/jobs/{job_id}/retry",
    response_model=ControlOut,
    responses=CONFLICT,
    summary="Queue the failed and skipped images again",
)
def retry(job_id: str, who: CallerDep) -> Any:
    return _control(who, job_id, "retry")


@router.delete(
    "/v1/jobs/{job_id}",
    response_model=DeletedOut,
    responses=CONFLICT,
    summary="Delete a job that is not queued or running, with its files",
)
def delete(job_id: str, who: CallerDep) -> Any:
    job = visible_job(who, job_id)
    if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
        raise ApiError(
            409,
            "conflict",
            f"Job {job_id!r} is {job.status}: pause or cancel it before deleting it.",
            extra={"status": job.status},
        )
    jobs.delete_job(who.services.db, who.services.storage, job_id, person=who.person)
    return {"id": job_id, "deleted": True}
