"""Ingest: large CSVs through `python -m downloader submit` (parse, validate, queue; no fetch)."""

from __future__ import annotations

import os
import shutil

from benchmarks.common import (
    PYTHON,
    REPO_ROOT,
    WORK_DIR,
    RunRecord,
    SectionResult,
    child_env,
    fresh_dir,
    log,
    tail,
)
from benchmarks.corpus import ingest_csv
from benchmarks.measure import MB, run_measured
from benchmarks.report import fmt, median, ok_runs, problems_cell
from benchmarks.runners import OURS_ENV, last_json_line

COLUMNS = ["rows", "ok rounds", "median s", "rows/s", "peak RSS MB", "DB MB", "check"]


def _one(rows: int, round_no: int, timeout: float, env_overrides: dict[str, str]) -> RunRecord:
    csv_path = ingest_csv(rows)
    base = WORK_DIR / "runs" / "ingest"
    scratch = fresh_dir(base / "scratch" / f"{rows}-r{round_no}")
    logs = base / "logs"
    stdout, stderr = logs / f"{rows}-r{round_no}.stdout", logs / f"{rows}-r{round_no}.stderr"
    db = scratch / "ingest.db"
    env = child_env(
        **{
            **OURS_ENV,
            "DATABASE_URL": f"sqlite:///{db}",
            "MEDIA_ROOT": str(scratch / "media"),
            **env_overrides,
        }
    )
    os.sync()
    m = run_measured(
        [PYTHON, "-m", "downloader", "submit", str(csv_path)],
        env=env,
        cwd=REPO_ROOT,
        stdout=stdout,
        stderr=stderr,
        timeout=timeout,
    )
    problems = m.exit_problems()
    summary = last_json_line(stdout)
    if summary is None:
        problems.append("no JSON summary on the last stdout line")
    elif summary.get("images") != rows or summary.get("rejected"):
        problems.append(
            f"JSON says images={summary.get('images')} rejected={summary.get('rejected')}, "
            f"expected images={rows}"
        )
    db_mb = sum(f.stat().st_size for f in scratch.glob("ingest.db*")) / MB
    record = RunRecord.of(
        f"submit {rows}",
        round_no,
        m,
        problems,
        extra={"summary": summary, "db_mb": db_mb, "rows": rows},
    )
    log(
        "ingest",
        f"{rows:>9,} rows round {round_no}: {m.seconds:7.2f} s {m.peak_rss_mb:8.1f} MB RSS "
        f"{'ok' if record.ok else 'FAILED: ' + '; '.join(problems)}",
    )
    if not record.ok:
        record.extra["stderr_tail"] = tail(stderr)
        if record.extra["stderr_tail"]:
            log("ingest", f"stderr (last lines):\n{record.extra['stderr_tail']}")
    shutil.rmtree(scratch, ignore_errors=True)
    return record


def run(
    row_counts: list[int], *, rounds: int, timeout: float, env_overrides: dict[str, str]
) -> SectionResult:
    section = SectionResult("ingest", columns=COLUMNS)
    section.info = {"row_counts": row_counts, "rounds": rounds, "database": "sqlite file"}
    fresh_dir(WORK_DIR / "runs" / "ingest" / "logs")
    for rows in row_counts:
        log("ingest", f"CSV with {rows:,} rows: {ingest_csv(rows)}")
    for round_no in range(1, rounds + 1):
        for rows in row_counts:
            section.runs.append(_one(rows, round_no, timeout, env_overrides))
    for rows in row_counts:
        tool = f"submit {rows}"
        runs = [run for run in section.runs if run.tool == tool]
        good = ok_runs(section.runs, tool)
        seconds = median([run.seconds for run in good])
        section.rows.append(
            [
                f"{rows:,}",
                f"{len(good)}/{len(runs)}",
                fmt(seconds, 2),
                fmt(rows / seconds if seconds else None, 0),
                fmt(max((run.peak_rss_mb for run in good), default=None), 1),
                fmt(median([float(run.extra["db_mb"]) for run in good]), 1),
                problems_cell(runs),
            ]
        )
    section.notes.append(
        "`python -m downloader submit CSV` into a fresh SQLite file; whole process, median of "
        "successful rounds; 5 image URLs per product."
    )
    if any(not run.ok for run in section.runs):
        section.status = "failed"
        section.reason = "some submits failed (see the check column)"
    return section
