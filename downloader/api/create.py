"""POST /v1/jobs: a job from JSON rows or an uploaded CSV/TSV/XLSX file.

The same readers and limits as the app's upload widget (downloader.inputs; MAX_UPLOAD_MB,
MAX_ROWS_PER_JOB), the same per-person limits (JOB_RATE_LIMIT_PER_MINUTE,
MAX_ACTIVE_JOBS_PER_USER: 429 with Retry-After). JSON rows become CSV text for the text
reader, so they are validated exactly as pasted rows are.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request as StarletteRequest

from downloader import jobs, webhooks
from downloader.api import idempotency
from downloader.api.auth import Caller, CallerDep
from downloader.api.errors import ERRORS, ApiError
from downloader.api.schemas import CreatedOut, JobOptionsIn, JobRequest
from downloader.errors import UserError
from downloader.inputs import InputError, ParsedInput, parse_bytes, parse_text
from downloader.job_options import JobOptions
from downloader.request_headers import HeaderError, parse_options

router = APIRouter(tags=["jobs"])
JSON_SOURCE = "API (JSON rows)"
FORM_FIELDS = ("name", "sheet", "product_column", "url_column", "callback_url")

_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        **{name: {"type": "string"} for name in FORM_FIELDS},
                    },
                }
            },
        },
    }
}


def _limit_bytes(caller: Caller) -> int:
    return caller.services.settings.max_upload_mb * 1024 * 1024


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "too_large", f"The request is larger than {limit // 1048576} MB.")


def _bad(message: str, **extra: Any) -> ApiError:
    return ApiError(400, "bad_request", message, extra=extra or None)


def _json_rows_csv(req: JobRequest) -> str:
    """The rows as CSV text: product and url first, then every other column in first-seen
    order (the CSV writer quotes what needs it)."""
    extras: dict[str, None] = {}
    for row in req.rows:
        for key in row.model_extra or {}:
            extras.setdefault(str(key), None)
    names = ["product", "url", *extras]
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(names)
    for row in req.rows:
        more = row.model_extra or {}
        cells = [str(row.product), row.url]
        for name in extras:
            value = more.get(name)
            if isinstance(value, dict | list):
                raise _bad(f"Column {name[:50]!r} holds a list or object; cells are text.")
            cells.append("" if value is None else str(value))
        writer.writerow(cells)
    return out.getvalue()


def _options(given: JobOptionsIn | None) -> tuple[jobs.RequestHeaders | None, JobOptions | None]:
    if given is None:
        return None, None
    try:
        headers = parse_options(
            given.headers,
            [(item.host, item.header) for item in given.headers_for],
            any_format=given.any_format,
        )
    except HeaderError as exc:  # names the option and header, never a value
        raise ApiError(
            422, "bad_options", "The request headers are refused.", extra={"problems": exc.problems}
        ) from None
    chosen = given.model_dump(exclude_none=True, exclude={"headers", "headers_for", "any_format"})
    has_headers = bool(given.headers or given.headers_for or given.any_format)
    return (headers if has_headers else None), (JobOptions(**chosen) if chosen else None)


class _Input:
    """What a request asks for, read from JSON or from a form."""

    def __init__(self) -> None:
        self.parsed: ParsedInput | None = None
        self.name = ""
        self.source = JSON_SOURCE
        self.callback_url: str | None = None
        self.headers: jobs.RequestHeaders | None = None
        self.options: JobOptions | None = None
        self.json_rows = False


def _parse_json(body: bytes, max_rows: int) -> _Input:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _bad("The body is not valid JSON.") from None
    try:
        req = JobRequest.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"[:200]
            for err in exc.errors()[:20]
        ]
        raise _bad("The JSON does not describe a job.", problems=problems) from None
    if len(req.rows) > max_rows:
        raise ApiError(
            413,
            "too_many_rows",
            f"The request has {len(req.rows):,} rows; one job can take at "
            f"most {max_rows:,}. Split it into smaller jobs.",
        )
    got = _Input()
    got.json_rows = True
    got.name, got.callback_url = req.name or "", req.callback_url
    got.headers, got.options = _options(req.options)
    if not req.rows:
        got.parsed = None
        return got
    text = _json_rows_csv(req)
    got.parsed = parse_text(text, product_column="product", url_column="url", max_rows=max_rows)
    return got


async def _parse_form(request: Request, body: bytes, max_rows: int) -> _Input:
    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    again = StarletteRequest(request.scope, receive=replay)
    try:
        form = await again.form(max_files=1, max_fields=len(FORM_FIELDS) + 1)
    except MultiPartException as exc:
        raise _bad(f"The form is malformed: {exc.message}") from None
    except (ValueError, KeyError, AssertionError):
        raise _bad("The form is malformed.") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise _bad("The form has no file (a field named 'file').")
        fields: dict[str, str | None] = {}
        for name in FORM_FIELDS:
            value = form.get(name)
            if value is not None and not isinstance(value, str):
                raise _bad(f"The form field {name!r} must be text.")
            fields[name] = value.strip()[:2048] if value and value.strip() else None
        data = await upload.read()
        filename = (upload.filename or "upload.csv")[:200]
    finally:
        await form.close()
    got = _Input()
    got.name, got.callback_url = fields["name"] or "", fields["callback_url"]
    got.source = filename

    def parse() -> ParsedInput:
        return parse_bytes(
            data,
            filename,
            sheet=fields["sheet"],
            product_column=fields["product_column"],
            url_column=fields["url_column"],
            max_rows=max_rows,
        )

    got.parsed = await run_in_threadpool(parse)
    return got


def _rejected(parsed: ParsedInput | None, json_rows: bool) -> list[dict[str, Any]]:
    if parsed is None:
        return []
    shift = 1 if json_rows else 0  # JSON: the header row the CSV text added
    return [
        {"row": r.row - shift, "product": r.product, "url": r.url, "reason": r.reason}
        for r in parsed.rejected
    ]


def _stored_rejected(caller: Caller, job_id: str, source: str) -> list[dict[str, Any]]:
    frame = jobs.rejected_rows(caller.services.db, job_id, limit=10_000)
    shift = 1 if source == JSON_SOURCE else 0
    return [
        {"row": int(str(r.row)) - shift, "product": r.product, "url": r.url, "reason": r.reason}
        for r in frame.itertuples()
        if r.kind == "rejected"
    ]


def _answer(
    request: Request, job: Any, rejected: list[dict[str, Any]], replayed: bool
) -> JSONResponse:
    body = {
        "id": job.id,
        "status": job.status,
        "products": job.products,
        "images": job.images,
        "rejected": rejected,
        "duplicates_removed": job.duplicates_removed,
    }
    location = f"{request.scope.get('root_path', '')}/v1/jobs/{job.id}"
    headers = {"Location": location}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(body, 201, headers=headers)


@router.post(
    "/v1/jobs",
    status_code=201,
    response_model=CreatedOut,
    summary="Create a job from JSON rows or an uploaded file",
    openapi_extra=_BODY_DOC,
    responses={
        **ERRORS,
        413: {"description": "Over the size limits"},
        415: {"description": "Neither JSON nor multipart/form-data"},
        422: {"description": "Nothing valid (every row's reason, no job) or bad options"},
        429: {"description": "Per-person job limits (Retry-After)"},
    },
)
async def create_job(
    request: Request,
    who: CallerDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResponse:
    settings, db = who.services.settings, who.services.db
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in ("application/json", "multipart/form-data"):
        raise ApiError(
            415, "unsupported_media_type", "Send application/json or multipart/form-data."
        )
    key = idempotency.check_key(idempotency_key) if idempotency_key is not None else None
    body = await read_body(request, _limit_bytes(who))
    max_rows = settings.max_rows_per_job
    try:
        if media == "application/json":
            got = await run_in_threadpool(_parse_json, body, max_rows)
        else:
            got = await _parse_form(request, body, max_rows)
    except InputError as exc:  # the widget's own message: too many rows, a damaged file…
        status = 413 if "smaller jobs" in str(exc) else 422
        raise ApiError(status, "unusable_input", str(exc)) from None
    del body
    if got.callback_url is not None:
        refused = webhooks.vet_callback(settings, got.callback_url)
        if refused:
            raise ApiError(422, "bad_callback_url", refused)
    rejected = _rejected(got.parsed, got.json_rows)
    if got.parsed is None or got.parsed.images == 0:
        raise ApiError(
            422,
            "no_valid_rows",
            "No row holds a valid product and image URL; no job was made.",
            extra={"rejected": rejected},
        )
    owner = who.person.owner
    if key is not None:
        first = await run_in_threadpool(idempotency.reserve, db, owner, key)
        if first != idempotency.RESERVED:
            earlier = await run_in_threadpool(jobs.job_for, db, first, who.person)
            if earlier is not None:
                stored = await run_in_threadpool(_stored_rejected, who, earlier.id, earlier.source)
                return _answer(request, earlier, stored, True)
            await run_in_threadpool(idempotency.release, db, owner, key)  # deleted since
            await run_in_threadpool(idempotency.reserve, db, owner, key)
    try:
        job = await run_in_threadpool(_make_job, who, got)
    except BaseException:
        if key is not None:
            await run_in_threadpool(idempotency.release, db, owner, key)
        raise
    if key is not None:
        await run_in_threadpool(idempotency.complete, db, owner, key, job.id)
    return _answer(request, job, rejected, False)


def _make_job(who: Caller, got: _Input) -> Any:
    settings, db = who.services.settings, who.services.db
    try:
        jobs.check_owner_limits(
            db,
            who.person.owner,
            per_minute=settings.job_rate_limit_per_minute,
            max_active=settings.max_active_jobs_per_user,
        )
    except jobs.RateLimited as exc:
        raise ApiError(429, "rate_limited", str(exc), headers={"Retry-After": "30"}) from None
    assert got.parsed is not None
    try:
        job = jobs.create_job(
            db,
            got.parsed,
            name=got.name,
            source=got.source,
            created_by=f"api:{who.token.id}",
            owner=who.person.owner,
            request_headers=got.headers,
            options=got.options,
        )
    except UserError as exc:  # a naming template or output option the job cannot use
        raise ApiError(422, "bad_options", str(exc)) from None
    if got.callback_url:
        webhooks.set_callback(db, job.id, got.callback_url)
    return job
