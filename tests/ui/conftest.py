"""Fixtures for the UI tests: real services on a temp SQLite file and media folder, installed
as the app's process-wide services, and a helper that runs a job to its end on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
from streamlit.testing.v1 import AppTest

from downloader import jobs
from downloader.engine import Engine
from downloader.inputs import parse_text
from downloader.services import Services, build_services
from downloader.settings import load_settings
from pages import _common
from tests.support.imageserver import ImageServer, image_server  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")


def make_services(tmp_path: Path, **overrides: object) -> Services:
    settings = load_settings(
        **{
            "database_url": f"sqlite:///{tmp_path / 'app.db'}",
            "media_root": str(tmp_path / "media"),
            "allowed_private_networks": ["127.0.0.0/8"],
            "download_qps": 0,
            "backoff_base": 0.05,
            "max_retries": 1,
            **overrides,
        }
    )
    return build_services(settings)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    """Services for the app under test (what the lifespan would install)."""
    built = make_services(tmp_path)
    _common.install(built)
    yield built
    _common.install(None)
    built.db.dispose()


def run_job(services: Services, text: str, name: str = "") -> str:
    """Create a job from pasted text and run it to its end in this process."""
    job = jobs.create_job(services.db, parse_text(text), name=name, source="pasted text")
    engine = Engine(services.db, services.storage, services.settings, job_id=job.id, share=1.0)
    anyio.run(lambda: engine.run(until_idle=True))
    return job.id


@pytest.fixture
def finished_job(services: Services, image_server: ImageServer) -> str:  # noqa: F811
    """A completed job: 2 products, 3 images done, 1 failed (404), plus one rejected row."""
    s = image_server
    rows = [
        "Product Number\tImage URL",
        f"AB-1\t{s.url('/img/ab1.jpg')}",
        f"AB-1\t{s.url('/img/ab2.png', host=1)}",
        f"CD_2\t{s.url('/img/cd1.webp', host=2)}",
        f"CD_2\t{s.url('/status/404')}",
        "X" * 129 + "\thttp://example.invalid/x.jpg",  # product number too long: rejected
    ]
    return run_job(services, "\r\n".join(rows), name="Spring catalogue")


@pytest.fixture
def app() -> Callable[..., AppTest]:
    """An AppTest of app.py, optionally switched to a page with query params."""

    def make(page: str | None = None, **query: str) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=60)
        if page is not None:
            at.run()
            at.switch_page(page)
        for key, value in query.items():
            at.query_params[key] = value
        return at.run()

    return make
