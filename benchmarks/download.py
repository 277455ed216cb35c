"""Side-by-side download runs: every tool on the same URL list, alternating, several rounds.

Used by two sections: `download` (10,000 ~200 KB images over 16 hosts) and `memory`
(100,000 products with one ~2 KB image each, where peak RSS is the point).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from benchmarks.common import (
    REPO_ROOT,
    WORK_DIR,
    RunRecord,
    SectionResult,
    fresh_dir,
    log,
    tail,
)
from benchmarks.corpus import UrlList
from benchmarks.measure import MB, run_measured
from benchmarks.report import fmt, median, ok_runs, problems_cell
from benchmarks.runners import RoundDirs, Runner

COLUMNS = [
    "tool",
    "ok rounds",
    "median s",
    "min s",
    "images/s",
    "MB/s",
    "peak RSS MB",
    "CPU s",
    "nginx CPU s",
    "other load",
    "check",
]


# Every round writes into a new folder and the folders are removed only when the section ends.
# Deleting a round's files right before the next round made that round pay for it: on an ext4
# file system without a journal (this VM's), creating a file skips over every inode freed in
# the last 1-6 minutes, one inode-table lookup each (`recently_deleted` in the kernel), and a
# `perf` profile showed 15-25% of all CPU there. Which tool came after a deletion then decided
# the ranking more than the tools did.
KEPT_NOTE = (
    "every round wrote into a new folder, all removed after the last round (deleting 10,000"
    " files slows creating the next ones for minutes on a journal-less ext4)"
)
DELETED_NOTE = (
    "too little free disk to keep every round's output: each round's was deleted after it,"
    " which slows the next round's file creation on a journal-less ext4 (compare with care)"
)


FILES_DIR_NOTE = (
    "the downloaded files went to {where} (--files-dir); each round's were deleted after it,"
    " and our database stayed in benchmarks/work"
)


def _room_to_keep_every_round(work: UrlList, runs: int) -> bool:
    needed = runs * work.total_bytes * 1.2 + 2 * 1024**3
    return shutil.disk_usage(WORK_DIR).free > needed


def round_dirs(section: str, tool: str, round_no: int, files_root: Path | None = None) -> RoundDirs:
    """The round's folders; with files_root, the downloads go there instead of into scratch
    (a tmpfs, say, to measure the tools without the file system's costs)."""
    base = WORK_DIR / "runs" / section
    scratch = base / "scratch" / f"{tool}-r{round_no}"
    files = scratch / "files"
    if files_root is not None:
        files = files_root / section / f"{tool}-r{round_no}"
    return RoundDirs(
        files=files,
        scratch=scratch,
        stdout=base / "logs" / f"{tool}-r{round_no}.stdout",
        stderr=base / "logs" / f"{tool}-r{round_no}.stderr",
    )


def run_round(
    runner: Runner,
    work: UrlList,
    round_no: int,
    *,
    section: str,
    concurrency: int,
    timeout: float,
    server_pid: int | None = None,
    keep: bool = False,
    files_root: Path | None = None,
) -> RunRecord:
    """One timed run of one tool into fresh folders, checked, then cleaned up (unless keep:
    the caller removes them later)."""
    dirs = round_dirs(section, runner.name, round_no, files_root)
    fresh_dir(dirs.scratch)
    fresh_dir(dirs.files)
    dirs.stdout.parent.mkdir(parents=True, exist_ok=True)
    os.sync()  # earlier rounds' writes must not be flushed on this round's time
    m = run_measured(
        runner.command(work, dirs, concurrency),
        env=runner.env(),
        cwd=REPO_ROOT,  # `python -m downloader` imports from the repository root
        stdout=dirs.stdout,
        stderr=dirs.stderr,
        timeout=timeout,
        server_pid=server_pid,
    )
    verdict = runner.check(work, dirs, m)
    record = RunRecord.of(
        runner.name,
        round_no,
        m,
        verdict.problems,
        files=verdict.files,
        bytes=verdict.bytes,
        extra=verdict.extra,
    )
    if record.ok:
        rate = work.images / m.seconds
        verdict_text = (
            f"{rate:7.0f} img/s {m.peak_rss_mb:7.1f} MB RSS {m.cpu_seconds:6.1f} CPU s "
            f"(nginx {m.server_cpu_seconds:.1f}, other load {m.other_load:.2f})  ok"
        )
    else:
        verdict_text = "FAILED: " + "; ".join(record.problems)
    log(section, f"round {round_no} {runner.name:<11} {m.seconds:8.2f} s {verdict_text}")
    if not record.ok:
        record.extra["stderr_tail"] = tail(dirs.stderr)
        if record.extra["stderr_tail"]:
            log(section, f"{runner.name} stderr (last lines):\n{record.extra['stderr_tail']}")
    if not keep:
        shutil.rmtree(dirs.scratch, ignore_errors=True)
        shutil.rmtree(dirs.files, ignore_errors=True)
        os.sync()
    return record


def compare(
    name: str,
    work: UrlList,
    runners: list[Runner],
    *,
    rounds: int,
    concurrency: int,
    timeout: float,
    server_pid: int | None = None,
    files_root: Path | None = None,
) -> SectionResult:
    section = SectionResult(name, columns=COLUMNS)
    section.info = {
        "images": work.images,
        "products": work.products,
        "bytes": work.total_bytes,
        "rounds": rounds,
        "concurrency": concurrency,
        "csv": str(work.csv),
    }
    fresh_dir(WORK_DIR / "runs" / name / "logs")  # only this run's logs stay
    available = []
    for runner in runners:
        reason = runner.unavailable()
        if reason:
            section.notes.append(f"{runner.name} skipped: {reason}")
            log(name, f"{runner.name} skipped: {reason}")
        else:
            available.append(runner)
    if not available:
        return section.skip("no tool available")
    scratch = WORK_DIR / "runs" / name / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)  # an interrupted run's leftovers
    if files_root is not None:
        # Not kept: a tmpfs holds few rounds, and deleting there costs the next round nothing.
        keep = False
        section.info["files_dir"] = str(files_root)
        section.notes.append(FILES_DIR_NOTE.format(where=files_root))
    else:
        keep = _room_to_keep_every_round(work, rounds * len(available))
        section.notes.append(KEPT_NOTE if keep else DELETED_NOTE)
    log(
        name,
        f"{work.images:,} images, {work.products:,} products, {work.total_bytes / MB:,.0f} MB; "
        f"{rounds} round(s) of {', '.join(r.name for r in available)}",
    )
    try:
        for round_no in range(1, rounds + 1):
            shift = (round_no - 1) % len(available)
            for runner in available[shift:] + available[:shift]:  # alternate who goes first
                section.runs.append(
                    run_round(
                        runner,
                        work,
                        round_no,
                        section=name,
                        concurrency=concurrency,
                        timeout=timeout,
                        server_pid=server_pid,
                        keep=keep,
                        files_root=files_root,
                    )
                )
    finally:
        if keep:
            log(name, "removing the rounds' output")
            shutil.rmtree(scratch, ignore_errors=True)
            os.sync()
        if files_root is not None:
            shutil.rmtree(files_root / name, ignore_errors=True)
    _summarize(section, work, [runner.name for runner in available])
    return section


