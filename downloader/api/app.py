"""The FastAPI application of the HTTP API (mounted by app.py at /api)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from downloader.api.errors import ApiError
from downloader.services import Services

DESCRIPTION = """\
Create image-download jobs from JSON rows or an uploaded CSV/TSV/XLSX file, follow their
progress (server-sent events), download their ZIPs and CSVs, and get a signed webhook when a
job ends. Every endpoint but this document needs a personal API token
(`Authorization: Bearer TOKEN`; `python -m downloader token create --owner EMAIL` or the
app's "API tokens" page). Errors are JSON: `{"error": code, "message": sentence}`.
"""


def create_api(get_services: Callable[[], Services | None]) -> FastAPI:
    """The API; `get_services` returns the app's services (None while it starts)."""
    from downloader.api import auth, create, downloads, events, metrics, routes

    api = FastAPI(
        title="Batch Image Downloader API",
        version="1",
        description=DESCRIPTION,
        openapi_url="/v1/openapi.json",
        docs_url=None,  # FastAPI's docs pages load scripts from a CDN
        redoc_url=None,
    )
    api.state.get_services = get_services
    for module in (auth, create, routes, events, downloads):
        api.include_router(module.router)

    @api.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), exc.status, headers=exc.headers)

    @api.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}"[:200]
            for err in exc.errors()[:20]
        ]
        body = {
            "error": "bad_request",
            "message": "The request is malformed.",
            "problems": problems,
        }
        return JSONResponse(body, 400)

    @api.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        return JSONResponse(
            {"error": code, "message": str(exc.detail)}, exc.status_code, headers=exc.headers
        )

    def openapi() -> dict[str, Any]:
        """FastAPI's document, plus the JSON body model of POST /v1/jobs (read by hand there,
        to answer 400 for malformed JSON and 413 over the size limit)."""
        if api.openapi_schema is None:
            from pydantic.json_schema import models_json_schema

            from downloader.api.schemas import JobRequest

            document = get_openapi(
                title=api.title,
                version=api.version,
                description=api.description,
                routes=api.routes,
                servers=api.servers or None,
            )
            _, extra = models_json_schema(
                [(JobRequest, "validation")], ref_template="#/components/schemas/{model}"
            )
            document["components"]["schemas"].update(extra.get("$defs", {}))
            api.openapi_schema = document
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]
    # A plain ASGI middleware (not @api.middleware, whose BaseHTTPMiddleware buffers sends:
    # the streams' stall guard must see the client's socket)
    api.add_middleware(metrics.CountRequests)
    return api
