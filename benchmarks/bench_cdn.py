"""CDN-like HTTPS benchmark (issue 20): ours, aria2c and curl (HTTP/2) in one run.

.venv/bin/python -m benchmarks.bench_cdn                  # 6,000 images, 3 rounds (setup if needed)
.venv/bin/python -m benchmarks.bench_cdn --smoke          # 300 images, 1 round
.venv/bin/python -m benchmarks.bench_cdn --plain-http     # the same over plain HTTP/1.1

nginx serves ~220 KB images on 16 loopback hosts over HTTPS with a trustme CA, waiting 40 ms
before the first byte and sending each response at 2 MiB/s; every tool downloads the same list
with 64 downloads in flight. Whole-process wall time per round, median and range, the ratios
ours/curl and ours/aria2c per round and of the medians, and the latency bound
images / concurrency x (delay + mean size / rate). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks import cdn_server, corpus, download, nginx
from benchmarks.common import BENCH_DIR, REPO_ROOT, WORK_DIR, RunRecord, fresh_dir, log
from benchmarks.corpus import CorpusFile, UrlList
from benchmarks.measure import Measurement
from benchmarks.report import fmt, markdown_table, median
from benchmarks.runners import (
    Aria2Runner,
    CurlRunner,
    OursRunner,
    RoundDirs,
    Runner,
    Verdict,
    sha256_sample_problems,
)

SECTION = "cdn"
RESULTS_DIR = BENCH_DIR / "results"
TOOLS = ("ours", "aria2c", "curl")
MIN_SIZE = 140_000  # corpus sizes are uniform over 100-300 KB: from 140 KB on, ~220 KB mean
# Trust settings a tool could pick up besides the one each is given on purpose.
TRUST_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
RATE_UNITS = {"k": 1024, "m": 1024 * 1024}
# The downloads go to a tmpfs by default: this benchmark is about the network. On this VM's
# journal-less ext4, creating a file gets slower for minutes after files were deleted
# (benchmarks/README.md), so onto the disk a tool's time would depend on what was deleted
# before its round rather than on the network (aria2c's most of all: see the README).
TMPFS_DIR = Path("/dev/shm/bench-cdn")


def _tmpfs_has_room(images: int) -> bool:
    folder = TMPFS_DIR.parent
    return folder.is_dir() and shutil.disk_usage(folder).free > images * 300_000 * 2 + 2**30


def rate_bytes(rate: str) -> int:
    """nginx's size syntax: 2m = 2 MiB (per second, for limit_rate)."""
    unit = RATE_UNITS.get(rate[-1].lower(), 1)
    return int(rate.rstrip("kKmM")) * unit


def cdn_images(count: int) -> list[CorpusFile]:
    """The first `count` corpus images of at least MIN_SIZE bytes (the corpus grows as needed)."""
    want = math.ceil(count / 0.78) + 50
    while True:
        picked = [f for f in corpus.ensure_images(want) if f.size >= MIN_SIZE][:count]
        if len(picked) == count:
            return picked
        want += max(100, (count - len(picked)) * 2)


class CdnRunner(Runner):
    """A tool of benchmarks.runners told to trust the test CA its own way; its check also
    hashes a sample of what it wrote."""

    def __init__(
        self, inner: Runner, args: list[str], env: dict[str, str], expected: set[str], sample: int
    ) -> None:
        self.inner, self.args, self.extra_env = inner, args, env
        self.expected, self.sample = expected, sample
        self.name = inner.name

    def unavailable(self) -> str | None:
        return self.inner.unavailable()

    def command(self, work: UrlList, dirs: RoundDirs, concurrency: int) -> list[str]:
        return [*self.inner.command(work, dirs, concurrency), *self.args]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in self.inner.env().items() if k not in TRUST_VARIABLES}
        return {**env, **self.extra_env}

    def check(self, work: UrlList, dirs: RoundDirs, m: Measurement) -> Verdict:
        verdict = self.inner.check(work, dirs, m)
        if not verdict.problems:
            checked, problems = sha256_sample_problems(dirs.files, self.expected, self.sample)
            verdict.problems += problems
            verdict.extra["sha256_sampled"] = checked
        return verdict


