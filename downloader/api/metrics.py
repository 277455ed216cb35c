"""GET /metrics: Prometheus text format (prometheus_client), off unless METRICS_ENABLED=true.

Read at scrape time by aggregate SQL (one short read): images by final state and error code,
bytes stored, jobs by state, queue depth (images queued or downloading), live workers; and
in this process, API requests by status code and the hosts its engine slows down
(downloader.api.host_metrics). docs/api.md has a scrape config.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from downloader.api.host_metrics import HostCollector
from downloader.models import IMAGE, JOB, ImageStatus
from downloader.services import Services

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# API requests by status, counted by the API's middleware in this process.
_API_REGISTRY = CollectorRegistry(auto_describe=True)
API_REQUESTS = Counter(
    "bid_api_requests", "HTTP API requests by status code", ["status"], registry=_API_REGISTRY
)


def count_api_request(status: int) -> None:
    API_REQUESTS.labels(status=str(status)).inc()


class CountRequests:
    """ASGI middleware counting the API's answers by status (never buffers the body)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                count_api_request(int(message["status"]))
            await send(message)

        await self.app(scope, receive, counting_send)


class DatabaseCollector(Collector):
    """Counts read from the database at each scrape."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        from downloader import jobs

        db = self.services.db
        with db.read() as session:
            images = session.execute(
                select(IMAGE.c.status, IMAGE.c.error_code, func.count()).group_by(
                    IMAGE.c.status, IMAGE.c.error_code
                )
            ).all()
            stored = session.execute(
                select(func.coalesce(func.sum(IMAGE.c.size_bytes), 0)).where(
                    IMAGE.c.status == ImageStatus.DONE
                )
            ).scalar_one()
            job_states = session.execute(
                select(JOB.c.status, func.count()).group_by(JOB.c.status)
            ).all()
        by_state = GaugeMetricFamily(
            "bid_images", "Images by state and error code", labels=["state", "error_code"]
        )
        depth = 0
        for status, code, count in images:
            by_state.add_metric([str(status), str(code or "")], int(count))
            if status in (ImageStatus.QUEUED, ImageStatus.DOWNLOADING):
                depth += int(count)
        yield by_state
        yield GaugeMetricFamily("bid_stored_bytes", "Bytes of downloaded images", value=int(stored))
        jobs_family = GaugeMetricFamily("bid_jobs", "Jobs by state", labels=["state"])
        for status, count in job_states:
            jobs_family.add_metric([str(status)], int(count))
        yield jobs_family
        yield GaugeMetricFamily("bid_queue_depth", "Images queued or downloading", value=depth)
        workers = jobs.live_workers(db)
        yield GaugeMetricFamily(
            "bid_live_workers", "Engines with a recent heartbeat", value=len(workers)
        )
        yield GaugeMetricFamily(
            "bid_images_in_flight", "Downloads running now", value=sum(w.in_flight for w in workers)
        )


def render(services: Services) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(services))
    registry.register(HostCollector())
    return generate_latest(registry) + generate_latest(_API_REGISTRY)


def endpoint(get_services: Callable[[], Services | None]) -> Callable[[Request], Any]:
    """The Starlette endpoint of GET /metrics (app.py routes it)."""

    async def metrics(_request: Request) -> Response:
        services = get_services()
        if services is None:
            return PlainTextResponse("The app is starting; try again in a moment.", 503)
        if not services.settings.metrics_enabled:
            return PlainTextResponse("Not Found", 404)
        body = await run_in_threadpool(render, services)
        return Response(body, media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})

    return metrics
