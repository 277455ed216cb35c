"""ZIP throughput: the ZIP engineer's bench_zip.py, then a master ZIP of a real finished job,
built by the CLI (`python -m downloader zip JOB --out FILE`) and streamed by the app over HTTP."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import (
    PYTHON,
    REPO_ROOT,
    WORK_DIR,
    RunRecord,
    SectionResult,
    child_env,
    log,
    tail,
)
from benchmarks.corpus import UrlList
from benchmarks.download import round_dirs, run_round
from benchmarks.hooks import run_sibling
from benchmarks.measure import MB, TreeRssPoller, run_measured, tree_cpu_seconds
from benchmarks.nginx import free_port
from benchmarks.report import fmt
from benchmarks.runners import IMAGE_SUFFIXES, OURS_ENV, OursRunner

# ZIP outputs go to RAM (tmpfs) when there is room: this VM's disk takes the same 2 GB write
# in anything from 1.2 s to 10 s (dd, back to back), which would drown what is measured.
ZIP_OUT_DIR = (
    Path("/dev/shm/zip-bench")
    if Path("/dev/shm").is_dir() and shutil.disk_usage("/dev/shm").free > 6 * 2**30
    else WORK_DIR / "runs" / "zip"
)
ZIP_READY_SECONDS = 90
COLUMNS = ["what", "ok", "seconds", "MB/s", "peak RSS MB", "CPU s", "ZIP MB", "check"]
DEFAULT_ZIP_ROUTE = "/download/job/{job_id}.zip"  # app.py routes()


@dataclass(frozen=True)
class FinishedJob:
    job_id: str
    images: int
    database_url: str
    media_root: Path

    def env(self, overrides: dict[str, str]) -> dict[str, str]:
        return child_env(
            **{
                **OURS_ENV,
                "DATABASE_URL": self.database_url,
                "MEDIA_ROOT": str(self.media_root),
                **overrides,
            }
        )


class Skip(Exception):
    """A part that cannot run here yet; the message says why."""


def check_zip(path: Path, images: int) -> list[str]:
    """Problems with a master ZIP: expected `images` image entries plus a root manifest.csv."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        return [f"not a readable ZIP: {exc}"]
    problems = []
    found = sum(1 for name in names if Path(name).suffix.lower() in IMAGE_SUFFIXES)
    if found != images:
        problems.append(f"{found} images in the ZIP, expected {images}")
    if "manifest.csv" not in names:
        problems.append("no manifest.csv at the root")
    return problems


def make_job(
    work: UrlList,
    *,
    concurrency: int,
    timeout: float,
    env_overrides: dict[str, str],
    server_pid: int | None,
) -> FinishedJob:
    """Run our downloader once on `work` and keep its database and files for the ZIP runs."""
    runner = OursRunner(env_overrides)
    record = run_round(
        runner,
        work,
        1,
        section="zip",
        concurrency=concurrency,
        timeout=timeout,
        server_pid=server_pid,
        keep=True,
    )
    dirs = round_dirs("zip", runner.name, 1)
    summary = record.extra.get("summary") or {}
    if not record.ok or "job_id" not in summary:
        raise Skip(f"our `run` did not finish a job to zip ({'; '.join(record.problems)})")
    return FinishedJob(str(summary["job_id"]), work.images, runner.database_url(dirs), dirs.files)


def bench_master_zip_cli(job: FinishedJob, timeout: float, env: dict[str, str]) -> RunRecord:
    """`python -m downloader zip JOB --out FILE`: whole process time, RSS and ZIP MB/s."""
    ZIP_OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = ZIP_OUT_DIR / "master-cli.zip"
    out.unlink(missing_ok=True)
    logs = WORK_DIR / "runs" / "zip" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    os.sync()
    m = run_measured(
        [PYTHON, "-m", "downloader", "zip", job.job_id, "--out", str(out)],
        env=job.env(env),
        cwd=REPO_ROOT,
        stdout=logs / "zip-cli.stdout",
        stderr=logs / "zip-cli.stderr",
        timeout=timeout,
    )
    problems = m.exit_problems() or check_zip(out, job.images)
    size = out.stat().st_size if out.exists() else 0
    record = RunRecord.of("master ZIP, CLI", 1, m, problems, bytes=size)
    if problems:
        record.extra["stderr_tail"] = tail(logs / "zip-cli.stderr")
        log("zip", f"zip CLI FAILED: {'; '.join(problems)}\n{record.extra['stderr_tail']}")
    out.unlink(missing_ok=True)
    return record


@contextlib.contextmanager
def _streamlit_app(job: FinishedJob, env: dict[str, str]) -> Iterator[tuple[str, int]]:
    """Start `streamlit run app.py` on 127.0.0.1 against the job's database; yield (url, pid)."""
    import httpx

    if not (REPO_ROOT / "app.py").exists():
        raise Skip("app.py is not there yet (the master-ZIP route comes with the app)")
    if importlib.util.find_spec("streamlit") is None:
        raise Skip("streamlit is not installed in this virtualenv")
    port = free_port(("127.0.0.1",))
    logs = WORK_DIR / "runs" / "zip" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    argv = [
        PYTHON,
        "-m",
        "streamlit",
        "run",
        "app.py",
        "--server.address=127.0.0.1",
        f"--server.port={port}",
        "--server.headless=true",
        "--browser.gatherUsageStats=false",
    ]
    with (logs / "app.stdout").open("wb") as out, (logs / "app.stderr").open("wb") as err:
        proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=job.env({"EMBEDDED_WORKER": "false", **env}),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise Skip(f"the app exited with {proc.returncode}: {tail(logs / 'app.stderr', 5)}")
            if time.monotonic() > deadline:
                raise Skip("the app did not answer /_stcore/health within 90 s")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/_stcore/health", timeout=2, trust_env=False).is_success:
                    break
            time.sleep(0.5)
        yield base, proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _wait_for_route(url: str, deadline: float) -> None:
    """Until the app's lifespan has built its services, the export routes answer 503."""
    import httpx

    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.head(url, timeout=30, trust_env=False).status_code != 503:
                return
        if time.monotonic() > deadline:
            raise Skip(f"{url} answered 503 for {ZIP_READY_SECONDS} s: the app never got ready")
        time.sleep(0.5)


