"""app.py's server side: the lifespan (services + embedded engine) and the streamed downloads."""

from __future__ import annotations

import csv
import io
import time
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from starlette.applications import Starlette

with warnings.catch_warnings():  # "use httpx2" notice from Starlette's test client
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

import app as app_module
from downloader import jobs
from downloader.inputs import parse_text
from downloader.services import Services
from downloader.settings import get_settings
from pages import _common
from tests.support.imageserver import ImageServer


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    with TestClient(Starlette(routes=app_module.routes())) as test_client:
        yield test_client


def test_the_module_defines_an_st_app_with_the_download_routes() -> None:
    import streamlit as st

    assert isinstance(app_module.app, st.App)
    paths = [route.path for route in app_module.routes()]
    assert paths == [
        "/download/job/{job_id}.zip",
        "/download/job/{job_id}/manifest.csv",
        "/download/job/{job_id}/failed.csv",
        "/download/job/{job_id}/rejected.csv",
        "/api",  # the HTTP API (downloader/api)
        "/metrics",
    ]
    prefixed = app_module.routes("/tools")[0]
    assert prefixed.path == "/tools/download/job/{job_id}.zip"


def test_master_zip_streams_every_product_and_the_manifest(
    client: TestClient, finished_job: str
) -> None:
    with client.stream("GET", f"/download/job/{finished_job}.zip") as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/zip"
        # a finished job's length is known up front (the browser shows progress)
        length = int(response.headers["content-length"])
        disposition = response.headers["content-disposition"]
        assert disposition.startswith(f'attachment; filename="job-{finished_job}.zip"')
        body = b"".join(response.iter_bytes())
    assert len(body) == length
    archive = zipfile.ZipFile(io.BytesIO(body))
    assert sorted(archive.namelist()) == [
        "AB-1/AB-1_1.jpg",
        "AB-1/AB-1_2.png",
        "CD_2/CD_2_1.webp",
        "manifest.csv",
    ]
    manifest = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode("utf-8-sig"))))
    assert [(r["product"], r["position"], r["status"]) for r in manifest] == [
        ("AB-1", "1", "done"),
        ("AB-1", "2", "done"),
        ("CD_2", "1", "done"),
        ("CD_2", "2", "failed"),
    ]


def test_a_running_jobs_zip_is_streamed_without_a_length(
    client: TestClient, services: Services
) -> None:
    """Its rows still change, so no length is promised; what is done so far is in the ZIP."""
    job = jobs.create_job(services.db, parse_text("SKU-1\thttp://127.0.0.2:9/a.jpg"))
    with client.stream("GET", f"/download/job/{job.id}.zip") as response:
        assert response.status_code == 200
        assert "content-length" not in response.headers
        body = b"".join(response.iter_bytes())
    assert zipfile.ZipFile(io.BytesIO(body)).namelist() == ["manifest.csv"]


def test_a_huge_finished_jobs_zip_starts_at_once_without_a_length(
    client: TestClient, finished_job: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sizing reads every row first; past the limit the download starts at once instead."""
    monkeypatch.setattr(app_module, "SIZED_ZIP_MAX_IMAGES", 3)  # the job has 4 images
    with client.stream("GET", f"/download/job/{finished_job}.zip") as response:
        assert response.status_code == 200
        assert "content-length" not in response.headers
        body = b"".join(response.iter_bytes())
    assert len(zipfile.ZipFile(io.BytesIO(body)).namelist()) == 4  # 3 images + manifest


def test_manifest_and_failed_csv_exports(client: TestClient, finished_job: str) -> None:
    manifest = client.get(f"/download/job/{finished_job}/manifest.csv")
    assert manifest.status_code == 200
    assert manifest.headers["content-type"].startswith("text/csv")
    assert "manifest.csv" in manifest.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(manifest.content.decode("utf-8-sig"))))
    assert len(rows) == 4
    failed = client.get(f"/download/job/{finished_job}/failed.csv")
    assert failed.status_code == 200
    rows = list(csv.DictReader(io.StringIO(failed.content.decode("utf-8-sig"))))
    assert [(r["product"], r["error_code"]) for r in rows] == [("CD_2", "http_404")]


def test_rejected_rows_csv_export(client: TestClient, finished_job: str) -> None:
    response = client.get(f"/download/job/{finished_job}/rejected.csv")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert f"job-{finished_job}-rejected.csv" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))
    assert [(r["kind"], r["product"], r["url"]) for r in rows] == [
        ("rejected", "X" * 129, "http://example.invalid/x.jpg")
    ]
    assert rows[0]["reason"].startswith("Product number is longer than")


def test_unknown_job_is_a_404(client: TestClient) -> None:
    assert client.get("/download/job/nope.zip").status_code == 404
    assert client.get("/download/job/nope/manifest.csv").status_code == 404
    assert client.get("/download/job/nope/rejected.csv").status_code == 404


def test_routes_answer_503_before_the_lifespan_ran() -> None:
    _common.install(None)
    with TestClient(Starlette(routes=app_module.routes())) as test_client:
        assert test_client.get("/download/job/x.zip").status_code == 503


def test_lifespan_runs_the_embedded_engine_and_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, image_server: ImageServer
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'life.db'}")
    monkeypatch.setenv("MEDIA_ROOT", str(tmp_path / "media"))
    monkeypatch.setenv("ALLOWED_PRIVATE_NETWORKS", "127.0.0.0/8")
    monkeypatch.setenv("DOWNLOAD_QPS", "0")
    get_settings.cache_clear()
    try:

        async def scenario() -> tuple[str, str]:
            async with app_module.lifespan(None) as state:
                services = _common.installed_services()
                assert services is state["services"]
                engine = _common.engine_thread()
                assert engine is not None and engine.alive
                job = jobs.create_job(
                    services.db,
                    parse_text(f"P-1\t{image_server.url('/img/life.jpg')}"),
                )
                deadline = time.monotonic() + 30
                while jobs.get_job(services.db, job.id).status != "completed":
                    assert time.monotonic() < deadline, "the embedded engine ran the job"
                    await anyio.sleep(0.1)
                status = jobs.get_job(services.db, job.id).status
            assert not engine.alive, "stopped on shutdown"
            assert _common.installed_services() is None
            return job.id, status

        _job_id, status = anyio.run(scenario)
        assert status == "completed"
    finally:
        get_settings.cache_clear()
