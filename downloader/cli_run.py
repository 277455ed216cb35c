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
    job_options_from,
    owner_from,
    parse_input,
    request_headers_from,
    services_for,
    settings_for,
    source_name,
)
from downloader.processes import tune_gc_for_engine

if TYPE_CHECKING:
    from downloader.engine import Engine
    from downloader.request_headers import RequestHeaders
    from downloader.run_helpers import Helper
    from downloader.services import Services
    from downloader.settings import Settings

IMAGES_PER_EXTRA_PROCESS = 400  # below this a second process costs more than it gives


def cmd_run(args: argparse.Namespace) -> int:
    """Queue the input (or find its unfinished job), then download it to the end.

    A small input file (run_helpers.SMALL_INPUT_BYTES, POSIX) is parsed in a forked child
    while this process loads its database and engine code (forked_parse.py); the helper
    engines are forks of this process once the job is queued. A big input (or standard
    input) is parsed in one process image and downloaded in another: after queueing, `run`
    re-executes itself (same pid, so signals and process-tree measurements are unaffected),
    so its engine never carries pandas, pyarrow or the parsed table (~150 MB at 100,000 rows).
    """
    started = args.started if args.started is not None else time.time()
    # The job's own headers go to the engines through the database (stored on the job),
    # never on a command line: the download phase's and the helpers' have none.
    headers = request_headers_from(args) if args.job is None else None
    if args.job is None:  # a malformed naming template or layout stops here, before reading
        job_options_from(args)
    if args.job is None:
        owner_from(args)  # a bad --owner stops here too, before anything is read
    if headers is not None and _is_small_input_file(args):
        return _run_small_input(args, started, headers)
    from downloader import jobs

    services = services_for(args)
    if args.job is None:
        if args.input is None:
            raise CliError("run needs an INPUT file (or - for standard input)")
        from downloader.inputs.to_rows import input_fingerprint  # pandas: this phase only

        parsed = parse_input(args, services.settings.max_rows_per_job)
        fingerprint = input_fingerprint(parsed)
        job_id = jobs.find_unfinished_job(services.db, fingerprint)
        if job_id:
            _resume(services, job_id, headers)
        else:
            job_id = jobs.create_job(
                services.db,
                parsed,
                name=args.name,
                source=source_name(args),
                created_by="cli",
                owner=owner_from(args),
                fingerprint=fingerprint,
                request_headers=headers,
                options=job_options_from(args),
            ).id
        del parsed
        if os.name == "posix":
            _exec_download_phase(args, services, job_id, started)
    else:
        job_id = jobs.get_job(services.db, args.job).id
    return _download_phase(args, services, job_id, started)


def _run_small_input(
    args: argparse.Namespace, started: float, headers: RequestHeaders | None
) -> int:
    from downloader.forked_parse import parse_in_child

    settings = settings_for(args)
    parsing = parse_in_child(args, settings.max_rows_per_job)
    # Loaded while the child parses: the database, the engine, the event loop.
    import downloader.engine  # noqa: F401
    from downloader import jobs
    from downloader.services import warm_up_event_loop

    services = services_for(args)
    warm_up_event_loop()
    rows = parsing.rows()
    job_id = jobs.find_unfinished_job(services.db, rows.fingerprint)
    if job_id:
        _resume(services, job_id, headers)
    else:
        job_id = jobs.insert_job(
            services.db,
            rows,
            name=args.name,
            source=source_name(args),
            created_by="cli",
            owner=owner_from(args),
            request_headers=headers,
            options=job_options_from(args),
        ).id
    del rows
    return _download_phase(args, services, job_id, started, fork=True)


def _resume(services: Services, job_id: str, headers: RequestHeaders | None) -> None:
    """Resume the unfinished job of the same input. It keeps its request headers, unless this
    command line gives some: then they replace the job's for the rest of it."""
    from downloader import jobs

    print(f"resuming unfinished job {job_id} for the same input", file=sys.stderr)
    if headers:
        jobs.set_request_headers(services.db, job_id, headers)
        print("its request headers are replaced by this command line's", file=sys.stderr)
    jobs.resume_job(services.db, job_id)


def _is_small_input_file(args: argparse.Namespace) -> bool:
    from downloader.run_helpers import SMALL_INPUT_BYTES

    if os.name != "posix" or args.input in (None, "-"):
        return False
    try:
        return Path(args.input).stat().st_size <= SMALL_INPUT_BYTES
    except OSError:
        return False  # reported by the parser


def _exec_download_phase(
    args: argparse.Namespace, services: Services, job_id: str, started: float
) -> None:
    from downloader import jobs

    settings = services.settings
    argv = [sys.executable, "-m", "downloader", "run", "--job", job_id, "--started", repr(started)]
    # The database URL may hold a password: it goes through the environment (readable by
    # this user only), never on a command line (/proc/<pid>/cmdline is readable by everyone).
    os.environ["DATABASE_URL"] = settings.database_url
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
    *,
    fork: bool = False,
) -> int:
    """Download the job to the end with this process's engine and its helpers (`fork`: forks
    of this process, else started, or adopted after the exec)."""
    from downloader import jobs
    from downloader.run_helpers import adopt_helpers

    if args.helpers is not None:  # started before the exec, with their share
        processes = args.processes
        helpers = adopt_helpers(args.helpers)
    else:
        pending = jobs.job_counts(services.db, job_id).pending
        processes = _process_count(args, services, pending)
        if fork:
            helpers = _fork_helpers(services, job_id, processes)
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


def _fork_helpers(services: Services, job_id: str, processes: int) -> list[Helper]:
    """The `processes - 1` helper engines as forks of this process, each with 1/processes."""
    from downloader.run_helpers import fork_helpers

    def helper_engine() -> None:
        from downloader.engine import Engine
        from downloader.services import run_engine_in_foreground
        from downloader.storage import make_storage

        tune_gc_for_engine()
        engine = Engine(
            services.db,
            make_storage(services.settings),  # S3's client keeps connections: not the parent's
            services.settings,
            kind="run",
            job_id=job_id,
            share=1.0 / processes,
        )
        run_engine_in_foreground(engine, until_idle=True)

    if processes < 2:
        return []
    services.db.dispose()  # no connection is shared with a child: each opens its own
    return fork_helpers(processes - 1, helper_engine)


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
