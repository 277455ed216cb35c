"""The tools under comparison, each as a command line plus a check of what it wrote.

Every tool gets the same URL list, the same concurrency and a fresh output folder per round.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import PYTHON, child_env, find_program, missing_program_reason
from benchmarks.corpus import UrlList
from benchmarks.measure import Measurement

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".avif", ".gif"}

# Settings for our CLI during the comparison (DESIGN.md names; --ours-env adds or overrides).
OURS_ENV = {
    "MAX_GLOBAL_CONCURRENCY": "64",
    "MAX_PER_HOST_CONCURRENCY": "8",
    "DOWNLOAD_QPS": "0",
    "ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8",
    "MEDIA_BACKEND": "local",
    "JOB_RATE_LIMIT_PER_MINUTE": "0",
}


@dataclass(frozen=True)
class RoundDirs:
    """`files` (fresh) receives the downloads, `scratch` (fresh) the database; both are
    deleted after the round. stdout/stderr are kept for inspection."""

    files: Path
    scratch: Path
    stdout: Path
    stderr: Path


@dataclass
class Verdict:
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def count_files(folder: Path, suffixes: set[str] | None = None) -> tuple[int, int]:
    """(count, total bytes) of regular files under folder, optionally only these suffixes."""
    count = total = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            if suffixes is not None and Path(name).suffix.lower() not in suffixes:
                continue
            count += 1
            total += os.stat(os.path.join(root, name)).st_size
    return count, total


def _common_problems(m: Measurement, verdict: Verdict, work: UrlList) -> list[str]:
    problems = m.exit_problems()
    if verdict.files != work.images:
        problems.append(f"{verdict.files} files written, expected {work.images}")
    elif verdict.bytes != work.total_bytes:
        problems.append(f"{verdict.bytes} bytes written, expected {work.total_bytes}")
    return problems


class Runner:
    name = "tool"
    program = ""

    def unavailable(self) -> str | None:
        """Why this tool cannot run here, or None."""
        if self.program and find_program(self.program) is None:
            return missing_program_reason(self.program)
        return None

    def command(self, work: UrlList, dirs: RoundDirs, concurrency: int) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return child_env()

    def check(self, work: UrlList, dirs: RoundDirs, m: Measurement) -> Verdict:
        verdict = Verdict(*count_files(dirs.files))
        verdict.problems = _common_problems(m, verdict, work)
        return verdict


class Aria2Runner(Runner):
    name = "aria2c"
    program = "aria2c"

    def command(self, work: UrlList, dirs: RoundDirs, concurrency: int) -> list[str]:
        # -x 1 -s 1: one connection per file (no segmenting of ~200 KB files). aria2c has no
        # cap on connections to one host across downloads; -j caps downloads in flight.
        return [
            str(find_program("aria2c")),
            "--no-conf",
            f"--input-file={work.aria2}",
            f"--dir={dirs.files}",
            f"--max-concurrent-downloads={concurrency}",
            "--max-connection-per-server=1",
            "--split=1",
            "--allow-overwrite=true",
            "--auto-file-renaming=false",
            "--file-allocation=none",
            "--deferred-input=true",
            "--console-log-level=warn",
            "--summary-interval=0",
            "--show-console-readout=false",
            "--download-result=hide",
            "--auto-save-interval=0",
            "--max-tries=4",
            "--retry-wait=1",
            "--connect-timeout=5",
            "--timeout=45",
        ]

    def check(self, work: UrlList, dirs: RoundDirs, m: Measurement) -> Verdict:
        verdict = super().check(work, dirs, m)
        control = count_files(dirs.files, {".aria2"})[0]
        if control:
            verdict.problems.append(f"{control} unfinished .aria2 control files")
        return verdict


class CurlRunner(Runner):
    name = "curl"
    program = "curl"

    def command(self, work: UrlList, dirs: RoundDirs, concurrency: int) -> list[str]:
        return [
            str(find_program("curl")),
            "--parallel",
            "--parallel-max",
            str(concurrency),
            "--silent",
            "--show-error",
            "--fail",
            "--noproxy",
            "*",
            "--retry",
            "3",
            "--connect-timeout",
            "5",
            "--max-time",
            "120",
            "--output-dir",
            str(dirs.files),
            "--config",
            str(work.curl),
        ]


class OursRunner(Runner):
    """`python -m downloader run`: the last stdout line is the job's JSON summary."""

    name = "ours"

    def __init__(self, env_overrides: dict[str, str] | None = None) -> None:
        self.env_overrides = env_overrides or {}

    def command(self, work: UrlList, dirs: RoundDirs, concurrency: int) -> list[str]:
        return [
            PYTHON,
            "-m",
            "downloader",
            "run",
            str(work.csv),
            "--media-root",
            str(dirs.files),
            "--database-url",
            self.database_url(dirs),
        ]

    @staticmethod
    def database_url(dirs: RoundDirs) -> str:
        return f"sqlite:///{dirs.scratch / 'bench.db'}"

    def env(self) -> dict[str, str]:
        settings = {**OURS_ENV, **self.env_overrides}
        return child_env(**settings)

    def check(self, work: UrlList, dirs: RoundDirs, m: Measurement) -> Verdict:
        verdict = Verdict(*count_files(dirs.files, IMAGE_SUFFIXES))
        verdict.problems = _common_problems(m, verdict, work)
        summary = last_json_line(dirs.stdout)
        if summary is None:
            verdict.problems.append("no JSON summary on the last stdout line")
            return verdict
        verdict.extra["summary"] = summary
        if summary.get("done") != work.images:
            verdict.problems.append(
                f"JSON says done={summary.get('done')} failed={summary.get('failed')} "
                f"duplicate={summary.get('duplicate')}, expected done={work.images}"
            )
        return verdict