def build_runners(
    args: argparse.Namespace, tls: cdn_server.TlsFiles | None, expected: set[str]
) -> list[Runner]:
    ours_env = {
        "MAX_GLOBAL_CONCURRENCY": str(args.concurrency),
        "MAX_PER_HOST_CONCURRENCY": str(args.per_host),
        **args.ours_env,
    }
    ca = str(tls.ca) if tls else ""
    trust_ours = {"SSL_CERT_FILE": ca} if tls else {}
    by_name: dict[str, Runner] = {
        "ours": CdnRunner(OursRunner(ours_env), [], trust_ours, expected, args.sample),
        "aria2c": CdnRunner(
            Aria2Runner(), [f"--ca-certificate={ca}"] if tls else [], {}, expected, args.sample
        ),
        "curl": CdnRunner(
            CurlRunner(), ["--http2", "--cacert", ca] if tls else [], {}, expected, args.sample
        ),
    }
    return [by_name[name] for name in args.tools]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_cdn", description=__doc__)
    p.add_argument("--images", type=int, help="images (default 6000; smoke 300)")
    p.add_argument("--rounds", type=int, help="rounds, alternating the order (default 3)")
    p.add_argument("--smoke", action="store_true", help="300 images, 1 round")
    p.add_argument("--concurrency", type=int, default=64, help="downloads in flight, every tool")
    p.add_argument("--per-host", type=int, default=4, help="ours: MAX_PER_HOST_CONCURRENCY")
    p.add_argument("--delay", type=float, default=0.04, help="seconds before the first byte")
    p.add_argument("--rate", default="2m", help="nginx limit_rate per response (2m = 2 MiB/s)")
    p.add_argument("--tools", default=",".join(TOOLS), help="from ours,aria2c,curl")
    p.add_argument("--plain-http", action="store_true", help="HTTP/1.1 without TLS (a smoke test)")
    p.add_argument("--sample", type=int, default=300, help="files hashed per run (SHA-256)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds before a run is killed")
    p.add_argument("--files-dir", type=Path, help=f"where the rounds write (default {TMPFS_DIR})")
    p.add_argument("--on-disk", action="store_true", help="write under benchmarks/work instead")
    p.add_argument("--ours-env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-setup", action="store_true", help="never install what is missing")
    p.add_argument("--out", type=Path, help="the Markdown result (default benchmarks/results)")
    args = p.parse_args(argv)
    args.images = args.images or (300 if args.smoke else 6000)
    args.rounds = args.rounds or (1 if args.smoke else 3)
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if args.files_dir is None and not args.on_disk and _tmpfs_has_room(args.images):
        args.files_dir = TMPFS_DIR
    if set(args.tools) - set(TOOLS):
        p.error(f"unknown tool(s); choose from {TOOLS}")
    try:
        args.ours_env = dict(item.split("=", 1) for item in args.ours_env)
    except ValueError as exc:
        p.error(f"bad --ours-env: {exc}")
    return args


def run_rounds(
    args: argparse.Namespace, work: UrlList, runners: list[Runner], server: nginx.Server
) -> list[RunRecord]:
    logfile = cdn_server.access_log(server.port)
    keep = args.files_dir is None and shutil.disk_usage(WORK_DIR).free > (
        len(runners) * args.rounds * work.total_bytes * 1.2 + 2 * 1024**3
    )  # deleting many files slows creating the next ones on this VM's ext4 (README)
    records = []
    try:
        for round_no in range(1, args.rounds + 1):
            shift = (round_no - 1) % len(runners)
            for runner in runners[shift:] + runners[:shift]:  # alternate who goes first
                start = logfile.stat().st_size
                record = download.run_round(
                    runner,
                    work,
                    round_no,
                    section=SECTION,
                    concurrency=args.concurrency,
                    timeout=args.timeout,
                    server_pid=server.pid,
                    keep=keep,
                    files_root=args.files_dir,
                )
                with logfile.open("rb") as handle:
                    handle.seek(start)
                    lines = handle.read().decode(errors="replace").splitlines()
                record.extra["server"] = served = cdn_server.summarize_log(lines)
                log(SECTION, f"  nginx saw {served}")
                records.append(record)
    finally:
        shutil.rmtree(WORK_DIR / "runs" / SECTION / "scratch", ignore_errors=True)
        if args.files_dir is not None:
            shutil.rmtree(args.files_dir / SECTION, ignore_errors=True)
            with contextlib.suppress(OSError):
                args.files_dir.rmdir()  # only when empty (a --files-dir may hold other things)
    return records


