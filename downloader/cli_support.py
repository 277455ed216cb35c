"""What the CLI's commands share: exit codes, the one-line error, settings and services from
the command line, reading an input file, and the JSON line each command ends with."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from downloader.errors import UserError
from downloader.settings import load_settings

if TYPE_CHECKING:
    from downloader.inputs import ParsedInput
    from downloader.job_options import JobOptions
    from downloader.request_headers import RequestHeaders
    from downloader.services import Services
    from downloader.settings import Settings

EXIT_OK = 0
EXIT_UNHEALTHY = 1
EXIT_USAGE = 2


class CliError(UserError):
    """A readable one-line problem; exit code 2."""


def settings_for(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    if getattr(args, "media_root", None):
        overrides["media_root"] = args.media_root
    return load_settings(**overrides)


def owner_from(args: argparse.Namespace) -> str:
    """Who a job from the command line belongs to: --owner, else the DOWNLOADER_USER
    environment variable, else "cli" (downloader.identity; lower-cased like sign-in e-mails)."""
    import os

    from downloader.identity import normalise

    given = getattr(args, "owner", None) or os.environ.get("DOWNLOADER_USER") or "cli"
    owner = normalise(given)
    if owner is None:
        raise CliError(
            "--owner (or DOWNLOADER_USER) must be an e-mail or user name: at most 320 "
            "characters, no spaces, quotes or angle brackets"
        )
    return owner


def output_args(p: argparse.ArgumentParser) -> None:
    """The job's output options for `run` and `submit` (downloader.job_options)."""
    p.add_argument(
        "--naming",
        metavar="TEMPLATE",
        help="file name template (default {product}_{position}; .{ext} is appended); fields: "
        "{product} {position} {original_name} {ext} {sha8} and every other input column as "
        "{column_name} (lower-cased, other characters as _)",
    )
    p.add_argument(
        "--layout",
        choices=["per-product", "flat"],
        help="master ZIP layout: a folder per product (default) or every file at the root",
    )
    from downloader.outputs.cli_args import conversion_args

    conversion_args(p)  # converted outputs and marketplace checks (downloader.outputs)


def job_options_from(args: argparse.Namespace) -> JobOptions:
    """The job's output options from the command line; the template's form is checked here,
    before the input is read (its fields against the input's columns when the job is made)."""
    from downloader.job_options import DEFAULT_NAMING, JobOptions
    from downloader.templates import check_syntax

    naming = getattr(args, "naming", None) or DEFAULT_NAMING
    layout = getattr(args, "layout", None) or "per-product"
    from downloader.outputs.cli_args import with_conversion

    check_syntax(naming, layout)
    return with_conversion(JobOptions(naming=naming, layout=layout), args)


def services_for(args: argparse.Namespace) -> Services:
    from downloader.services import build_services

    return build_services(settings_for(args))


def parse_input(args: argparse.Namespace, max_rows: int) -> ParsedInput:
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


def header_args(p: argparse.ArgumentParser) -> None:
    """The job's own request headers (downloader.request_headers), on `run` and `submit`."""
    p.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a request header for every image of the job (repeatable)",
    )
    p.add_argument(
        "--header-for",
        action="append",
        nargs=2,
        default=[],
        metavar=("HOST", "'NAME: VALUE'"),
        help="a request header for one host (HOST, HOST:PORT or *.DOMAIN; repeatable)",
    )
    p.add_argument(
        "--headers-file",
        metavar="FILE",
        help="headers, one a line ('Name: value' or 'HOST | Name: value'): keeps cookies and "
        "tokens off the command line, which other users of the machine can read",
    )
    p.add_argument(
        "--any-format",
        action="store_true",
        help="accept any format the CDN prefers (WebP/AVIF); the default asks for originals",
    )


def request_headers_from(args: argparse.Namespace) -> RequestHeaders:
    """The job's headers from the command line; HeaderError (exit 2) for a bad one."""
    from downloader.request_headers import MAX_TEXT_CHARS, parse_options

    text, name = "", ""
    if args.headers_file:
        name = f"--headers-file {Path(args.headers_file).name}"
        try:
            with open(args.headers_file, "rb") as handle:
                data = handle.read(4 * MAX_TEXT_CHARS + 1)  # bounded: the parser refuses more
            if len(data) > 4 * MAX_TEXT_CHARS:
                raise CliError(f"{name}: longer than {MAX_TEXT_CHARS:,} characters")
            text = data.decode("utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"{name}: cannot be read ({type(exc).__name__})") from None
    return parse_options(
        args.header, args.header_for, any_format=args.any_format, text=text, text_name=name
    )


def emit(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def counts_payload(services: Services, job_id: str) -> dict[str, Any]:
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


def source_name(args: argparse.Namespace) -> str:
    return "standard input" if args.input == "-" else Path(args.input).name
