"""Paths, loopback hosts and the result records shared by every benchmark module."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from benchmarks.measure import Measurement

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / "work"
PYTHON = sys.executable

# The 16 loopback addresses that stand for 16 image hosts (nginx listens on each of them).
HOSTS: tuple[str, ...] = tuple(f"127.0.0.{n}" for n in range(2, 18))

# How to install each external program (printed, never run by the harness).
INSTALL_HINTS = {
    "nginx": "apt-get install nginx",
    "aria2c": "apt-get install aria2",
    "curl": "apt-get install curl",
    "img2dataset": "pip install img2dataset (in a separate virtualenv) and pass --img2dataset PATH",
}

Status = Literal["ok", "failed", "skipped"]


def find_program(name: str) -> str | None:
    """Locate a program on PATH or in the sbin folders a non-login root shell may lack."""
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def missing_program_reason(name: str) -> str:
    return f"{name} not found; install it with `{INSTALL_HINTS.get(name, name)}`"


@dataclass
class RunRecord:
    """One timed process: a tool downloading a URL list, a submit, a ZIP build."""

    tool: str
    round: int
    seconds: float
    peak_rss_mb: float
    cpu_seconds: float
    returncode: int
    server_cpu_seconds: float = 0.0
    other_load: float = 0.0
    files: int = 0
    bytes: int = 0
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls, tool: str, round_no: int, m: Measurement, problems: list[str], **fields: Any
    ) -> RunRecord:
        return cls(
            tool=tool,
            round=round_no,
            seconds=m.seconds,
            peak_rss_mb=m.peak_rss_mb,
            cpu_seconds=m.cpu_seconds,
            returncode=m.returncode,
            server_cpu_seconds=m.server_cpu_seconds,
            other_load=m.other_load,
            ok=not problems,
            problems=problems,
            **fields,
        )


@dataclass
class SectionResult:
    """A benchmark section: its raw runs, a display table and free-form notes."""

    name: str
    status: Status = "ok"
    reason: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def skip(self, reason: str) -> SectionResult:
        self.status = "skipped"
        self.reason = reason
        print(f"[{self.name}] skipped: {reason}", flush=True)
        return self


def child_env(**overrides: str) -> dict[str, str]:
    """The environment for a measured process: ours plus overrides, with every proxy removed
    so that loopback traffic can never be routed to another address."""
    env = {key: value for key, value in os.environ.items() if "proxy" not in key.lower()}
    env.update(overrides)
    return env


def fresh_dir(path: Path) -> Path:
    """An empty folder at path (whatever was there is deleted)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def log(section: str, message: str) -> None:
    print(f"[{section}] {message}", flush=True)


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a text file (for error reports); empty when it does not exist."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])