def _seconds(records: list[RunRecord], tool: str, round_no: int) -> float | None:
    for r in records:
        if r.tool == tool and r.round == round_no and r.ok:
            return r.seconds
    return None


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def render(
    args: argparse.Namespace, meta: dict[str, object], work: UrlList, records: list[RunRecord]
) -> str:
    tools = [t for t in args.tools]
    mean = work.total_bytes / work.images
    rate = rate_bytes(args.rate)
    hosts = cdn_server.CDN_HOSTS
    bound = work.images / args.concurrency * (args.delay + mean / rate)
    scheme = "plain HTTP/1.1" if args.plain_http else "HTTPS (TLS 1.3, HTTP/2 offered by ALPN)"
    out = [
        f"## CDN-like benchmark, {meta['date']}",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['machine']}. Tools: {meta['tools']}. Commit: {meta['commit']}.",
        "",
        f"Workload: {work.images:,} images (mean {mean / 1000:.0f} KB, "
        f"{work.total_bytes / 1e6:,.0f} MB) on 16 hosts ({hosts[0]}-{hosts[-1]}), {scheme}, "
        f"{args.delay * 1000:.0f} ms before the first byte, {rate / 1024 / 1024:g} MiB/s per "
        f"response, {args.concurrency} downloads in flight, {args.rounds} round(s) alternating "
        f"the order. Latency bound = {work.images:,} / {args.concurrency} x ({args.delay} s + "
        f"{mean / 1000:.0f} KB / {rate / 1024 / 1024:g} MiB/s) = **{bound:.2f} s**.",
        "",
    ]
    if isinstance(probe := meta.get("probe"), tuple):
        first, speed = probe
        real = work.images / args.concurrency * (first + mean / speed)
        out += [
            f"Measured before the rounds (curl, one image at a time): {first * 1000:.0f} ms to "
            f"the first byte, {speed / 1024 / 1024:.2f} MiB/s per response (nginx's limit_rate "
            f"lets each response run a little above its rate); the bound at these figures is "
            f"{real:.2f} s.",
            "",
        ]
    columns = ["round", *[f"{t} s" for t in tools]]
    others = [t for t in ("curl", "aria2c") if t in tools and "ours" in tools]
    columns += [f"ours/{t}" for t in others]
    if others:
        columns.append("ours <= " + " and ".join(others))
    rows = []
    for round_no in range(1, args.rounds + 1):
        times = {t: _seconds(records, t, round_no) for t in tools}
        row = [str(round_no), *[fmt(times[t], 2) for t in tools]]
        row += [_ratio(times["ours"], times[t]) for t in others]
        if others:
            known = times["ours"] is not None and all(times[t] is not None for t in others)
            holds = known and all(times["ours"] <= times[t] for t in others)  # type: ignore[operator]
            row.append("-" if not known else "yes" if holds else "**no**")
        rows.append(row)
    out += ["Per round (whole-process wall time):", "", markdown_table(columns, rows), ""]
    summary_cols = ["tool", "ok rounds", "median s", "range s", "median / bound", "CPU s"]
    summary_cols += ["peak RSS MB", "nginx CPU s", "other load", "connections", "protocol"]
    summary_cols.append("check")
    medians: dict[str, float] = {}
    srows = []
    for tool in tools:
        runs = [r for r in records if r.tool == tool]
        good = [r for r in runs if r.ok]
        secs = [r.seconds for r in good]
        mid = median(secs)
        if mid is not None:
            medians[tool] = mid
        served = [r.extra.get("server", {}) for r in good]
        conns = median([float(s.get("connections", 0)) for s in served])
        protos = sorted({p for s in served for p in s.get("protocols", {})})
        sampled = sum(int(r.extra.get("sha256_sampled", 0)) for r in good)
        bad = [f"r{r.round}: {'; '.join(r.problems)}" for r in runs if not r.ok]
        check = f"all {work.images:,} files, {sampled} SHA-256 sampled" if good else "-"
        srows.append(
            [
                tool,
                f"{len(good)}/{len(runs)}",
                fmt(mid, 2),
                f"{min(secs):.2f}-{max(secs):.2f}" if secs else "-",
                _ratio(mid, bound),
                fmt(median([r.cpu_seconds for r in good]), 1),
                fmt(max((r.peak_rss_mb for r in good), default=None), 0),
                fmt(median([r.server_cpu_seconds for r in good]), 1),
                fmt(median([r.other_load for r in good]), 2),
                fmt(conns, 0),
                ", ".join(protos) or "-",
                check + (" | FAILED " + " | ".join(bad) if bad else ""),
            ]
        )
    out += ["Per tool:", "", markdown_table(summary_cols, srows), ""]
    for tool in others:
        if "ours" in medians and tool in medians:
            out.append(f"- ours/{tool} (medians): {medians['ours'] / medians[tool]:.2f}")
    out += [
        "- connections = TCP connections nginx saw per run (median); protocol as nginx logged "
        "it; check = exit 0, exactly the expected number of image files and bytes, our JSON "
        "summary's done count, and the SHA-256 of a random sample of files matching the corpus.",
        "- other load = cores busy with anything else during the run (the machine is shared).",
        "",
    ]
    return "\n".join(out)


