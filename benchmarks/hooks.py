"""Benchmarks written by other engineers, run as sibling modules when they exist:
benchmarks/bench_zip.py (ZIP throughput) and benchmarks/bench_job_page.py (job page render)."""

from __future__ import annotations

from benchmarks.common import (
    BENCH_DIR,
    PYTHON,
    REPO_ROOT,
    WORK_DIR,
    RunRecord,
    SectionResult,
    child_env,
    log,
    tail,
)
from benchmarks.measure import run_measured
from benchmarks.report import fmt
from benchmarks.runners import last_json_line

HOOK_COLUMNS = ["script", "exit", "seconds", "peak RSS MB", "last output line"]


def run_sibling(
    section: str, module: str, timeout: float, args: list[str] | None = None
) -> RunRecord | None:
    """Run `python -m benchmarks.<module> [args]` measured; None when the file does not exist."""
    if not (BENCH_DIR / f"{module}.py").exists():
        return None
    logs = WORK_DIR / "runs" / section / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stdout, stderr = logs / f"{module}.stdout", logs / f"{module}.stderr"
    log(section, f"running benchmarks/{module}.py ...")
    m = run_measured(
        [PYTHON, "-m", f"benchmarks.{module}", *(args or [])],
        env=child_env(),
        cwd=REPO_ROOT,
        stdout=stdout,
        stderr=stderr,
        timeout=timeout,
    )
    problems = m.exit_problems()
    output = tail(stdout, 20)
    record = RunRecord.of(
        " ".join([f"{module}.py", *(args or [])]),
        1,
        m,
        problems,
        extra={"stdout_tail": output, "json": last_json_line(stdout)},
    )
    if output:
        log(section, f"{module}.py output (last lines):\n{output}")
    if problems:
        record.extra["stderr_tail"] = tail(stderr)
        log(section, f"{module}.py FAILED ({'; '.join(problems)}):\n{record.extra['stderr_tail']}")
    return record


def hook_row(record: RunRecord) -> list[str]:
    last = record.extra["stdout_tail"].splitlines()[-1:] or [""]
    return [
        record.tool,
        "timeout" if "timed out" in record.problems else str(record.returncode),
        fmt(record.seconds, 2),
        fmt(record.peak_rss_mb, 1),
        last[0][:200],
    ]


def page_section(timeout: float, args: list[str] | None = None) -> SectionResult:
    """The job page render time, measured by benchmarks/bench_job_page.py once the UI exists."""
    section = SectionResult("page", columns=HOOK_COLUMNS)
    record = run_sibling("page", "bench_job_page", timeout, args)
    if record is None:
        return section.skip(
            "benchmarks/bench_job_page.py is not there yet (it comes with the job page UI)"
        )
    section.runs.append(record)
    section.rows.append(hook_row(record))
    if not record.ok:
        section.status = "failed"
        section.reason = "; ".join(record.problems)
    return section
