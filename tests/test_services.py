"""The app's embedded engine thread: it keeps running jobs after the engine fails."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from downloader import jobs
from downloader.engine import Engine
from downloader.inputs import parse_text
from downloader.services import EngineThread, build_services
from downloader.settings import load_settings
from tests.support.imageserver import ImageServer


def test_the_embedded_engine_is_restarted_after_an_error(
    tmp_path: Path, image_server: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = build_services(
        load_settings(
            database_url=f"sqlite:///{tmp_path / 'app.db'}",
            media_root=str(tmp_path / "media"),
            allowed_private_networks=["127.0.0.0/8"],
            download_qps=0,
        )
    )
    real_run = Engine.run
    calls: list[int] = []

    async def fail_once(self: Engine, *, until_idle: bool = False) -> object:
        calls.append(1)
        if len(calls) == 1:  # e.g. the database went away for a moment
            raise RuntimeError("database is unavailable")
        return await real_run(self, until_idle=until_idle)

    monkeypatch.setattr(Engine, "run", fail_once)
    monkeypatch.setattr(EngineThread, "RESTART_DELAYS", (0.05,))
    thread = EngineThread(services)
    thread.start()
    try:
        job = jobs.create_job(services.db, parse_text(f"P1\t{image_server.url('/img/a.jpg')}"))
        deadline = time.time() + 30
        while jobs.get_job(services.db, job.id).status != "completed":
            assert time.time() < deadline, "the restarted engine never finished the job"
            time.sleep(0.1)
    finally:
        thread.stop()
    assert thread.restarts == 1 and isinstance(thread.error, RuntimeError)
    assert not thread.alive
    assert jobs.job_counts(services.db, job.id).done == 1
