"""`python -m downloader …`: the same engine as the app, from a terminal.

Contract: the last stdout line is one JSON object; progress and messages go to stderr;
exit 2 on unusable input (or an unknown job), 0 when a job ran (failed images are data).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from downloader.errors import UserError
from downloader.processes import tune_gc_for_engine
from downloader.settings import load_settings

if TYPE_CHECKING:
    from downloader.engine import Engine
    from downloader.inputs import ParsedInput
    from downloader.run_helpers import Helper
    from downloader.services import Services
    from downloader.settings import Settings

# Heavy modules (pandas, the parser, the jobs service) are imported inside the commands
# that need them, so `worker` and `run`'s helper processes stay small.

EXIT_OK = 0
EXIT_UNHEALTHY = 1
EXIT_USAGE = 2
IMAGES_PER_EXTRA_PROCESS = 400  # below this a second process costs more than it gives


class CliError(UserError):
    """A readable one-line problem; exit code 2."""


def main(argv: list[str] | None = None) -> int:
    # pyarrow's default pool (mimalloc) keeps freed memory; the system allocator gives it
    # back, ~20 MB less at the ingest peak of 100,000 rows. Must be set before the import.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s"
    )
    try:
        return int(args.handler(args))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m downloader", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--database-url", help="overrides DATABASE_URL")
        p.add_argument("--media-root", help="overrides MEDIA_ROOT (local storage)")

    def input_args(p: argparse.ArgumentParser, *, optional: bool = False) -> None:
        p.add_argument(
            "input",
            nargs="?" if optional else None,
            help="CSV/TSV/XLSX path, or - for standard input",
        )
        p.add_argument("--sheet", help="XLSX sheet name (default: the first)")
        p.add_argument("--product-column", help="column holding product numbers")
        p.add_argument("--url-column", help="column holding image URLs")
        p.add_argument("--name", default="", help="a name for the job")

    p = sub.add_parser("run", help="run a job to the end in this process")
    input_args(p, optional=True)  # the internal download phase (--job) takes no input
    common(p)
    p.add_argument("--processes", type=int, help="engine processes (default RUN_PROCESSES)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    # Internal: the download phase of `run`, after it re-executed itself (see cmd_run).
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.add_argument("--started", type=float, help=argparse.SUPPRESS)
    p.add_argument("--helpers", help=argparse.SUPPRESS)  # pids of helpers started before exec
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("submit", help="queue a job for workers and return")
    input_args(p)
    common(p)
    p.set_defaults(handler=cmd_submit)

    p = sub.add_parser("status", help="counts of a job")
    p.add_argument("job_id")
    common(p)
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("zip", help="write the master ZIP or one product's ZIP")
    p.add_argument("job_id")
    p.add_argument("--out", required=True, help="file to write")
    p.add_argument("--product", help="only this product")
    common(p)
    p.set_defaults(handler=cmd_zip)

    p = sub.add_parser("worker", help="process queued work until SIGTERM")
    common(p)
    p.add_argument("--job", help=argparse.SUPPRESS)  # used by `run` for its helper processes
    p.add_argument("--until-idle", action="store_true", help="exit when nothing is left to do")
    p.add_argument("--share", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--job-from-stdin", action="store_true", help=argparse.SUPPRESS)  # `run`'s
    p.set_defaults(handler=cmd_worker)

    p = sub.add_parser("cleanup", help="remove jobs older than JOB_RETENTION_DAYS now")
    common(p)
    p.add_argument("--days", type=float, help="overrides JOB_RETENTION_DAYS (0 = keep all)")
    p.set_defaults(handler=cmd_cleanup)

    p = sub.add_parser("check", help="the system check; non-zero exit when unhealthy")
    common(p)
    p.set_defaults(handler=cmd_check)
    return parser


# ---------------------------------------------------------------- helpers


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    if getattr(args, "media_root", None):
        overrides["media_root"] = args.media_root
    return load_settings(**overrides)


def _services(args: argparse.Namespace) -> Services:
    from downloader.services import build_services

    return build_services(_settings(args))


def _parse_input(args: argparse.Namespace, max_rows: int) -> ParsedInput:
    from downloader.inputs import parse_bytes, parse_path

    options = {
        "sheet": args.sheet,
        "product_column": args.product_column,
        "url_column": args.url_column,
        "max_rows": max_rows,
    }
    if args.input == "-":
        parsed = parse_bytes(sys.stdin.buffer.read(), "stdin.csv", **options)
    else:
        path = Path(args.input)
        if not path.is_file():
            raise CliError(f"{args.input}: no such file")
        parsed = parse_path(path, **options)
    for rejected in parsed.rejected[:20]:
        print(f"row {rejected.row}: {rejected.reason}", file=sys.stderr)
    if len(parsed.rejected) > 20:
        print(f"… and {len(parsed.rejected) - 20} more rejected rows", file=sys.stderr)
    if not len(parsed.frame):
        raise CliError("no valid rows to download")
    return parsed


def _emit(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def _counts_payload(services: Services, job_id: str) -> dict[str, Any]:
    from downloader import jobs

    summary = jobs.job_summary(services.db, job_id)
    counts = summary.counts
    return {
        "job_id": job_id,
        "products": summary.job.products,
        "images": summary.job.images,
        "done": counts.done,
        "duplicate": counts.duplicate,
        "failed": counts.failed,
    }


def _source_name(args: argparse.Namespace) -> str:
    return "standard input" if args.input == "-" else Path(args.input).name


# ---------------------------------------------------------------- commands


def cmd_submit(args: argparse.Namespace) -> int:
    from downloader import jobs

    services = _services(args)
    parsed = _parse_input(args, services.settings.max_rows_per_job)
    job = jobs.create_job(
        services.db, parsed, name=args.name, source=_source_name(args), created_by="cli"
    )
    _emit(
        {
            "job_id": job.id,
            "products": job.products,
            "images": job.images,
            "rejected": job.rejected_rows,
        }
    )
    return EXIT_OK


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

    services = _services(args)
    if args.job is None:
        if args.input is None:
            raise CliError("run needs an INPUT file (or - for standard input)")
        parsed = _parse_input(args, services.settings.max_rows_per_job)
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
                source=_source_name(args),
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

    settings = _settings(args)
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
    _emit({**_counts_payload(services, job_id), "seconds": round(time.time() - started, 3)})
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


def cmd_status(args: argparse.Namespace) -> int:
    from downloader import jobs

    services = _services(args)
    summary = jobs.job_summary(services.db, args.job_id)
    payload = _counts_payload(services, args.job_id)
    end = summary.job.finished_at or time.time()
    seconds = end - summary.job.started_at if summary.job.started_at else 0.0
    _emit({**payload, "seconds": round(seconds, 3), "status": summary.job.status})
    return EXIT_OK


def cmd_zip(args: argparse.Namespace) -> int:
    from downloader import jobs

    services = _services(args)
    job = jobs.get_job(services.db, args.job_id)
    if args.product is not None:
        if args.product not in jobs.product_numbers(services.db, job.id):
            raise CliError(f"job {job.id} has no product {args.product!r}")
        chunks = jobs.product_zip(services.db, services.storage, job.id, args.product)
    else:
        chunks = jobs.job_zip(services.db, services.storage, job.id)
    out = Path(args.out)
    partial = out.with_name(out.name + ".part")
    written = 0
    with partial.open("wb") as handle:
        for chunk in chunks:
            handle.write(chunk)
            written += len(chunk)
    partial.replace(out)
    _emit({"job_id": job.id, "product": args.product, "file": str(out), "bytes": written})
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    from downloader.engine import Engine
    from downloader.services import run_engine_until_stopped

    job_id, share = args.job, args.share
    if args.job_from_stdin:  # a helper `run` started before it read its input (run_helpers)
        from downloader.run_helpers import read_assignment

        assignment = read_assignment()
        if assignment is None:
            return EXIT_OK  # not needed after all
        job_id, share = assignment
    services = _services(args)
    engine = Engine(
        services.db,
        services.storage,
        services.settings,
        # `run`'s helper processes have a fixed share and do not count as deployment workers
        kind="run" if job_id else "worker",
        job_id=job_id,
        share=share,
    )

    def handle(signum: int, _frame: object) -> None:
        engine.stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    tune_gc_for_engine()
    run_engine_until_stopped(engine, until_idle=args.until_idle)
    _emit(
        {
            "worker_id": engine.worker_id,
            "images": engine.stats.finished,
            "failed": engine.stats.failed,
        }
    )
    return EXIT_OK


def cmd_cleanup(args: argparse.Namespace) -> int:
    from downloader.retention import cleanup

    services = _services(args)
    days = services.settings.job_retention_days if args.days is None else args.days
    if days < 0:
        raise CliError("--days must be 0 (keep all) or more")
    _emit({"deleted_jobs": cleanup(services.db, services.storage, days)})
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from downloader.health import system_check

    services = _services(args)
    checks = system_check(services, engine_expected=False)
    for check in checks:
        print(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}", file=sys.stderr)
    healthy = all(c.ok for c in checks)
    _emit(
        {"healthy": healthy, "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks}}
    )
    return EXIT_OK if healthy else EXIT_UNHEALTHY
