"""`python -m downloader run`: queue an input (or find its unfinished job), then download it
to the end with this process's engine and its helper processes (run_helpers.py)."""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from downloader.cli_support import (
    EXIT_OK,
    CliError,
    counts_payload,
    emit,
    parse_input,
    services_for,
    settings_for,
    source_name,
)
from downloader.processes import tune_gc_for_engine

if TYPE_CHECKING:
    from downloader.engine import Engine
    from downloader.run_helpers import Helper
    from downloader.services import Services
    from downloader.settings import Settings

IMAGES_PER_EXTRA_PROCESS = 400  # below this a second process costs more than it gives


def cmd_run(args: argparse.Namespace) -> int:
    """Queue the input (or find its unfinished job), then download it to the end.

    A big input (or standard input) is parsed in one process image and downloaded in another:
    after queueing, `run` re-executes itself (same pid, so signals and process-tree
    measurements are unaffected), so its engine never carries pandas, pyarrow or the parsed
    table (~150 MB at 100,000 rows). A small input file (run_helpers.EARLY_MAX_INPUT_BYTES)
    is downloaded by the same process image: its table is small, and loading the engine's code
    a second time would cost more than half a second of a short job.
    """
    started = args.started if args.started is not None else time.time()
    small_input = args.job is None and _is_small_input_file(args)
    early = _spawn_early_helpers(args) if small_input else []
    from downloader import jobs

    services = services_for(args)
    if args.job is None:
        if args.input is None:
            raise CliError("run needs an INPUT file (or - for standard input)")
        parsed = parse_input(args, services.settings.max_rows_per_job)
        fingerprint = jobs.input_fingerprint(parsed)
        job_id = jobs.find_unfinished_job(services.db, fingerprint)
        if job_id:
            print(f"resuming unfinished job {job_id} for the same input", file=sys.stderr)
            jobs.resume_job(services.db, job_id)
        else:
            job_id = jobs.create_job(
                services.db,
                parsed,
                name=args.name,
                source=source_name(args),
                created_by="cli",
                fingerprint=fingerprint,
            ).id
        del parsed
        if os.name == "posix" and not small_input:
            _exec_download_phase(args, services, job_id, started)
    else:
        job_id = jobs.get_job(services.db, args.job).id
    return _download_phase(args, services, job_id, started, early)


def _is_small_input_file(args: argparse.Namespace) -> bool:
    from downloader.run_helpers import EARLY_MAX_INPUT_BYTES

    if os.name != "posix" or args.input in (None, "-"):
        return False
    try:
        return Path(args.input).stat().st_size <= EARLY_MAX_INPUT_BYTES
    except OSError:
        return False  # reported by the parser


def _spawn_early_helpers(args: argparse.Namespace) -> list[Helper]:
    """Helpers started before a small input is read (run_helpers)."""
    from downloader.run_helpers import spawn_waiting_helpers

    settings = settings_for(args)
    wanted = args.processes or settings.run_processes or os.cpu_count() or 1
    return spawn_waiting_helpers(
        wanted - 1, database_url=settings.database_url, media_root=settings.media_root
    )


def _exec_download_phase(
    args: argparse.Namespace, services: Services, job_id: str, started: float
) -> None:
    from downloader import jobs

    settings = services.settings
    argv = [sys.executable, "-m", "downloader", "run", "--job", job_id, "--started", repr(started)]
    argv += ["--database-url", settings.database_url]
    argv += ["--media-root", settings.media_root]
    processes = _process_count(args, services, jobs.job_counts(services.db, job_id).pending)
    argv += ["--processes", str(processes)]
    helpers = _spawn_helpers(settings, job_id, processes)  # their start-up overlaps the exec's
    if helpers:
        argv += ["--helpers", ",".join(str(helper.pid) for helper in helpers)]
    if args.quiet:
        argv.append("--quiet")
    sys.stdout.flush()
    sys.stderr.flush()
    services.db.dispose()
    os.execv(sys.executable, argv)  # noqa: S606 (our own interpreter and module, no shell)


def _download_phase(
    args: argparse.Namespace,
    services: Services,
    job_id: str,
    started: float,
    early: list[Helper],
) -> int:
    from downloader import jobs
    from downloader.run_helpers import adopt_helpers, assign_helpers

    if args.helpers is not None:  # started before the exec, with their share
        processes = args.processes
        helpers = adopt_helpers(args.helpers)
    else:
        pending = jobs.job_counts(services.db, job_id).pending
        processes = _process_count(args, services, pending)
        if early:  # already loaded: give the job to as many as are useful, the others exit
            assign_helpers(early, job_id, 1.0 / processes, used=processes - 1)
            helpers = early
        else:
            helpers = _spawn_helpers(services.settings, job_id, processes)
    # Loaded only now: the helpers start on their share while this process loads its engine.
    from downloader.engine import Engine
    from downloader.services import run_engine_until_stopped

    share = 1.0 / processes
    engine = Engine(
        services.db, services.storage, services.settings, kind="run", job_id=job_id, share=share
    )
    stop_requested = _install_stop_handlers(engine, helpers)
    tune_gc_for_engine()
    thread = threading.Thread(
        target=run_engine_until_stopped, args=(engine,), kwargs={"until_idle": True}
    )
    thread.start()
    _show_progress(services, job_id, thread, quiet=args.quiet)
    thread.join()
    for helper in helpers:
        helper.wait()
    if stop_requested.is_set():
        return 130
    payload = {**counts_payload(services, job_id), "seconds": round(time.time() - started, 3)}
    services.db.dispose()  # checkpoints SQLite's log now: the process ends without teardown
    emit(payload)
    return EXIT_OK


def _process_count(args: argparse.Namespace, services: Services, pending: int) -> int:
    wanted = args.processes or services.settings.run_processes or os.cpu_count() or 1
    useful = max(1, math.ceil(pending / IMAGES_PER_EXTRA_PROCESS))
    return max(1, min(wanted, useful))


def _spawn_helpers(settings: Settings, job_id: str, processes: int) -> list[Helper]:
    """The `processes - 1` helper engines beside `run`'s own, each with 1/processes."""
    from downloader.run_helpers import spawn_helpers

    return spawn_helpers(
        processes - 1,
        job_id,
        1.0 / processes,
        database_url=settings.database_url,
        media_root=settings.media_root,
    )


def _install_stop_handlers(engine: Engine, helpers: list[Helper]) -> threading.Event:
    stop_requested = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        stop_requested.set()
        engine.stop()
        for helper in helpers:
            helper.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    return stop_requested


def _show_progress(
    services: Services, job_id: str, thread: threading.Thread, *, quiet: bool
) -> None:
    from downloader import jobs

    if quiet:
        thread.join()
        return
    from tqdm import tqdm

    total = jobs.get_job(services.db, job_id).images
    with tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True, mininterval=0.5) as bar:
        while thread.is_alive():
            thread.join(0.5)
            counts = jobs.job_counts(services.db, job_id)
            bar.n = counts.finished
            bar.set_postfix(done=counts.done, failed=counts.failed, refresh=False)
            bar.refresh()