class Img2DatasetRunner(Runner):
    """img2dataset (optional: installed apart from the project, path given by --img2dataset)."""

    name = "img2dataset"

    def __init__(self, executable: str | None) -> None:
        self.executable = executable

    def unavailable(self) -> str | None:
        if self.executable and Path(self.executable).is_file():
            return None
        return missing_program_reason("img2dataset")

    def command(self, work: UrlList, dirs: RoundDirs, concurrency: int) -> list[str]:
        processes = os.cpu_count() or 2
        return [
            str(self.executable),
            f"--url_list={work.csv}",
            "--input_format=csv",
            "--url_col=Image URL",
            "--output_format=files",
            f"--output_folder={dirs.files}",
            f"--processes_count={processes}",
            f"--thread_count={max(1, concurrency // processes)}",
            "--resize_mode=no",
            "--disable_all_reencoding=True",
            "--disallowed_header_directives=[]",
            "--retries=3",
            "--timeout=45",
            "--enable_wandb=False",
            "--incremental_mode=incremental",  # into the fresh, empty folder
            f"--number_sample_per_shard={max(work.images, 1)}",
        ]

    def env(self) -> dict[str, str]:
        # No update checks or telemetry: this run must not reach beyond loopback.
        return child_env(NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled")

    def check(self, work: UrlList, dirs: RoundDirs, m: Measurement) -> Verdict:
        # It writes image files (always named .jpg when not re-encoding) beside .json/.parquet.
        verdict = Verdict(*count_files(dirs.files, IMAGE_SUFFIXES))
        verdict.problems = _common_problems(m, verdict, work)
        return verdict


def sha256_sample_problems(
    folder: Path, expected: set[str], sample: int, seed: int = 0
) -> tuple[int, list[str]]:
    """Hash up to `sample` image files under folder (a seeded random pick) and report each whose
    SHA-256 is not one of `expected` (the corpus files of the list). Returns (checked, problems).
    With the count and total bytes already checked, this catches damaged or mixed-up bodies
    without hashing every file."""
    files = sorted(
        os.path.join(root, name)
        for root, _dirs, names in os.walk(folder)
        for name in names
        if Path(name).suffix.lower() in IMAGE_SUFFIXES
    )
    picked = random.Random(seed).sample(files, min(sample, len(files)))
    wrong = []
    for path in picked:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() not in expected:
            wrong.append(os.path.relpath(path, folder))
    if not wrong:
        return len(picked), []
    return len(picked), [f"{len(wrong)}/{len(picked)} sampled files differ, e.g. {wrong[0]}"]


def last_json_line(path: Path) -> dict[str, Any] | None:
    """The last non-empty line of a file parsed as a JSON object, or None."""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return None
    if not lines:
        return None
    try:
        value = json.loads(lines[-1])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
