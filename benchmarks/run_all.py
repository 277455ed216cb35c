"""One command for every benchmark section; see benchmarks/README.md.

.venv/bin/python -m benchmarks.run_all                 # everything, 5 rounds
.venv/bin/python -m benchmarks.run_all --smoke         # 200 images, 1 round, < 1 minute
.venv/bin/python -m benchmarks.run_all --only download --rounds 3
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks import corpus, download, hooks, ingest, nginx, zipbench
from benchmarks.common import (
    REPO_ROOT,
    WORK_DIR,
    SectionResult,
    find_program,
    log,
    missing_program_reason,
)
from benchmarks.report import render_markdown, write_results
from benchmarks.runners import Aria2Runner, CurlRunner, Img2DatasetRunner, OursRunner, Runner

SECTIONS = ("download", "memory", "ingest", "zip", "page")
SERVED = {"download", "memory", "zip"}  # sections that need nginx and the corpus
TOOLS = ("ours", "aria2c", "curl", "img2dataset")


def _csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__)
    p.add_argument("--only", default=",".join(SECTIONS), help=f"sections: {','.join(SECTIONS)}")
    p.add_argument("--smoke", action="store_true", help="200 images, 1 round, small sizes")
    p.add_argument("--rounds", type=int, help="rounds per tool (default 5; smoke 1)")
    p.add_argument("--memory-rounds", type=int, default=1, help="rounds for the memory run")
    p.add_argument("--images", type=int, help="download corpus size (default 10000; smoke 200)")
    p.add_argument("--memory-products", type=int, help="products x 1 small image (default 100000)")
    p.add_argument("--ingest-rows", help="comma-separated CSV sizes (default 100000,1000000)")
    p.add_argument(
        "--tools",
        default="ours,aria2c,curl",
        help=f"tools to compare, from {','.join(TOOLS)} (img2dataset needs --img2dataset)",
    )
    p.add_argument("--img2dataset", help="path of an img2dataset executable (own virtualenv)")
    p.add_argument("--concurrency", type=int, default=64, help="downloads in flight, every tool")
    p.add_argument("--timeout", type=float, help="seconds before a run is killed (default 1800)")
    p.add_argument(
        "--ours-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra setting for our CLI (repeatable), e.g. RUN_PROCESSES=2",
    )
    p.add_argument("--zip-route", default=zipbench.DEFAULT_ZIP_ROUTE, help="app's master-ZIP path")
    p.add_argument("--nginx-workers", default="auto", help="nginx worker_processes")
    p.add_argument(
        "--files-dir",
        type=Path,
        help="where the download and memory rounds write their files (default: benchmarks/work;"
        " e.g. /dev/shm/bench to leave the disk out)",
    )
    p.add_argument("--strict", action="store_true", help="exit 1 when any check failed")
    args = p.parse_args(argv)
    unknown = set(_csv_list(args.only)) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {SECTIONS}")
    bad_tools = set(_csv_list(args.tools)) - set(TOOLS)
    if bad_tools:
        p.error(f"unknown tool(s) {', '.join(sorted(bad_tools))}; choose from {TOOLS}")
    smoke = args.smoke
    # Five: a round's time swings up to 2.5x with this VM's disk state (benchmarks/README.md),
    # and the median of five survives two bad rounds.
    args.rounds = args.rounds or (1 if smoke else 5)
    args.images = args.images or (200 if smoke else 10_000)
    args.memory_products = args.memory_products or (200 if smoke else 100_000)
    args.ingest_rows = args.ingest_rows or ("1000" if smoke else "100000,1000000")
    args.timeout = args.timeout or (120.0 if smoke else 1800.0)
    args.sections = [name for name in SECTIONS if name in _csv_list(args.only)]
    try:
        args.ours_env = dict(item.split("=", 1) for item in args.ours_env)
        args.ingest_row_counts = [int(n) for n in _csv_list(args.ingest_rows)]
    except ValueError as exc:
        p.error(f"bad --ours-env or --ingest-rows: {exc}")
    return args


def build_runners(args: argparse.Namespace) -> list[Runner]:
    by_name: dict[str, Runner] = {
        "ours": OursRunner(args.ours_env),
        "aria2c": Aria2Runner(),
        "curl": CurlRunner(),
        "img2dataset": Img2DatasetRunner(args.img2dataset),
    }
    names = _csv_list(args.tools)
    if args.img2dataset and "img2dataset" not in names:
        names.append("img2dataset")
    return [by_name[name] for name in names]


def _first_line(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    line = ((result.stdout or result.stderr).strip().splitlines() or ["?"])[0]
    return line.split(" (", 1)[0]  # curl's first line goes on with its build features


def machine_info(argv: list[str]) -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    tools = []
    for name, version_argv in (
        ("nginx", ["-v"]),
        ("aria2c", ["--version"]),
        ("curl", ["--version"]),
    ):
        path = find_program(name)
        tools.append(_first_line([path, *version_argv]) if path else f"{name}: missing")
    commit = _first_line(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(REPO_ROOT), "status", "--porcelain"]) != "?"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": shlex.join([".venv/bin/python", "-m", "benchmarks.run_all", *argv]),
        "machine": f"{os.cpu_count()} cores ({cpu}), {mem_gb:.0f} GiB RAM, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}",
        "tools": "; ".join(tools),
        "commit": commit + (" + uncommitted changes" if dirty else ""),
    }


def report_missing_programs(args: argparse.Namespace, runners: list[Runner]) -> None:
    missing = [r.unavailable() for r in runners if r.unavailable()]
    if SERVED & set(args.sections) and find_program("nginx") is None:
        missing.insert(0, missing_program_reason("nginx"))
    for reason in missing:
        log("setup", str(reason))
    if any(name in str(reason) for reason in missing for name in ("nginx", "aria2c")):
        log("setup", "Debian/Ubuntu: apt-get install nginx aria2 curl (the harness never installs)")


@contextlib.contextmanager
def corpus_server(args: argparse.Namespace) -> Iterator[nginx.Server | None]:
    """Corpus generated and nginx serving it, or None (with the reason logged)."""
    if not SERVED & set(args.sections):
        yield None
        return
    images = corpus.ensure_images(args.images) if {"download", "zip"} & set(args.sections) else []
    small = corpus.ensure_small() if "memory" in args.sections else []
    log("corpus", f"{len(images):,} images ({sum(f.size for f in images) / 1e6:,.0f} MB) ready")
    corpus.warm_page_cache(corpus.IMG_DIR, (f.name for f in images))
    corpus.warm_page_cache(corpus.SMALL_DIR, (f.name for f in small))
    try:
        with nginx.serve(args.nginx_workers) as server:
            probes = [f"/img/{f.name}" for f in images[:2]]
            probes += [f"/small/12345/{f.name}" for f in small[:1]]
            nginx.check_serving(server, probes)
            yield server
    except RuntimeError as exc:
        log("nginx", f"cannot serve the corpus: {exc}")
        yield None


def run_sections(args: argparse.Namespace) -> list[SectionResult]:
    runners = build_runners(args)
    report_missing_programs(args, runners)
    results: list[SectionResult] = []
    with corpus_server(args) as server:
        common = {
            "concurrency": args.concurrency,
            "timeout": args.timeout,
            "server_pid": server.pid if server else None,
        }
        if server is None:
            for name in ("download", "memory"):
                if name in args.sections:
                    results.append(SectionResult(name).skip("nginx could not serve the corpus"))
        if server is not None and "download" in args.sections:
            work = corpus.download_list(corpus.ensure_images(args.images), server.port)
            results.append(
                download.compare(
                    "download",
                    work,
                    runners,
                    rounds=args.rounds,
                    files_root=args.files_dir,
                    **common,
                )
            )
        if server is not None and "memory" in args.sections:
            work = corpus.memory_list(corpus.ensure_small(), args.memory_products, server.port)
            results.append(
                download.compare(
                    "memory",
                    work,
                    runners,
                    rounds=args.memory_rounds,
                    files_root=args.files_dir,
                    **common,
                )
            )
        if "zip" in args.sections:  # bench_zip.py runs without a server; the master ZIP does not
            zip_work = None
            if server is not None:
                zip_work = corpus.download_list(corpus.ensure_images(args.images), server.port)
            results.append(
                zipbench.run(
                    zip_work, env_overrides=args.ours_env, zip_route=args.zip_route, **common
                )
            )
    if "ingest" in args.sections:
        results.append(
            ingest.run(
                args.ingest_row_counts,
                rounds=args.rounds,
                timeout=args.timeout,
                env_overrides=args.ours_env,
            )
        )
    if "page" in args.sections:
        page_args = ["--products", "200", "--runs", "2"] if args.smoke else []
        results.append(hooks.page_section(args.timeout, page_args))
    order = {name: index for index, name in enumerate(SECTIONS)}
    return sorted(results, key=lambda section: order[section.name])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    meta = machine_info(argv)
    meta["settings"] = {
        key: value
        for key, value in vars(args).items()
        if key not in {"only", "ingest_rows"}  # shown in their parsed form
    }
    started = time.monotonic()
    # Our bytecode, as scripts/setup.sh (or any first run) leaves it: with
    # PYTHONDONTWRITEBYTECODE set, a fresh work tree would compile the package in every process.
    compileall.compile_dir(REPO_ROOT / "downloader", quiet=1)
    results = run_sections(args)
    meta["total_seconds"] = round(time.monotonic() - started, 1)
    markdown = render_markdown(results, meta)
    stamp = time.strftime("%Y-%m-%d-%H%M%S")
    json_path, md_path = write_results(results, meta, WORK_DIR, stamp)
    print("\n" + markdown)
    print(f"Results: {json_path.relative_to(REPO_ROOT)} and {md_path.relative_to(REPO_ROOT)}")
    failed = [section.name for section in results if section.status == "failed"]
    if failed:
        print(f"Checks FAILED in: {', '.join(failed)}")
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    raise SystemExit(main())