def _commit() -> str:
    """HEAD, and whether tracked files differ from it (untracked ones, such as a new result
    file, do not make the measured code different)."""
    git = ["git", "-C", str(REPO_ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    changed = subprocess.run(
        [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    )
    dirty = bool(changed.stdout.strip())
    return (head.stdout.strip() or "?") + (" + uncommitted changes" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    cdn_server.ensure_setup(install=not args.no_setup)
    from benchmarks.run_all import machine_info  # after the setup: it asks tools for versions

    meta = machine_info(argv)
    meta["command"] = shlex.join([".venv/bin/python", "-m", "benchmarks.bench_cdn", *argv])
    meta["commit"] = _commit()
    # Our bytecode, as scripts/setup.sh (or any first run) leaves it: with
    # PYTHONDONTWRITEBYTECODE set, a fresh work tree would compile the package in every process.
    compileall.compile_dir(REPO_ROOT / "downloader", quiet=1)
    images = cdn_images(args.images)
    corpus.warm_page_cache(corpus.IMG_DIR, (f.name for f in images))
    tls = None if args.plain_http else cdn_server.make_tls(WORK_DIR / "cdn-tls")
    expected = {f.sha256 for f in images}
    runners = build_runners(args, tls, expected)
    renderer = cdn_server.cdn_renderer(
        tls or cdn_server.TlsFiles(Path(), Path(), Path()),
        delay=args.delay,
        rate=args.rate,
        https=not args.plain_http,
    )
    hosts = cdn_server.CDN_HOSTS
    fresh_dir(WORK_DIR / "runs" / SECTION / "logs")
    with nginx.serve(hosts=hosts, render=renderer) as server:
        scheme = "http" if args.plain_http else "https"
        work = corpus.download_list(images, server.port, hosts=hosts, scheme=scheme, name="cdn")
        urls = [f"{scheme}://{hosts[0]}:{server.port}/img/{f.name}" for f in images[:9]]
        meta["probe"] = cdn_server.probe(urls, tls.ca if tls else None)
        time.sleep(1)  # nginx logs the probe's last request after curl has it: not in round 1
        records = run_rounds(args, work, runners, server)
    markdown = render(args, meta, work, records)
    print("\n" + markdown)
    out = args.out or RESULTS_DIR / f"cdn-{time.strftime('%Y-%m-%d')}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown)
    raw = WORK_DIR / f"cdn-{time.strftime('%Y-%m-%d-%H%M%S')}.json"
    raw.write_text(json.dumps([asdict(r) for r in records], indent=2, default=str) + "\n")
    print(f"Results: {os.path.relpath(out, REPO_ROOT)} (raw runs: {os.path.relpath(raw)})")
    return 0 if records and all(r.ok for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