def _summarize(section: SectionResult, work: UrlList, tools: list[str]) -> None:
    medians: dict[str, tuple[float, float]] = {}
    for tool in tools:
        runs = [run for run in section.runs if run.tool == tool]
        good = ok_runs(section.runs, tool)
        seconds = median([run.seconds for run in good])
        peak = max((run.peak_rss_mb for run in good), default=None)
        if seconds is not None and peak is not None:
            medians[tool] = (seconds, peak)
        section.rows.append(
            [
                tool,
                f"{len(good)}/{len(runs)}",
                fmt(seconds, 2),
                fmt(min((run.seconds for run in good), default=None), 2),
                fmt(work.images / seconds if seconds else None, 0),
                fmt(work.total_bytes / MB / seconds if seconds else None, 0),
                fmt(peak, 1),
                fmt(median([run.cpu_seconds for run in good]), 1),
                fmt(median([run.server_cpu_seconds for run in good]), 1),
                fmt(median([run.other_load for run in good]), 2),
                problems_cell(runs),
            ]
        )
    ours = medians.get("ours")
    for tool, (seconds, peak) in medians.items():
        if tool == "ours" or ours is None:
            continue
        section.notes.append(
            f"ours/{tool}: time {ours[0] / seconds:.2f}x "
            f"({'ours faster' if ours[0] < seconds else 'ours slower'}: "
            f"{seconds / ours[0]:.2f}x the throughput), peak RSS {ours[1] / peak:.2f}x"
        )
    if "ours" in tools and ours is None:
        section.notes.append("ours had no successful round: no ratios")
    section.notes.append(
        "median and min over successful rounds; peak RSS = the highest, over those rounds, of "
        "the summed RSS of the whole process tree (polled every 50 ms); CPU s = user+system "
        "of the tool; nginx CPU s = the server's; other load = cores busy with anything else "
        "during the run (noise from other work on the machine: compare rounds with care when "
        "it is high)."
    )
    if any(not run.ok for run in section.runs):
        section.status = "failed"
        section.reason = "some rounds did not download every file (see the check column)"