def bench_master_zip_http(
    job: FinishedJob, route: str, timeout: float, env: dict[str, str]
) -> RunRecord:
    """Download the master ZIP from the app's streaming route with curl (a C client, like a
    browser, so the client's own cost stays small); time it and the server's RSS and CPU.

    Raises Skip (with the reason) while app.py or its route is not there.
    """
    out = ZIP_OUT_DIR / "master-http.zip"
    with _streamlit_app(job, env) as (base, pid):
        url = base + route.format(job_id=job.job_id)
        _wait_for_route(url, time.monotonic() + ZIP_READY_SECONDS)
        os.sync()
        cpu_before = tree_cpu_seconds(pid)
        with TreeRssPoller(pid) as poller:
            started = time.perf_counter()
            done = subprocess.run(
                [
                    "curl",
                    "--silent",
                    "--show-error",
                    "--noproxy",
                    "*",
                    "--output",
                    str(out),
                    "--write-out",
                    "%{http_code} %{content_type}",
                    url,
                ],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            seconds = time.perf_counter() - started
        cpu = tree_cpu_seconds(pid) - cpu_before
    status, _, kind = done.stdout.partition(" ")
    if done.returncode != 0 or status != "200" or "zip" not in kind:
        out.unlink(missing_ok=True)
        raise Skip(
            f"GET {route} answered {status} {kind} (curl exit {done.returncode}: "
            f"{done.stderr.strip()[-300:]}): the master-ZIP route is not there "
            "(set its path with --zip-route)"
        )
    size = out.stat().st_size
    problems = check_zip(out, job.images)
    out.unlink(missing_ok=True)
    return RunRecord(
        tool="master ZIP, HTTP",
        round=1,
        seconds=seconds,
        peak_rss_mb=poller.peak / MB,
        cpu_seconds=cpu,
        returncode=0,
        bytes=size,
        ok=not problems,
        problems=problems,
        extra={"route": route, "client": "curl", "rss_is": "the app server's process tree"},
    )


def _row(record: RunRecord) -> list[str]:
    seconds = record.seconds or None
    if record.ok:
        log("zip", f"{record.tool}: {record.seconds:.2f} s, {record.peak_rss_mb:.1f} MB RSS, ok")
    return [
        record.tool,
        "yes" if record.ok else "no",
        fmt(seconds, 2),
        fmt(record.bytes / MB / seconds if seconds and record.bytes else None, 0),
        fmt(record.peak_rss_mb, 1),
        fmt(record.cpu_seconds, 1),
        fmt(record.bytes / MB if record.bytes else None, 0),
        "ok" if record.ok else "FAILED " + "; ".join(record.problems),
    ]


def _script_rows(record: RunRecord) -> list[list[str]]:
    """bench_zip.py's own figures (its last stdout line is JSON with a "results" list)."""
    results = (record.extra.get("json") or {}).get("results")
    if not record.ok or not isinstance(results, list):
        return [_row(record)]
    return [
        [
            f"bench_zip.py: {result.get('tool', '?')}",
            "yes",
            fmt(result.get("seconds"), 2),
            fmt(result.get("mb_per_s"), 0),
            fmt(result.get("peak_rss_mb"), 1),
            "-",
            fmt(result.get("zip_mb"), 0),
            "ok",
        ]
        for result in results
        if isinstance(result, dict)
    ]


def run(
    work: UrlList | None,
    *,
    concurrency: int,
    timeout: float,
    env_overrides: dict[str, str],
    zip_route: str,
    server_pid: int | None = None,
) -> SectionResult:
    section = SectionResult("zip", columns=COLUMNS)
    files = str(work.images if work else 10_000)
    script = run_sibling(
        "zip",
        "bench_zip",
        timeout,
        ["--files", files, "--verify", "--compare", "--out-dir", str(ZIP_OUT_DIR)],
    )
    if script is None:
        section.notes.append("benchmarks/bench_zip.py is not there yet: its part skipped")
    else:
        section.runs.append(script)
        section.rows += _script_rows(script)
    try:
        if work is None:
            raise Skip("no corpus served (nginx unavailable)")
        job = make_job(
            work,
            concurrency=concurrency,
            timeout=timeout,
            env_overrides=env_overrides,
            server_pid=server_pid,
        )
        section.info["job_id"] = job.job_id
        section.runs.append(bench_master_zip_cli(job, timeout, env_overrides))
        section.rows.append(_row(section.runs[-1]))
        try:
            section.runs.append(bench_master_zip_http(job, zip_route, timeout, env_overrides))
            section.rows.append(_row(section.runs[-1]))
        except Skip as exc:
            section.notes.append(f"master ZIP over HTTP skipped: {exc}")
    except Skip as exc:
        section.notes.append(f"master ZIP skipped: {exc}")
    finally:
        shutil.rmtree(round_dirs("zip", "ours", 1).scratch, ignore_errors=True)
    for note in section.notes:
        log("zip", note)
    if not section.runs:
        section.status, section.reason = "skipped", "; ".join(section.notes)
    if any(not run.ok for run in section.runs):
        section.status = "failed"
        section.reason = "a ZIP run failed (see the check column)"
    return section
