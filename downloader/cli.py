"""`python -m downloader …`: the same engine as the app, from a terminal.

Contract: the last stdout line is one JSON object; progress and messages go to stderr;
exit 2 on unusable input (or an unknown job), 0 when a job ran (failed images are data).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from downloader.cli_run import cmd_run
from downloader.cli_support import (
    EXIT_OK,
    EXIT_UNHEALTHY,
    EXIT_USAGE,
    CliError,
    counts_payload,
    emit,
    header_args,
    job_options_from,
    output_args,
    owner_from,
    parse_input,
    request_headers_from,
    services_for,
    source_name,
)
from downloader.errors import UserError
from downloader.processes import tune_gc_for_engine

# Heavy modules (pandas, the parser, the jobs service) are imported inside the commands
# that need them, so `worker` and `run`'s helper processes stay small.


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
        p.add_argument(
            "--owner",
            help="who the job belongs to (an e-mail; default: DOWNLOADER_USER, else 'cli')",
        )
        header_args(p)
        output_args(p)

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

    p = sub.add_parser("report", help="write the Excel report (a row and thumbnail per image)")
    p.add_argument("job_id")
    p.add_argument("--out", required=True, help="the .xlsx file to write")
    common(p)
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("worker", help="process queued work until SIGTERM")
    common(p)
    p.add_argument("--job", help=argparse.SUPPRESS)  # used by `run` for its helper processes
    p.add_argument("--until-idle", action="store_true", help="exit when nothing is left to do")
    p.add_argument("--share", type=float, default=None, help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_worker)

    p = sub.add_parser("cleanup", help="remove jobs older than JOB_RETENTION_DAYS now")
    common(p)
    p.add_argument("--days", type=float, help="overrides JOB_RETENTION_DAYS (0 = keep all)")
    p.set_defaults(handler=cmd_cleanup)

    p = sub.add_parser("check", help="the system check; non-zero exit when unhealthy")
    common(p)
    p.set_defaults(handler=cmd_check)

    from downloader.cli_tokens import add_token_parser

    add_token_parser(sub, common)  # token create|list|revoke (the HTTP API's tokens)
    return parser


# ---------------------------------------------------------------- commands


def cmd_submit(args: argparse.Namespace) -> int:
    from downloader import jobs

    headers = request_headers_from(args)  # a bad header stops here, before anything is read
    owner = owner_from(args)
    options = job_options_from(args)  # a malformed template stops here, before reading
    services = services_for(args)
    parsed = parse_input(args, services.settings.max_rows_per_job)
    job = jobs.create_job(
        services.db,
        parsed,
        name=args.name,
        source=source_name(args),
        created_by="cli",
        owner=owner,
        request_headers=headers,
        options=options,
    )
    emit(
        {
            "job_id": job.id,
            "products": job.products,
            "images": job.images,
            "rejected": job.rejected_rows,
        }
    )
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from downloader import jobs

    services = services_for(args)
    summary = jobs.job_summary(services.db, args.job_id)
    payload = counts_payload(services, args.job_id)
    end = summary.job.finished_at or time.time()
    seconds = end - summary.job.started_at if summary.job.started_at else 0.0
    emit({**payload, "seconds": round(seconds, 3), "status": summary.job.status})
    return EXIT_OK


def cmd_zip(args: argparse.Namespace) -> int:
    from downloader import jobs

    services = services_for(args)
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
    emit({"job_id": job.id, "product": args.product, "file": str(out), "bytes": written})
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from downloader import jobs

    services = services_for(args)
    job = jobs.get_job(services.db, args.job_id)
    out = Path(args.out)
    partial = out.with_name(out.name + ".part")
    stats = jobs.write_report(services.db, services.storage, job.id, partial)
    partial.replace(out)
    emit(
        {
            "job_id": job.id,
            "file": str(out),
            "images": stats.images,
            "thumbnails": stats.thumbnails,
            "products": stats.products,
        }
    )
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    from downloader.engine import Engine
    from downloader.services import run_engine_in_foreground

    job_id, share = args.job, args.share
    services = services_for(args)
    tune_gc_for_engine()
    engine = Engine(
        services.db,
        services.storage,
        services.settings,
        # `run`'s helper processes have a fixed share and do not count as deployment workers
        kind="run" if job_id else "worker",
        job_id=job_id,
        share=share,
    )
    run_engine_in_foreground(engine, until_idle=args.until_idle)
    emit(
        {
            "worker_id": engine.worker_id,
            "images": engine.stats.finished,
            "failed": engine.stats.failed,
        }
    )
    return EXIT_OK


def cmd_cleanup(args: argparse.Namespace) -> int:
    from downloader.retention import cleanup

    services = services_for(args)
    days = services.settings.job_retention_days if args.days is None else args.days
    if days < 0:
        raise CliError("--days must be 0 (keep all) or more")
    emit({"deleted_jobs": cleanup(services.db, services.storage, days)})
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from downloader.health import effective_settings, system_check

    services = services_for(args)
    checks = system_check(services, engine_expected=False)
    for check in checks:
        print(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}", file=sys.stderr)
    shown = effective_settings(services)  # secrets masked, as on the system page
    for name, value in shown.items():
        print(f"     {name}={value}", file=sys.stderr)
    healthy = all(c.ok for c in checks)
    emit(
        {
            "healthy": healthy,
            "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks},
            "settings": shown,
        }
    )
    return EXIT_OK if healthy else EXIT_UNHEALTHY
