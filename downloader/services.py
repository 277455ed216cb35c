"""Wiring: build the settings, database and storage once per process, and run an engine
in a background thread for the app."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from downloader.db import Database, open_database
from downloader.redact import redact_logger
from downloader.settings import Settings, get_settings
from downloader.storage import Storage, make_storage

if TYPE_CHECKING:
    from downloader.engine import Engine  # imported where an engine runs: `submit` needs none

log = redact_logger(logging.getLogger(__name__))  # its lines can name URLs


@dataclass
class Services:
    settings: Settings
    db: Database
    storage: Storage


def build_services(settings: Settings | None = None) -> Services:
    settings = settings or get_settings()
    db = open_database(settings.database_url)
    storage = make_storage(settings)
    return Services(settings=settings, db=db, storage=storage)


def run_engine_until_stopped(engine: Engine, *, until_idle: bool = False) -> None:
    """Run an engine on a fresh event loop in the calling thread (uvloop when present)."""
    _run_on_event_loop(lambda: engine.run(until_idle=until_idle))


def run_engine_in_foreground(engine: Engine, *, until_idle: bool = False) -> None:
    """A process's own engine on its main thread (`worker`, `run`'s forked helpers): SIGTERM
    and SIGINT stop it gracefully; its database is disposed at the end, which checkpoints
    SQLite's log now (these processes end without the interpreter's teardown)."""

    def stop(_signum: int, _frame: object) -> None:
        engine.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    run_engine_until_stopped(engine, until_idle=until_idle)
    engine.db.dispose()


def warm_up_event_loop() -> None:
    """Load the event loop's code (anyio's asyncio backend, uvloop) ahead of the engine."""
    _run_on_event_loop(lambda: anyio.sleep(0))


def _run_on_event_loop(main: Callable[[], Awaitable[object]]) -> None:
    anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})


class EngineThread:
    """The app's embedded engine: one per server process, started by the lifespan.

    If the engine stops with an error (the database restarted, a disk filled up), it is
    started again after a pause that grows to a minute, so the app heals by itself; the
    last error stays visible to the system check.
    """

    RESTART_DELAYS = (1.0, 5.0, 15.0, 60.0)

    def __init__(self, services: Services, *, kind: str = "embedded") -> None:
        self._services = services
        self._kind = kind
        self.engine = self._new_engine()
        self._thread = threading.Thread(target=self._main, name="engine", daemon=True)
        self._stopping = threading.Event()
        self.error: BaseException | None = None
        self.restarts = 0

    def _new_engine(self) -> Engine:
        from downloader.engine import Engine

        s = self._services
        return Engine(s.db, s.storage, s.settings, kind=self._kind)

    def _main(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                run_engine_until_stopped(self.engine)
                return  # stopped on purpose
            except Exception as exc:  # reported by the system check, never silent
                self.error = exc
                log.exception("embedded engine stopped with an error; restarting it")
            delay = self.RESTART_DELAYS[min(failures, len(self.RESTART_DELAYS) - 1)]
            failures += 1
            if self._stopping.wait(delay):
                return
            self.restarts += 1
            self.engine = self._new_engine()

    def start(self) -> None:
        from downloader.processes import tune_malloc

        tune_malloc()  # a long-running server: see the function
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 20) -> None:
        self._stopping.set()
        self.engine.stop()
        self._thread.join(timeout)
