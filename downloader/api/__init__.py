"""The HTTP API under /api/v1 (docs/api.md): FastAPI, mounted by app.py at /api.

No Streamlit here. Every endpoint calls the jobs service (downloader.jobs), as the pages do;
a personal bearer token (downloader.tokens) acts as its owner (downloader.identity), so jobs
made here belong to that person and another person's job answers 404 as a missing one.

- app: the FastAPI application, its error shape and the OpenAPI document
- auth: bearer tokens (401 + WWW-Authenticate) and the token endpoints
- create: POST /jobs from JSON rows or an uploaded file, Idempotency-Key
- routes: reading and controlling jobs
- events: server-sent progress events
- downloads: the streamed ZIPs and CSVs
- metrics: GET /metrics (Prometheus), when METRICS_ENABLED
"""

from downloader.api.app import create_api

__all__ = ["create_api"]
