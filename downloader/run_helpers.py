"""`run`'s helper processes: extra engines beside the one in `run` itself, one per further core
(`python -m downloader worker --job ID --until-idle --share S`).

Their start-up (~0.6 s of CPU each: SQLAlchemy, SQLModel, httpx) should not delay the download:

* for a small input file (up to EARLY_MAX_INPUT_BYTES) `run` starts them before it reads the
  input; they load their code on the other core meanwhile, then wait on standard input for the
  job id (`--job-from-stdin`); `run` then downloads in the same process image. A big input is
  read first: the parser's peak memory and a helper's would add up.
* otherwise `run` starts them with the job id just before it re-executes itself for its
  download phase, so their start-up overlaps the re-executed process's own.

The re-executed `run` keeps the same pid, so it is still their parent: it gets their pids on
its command line, waits for them and passes stop signals on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import suppress
from dataclasses import dataclass

EARLY_MAX_INPUT_BYTES = 1_000_000  # ~20,000 CSV rows: the parser then stays well under 200 MB


@dataclass
class Helper:
    """A helper process known by pid (possibly started by this process before an exec)."""

    pid: int
    process: subprocess.Popen[bytes] | None = None  # when started by this process image

    def send_signal(self, signum: int) -> None:
        with suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def wait(self) -> None:
        if self.process is not None:
            self.process.wait()
            return
        with suppress(ChildProcessError):  # already reaped
            os.waitpid(self.pid, 0)


def spawn_helpers(
    count: int, job_id: str, share: float, *, database_url: str, media_root: str
) -> list[Helper]:
    """Start `count` helper engines for `job_id`, each with `share` of the limits."""
    arguments = ["--job", job_id, "--share", str(share)]
    return [_start(arguments, database_url, media_root) for _ in range(count)]


def spawn_waiting_helpers(count: int, *, database_url: str, media_root: str) -> list[Helper]:
    """Start `count` helpers that load their code now, while `run` is still reading its input,
    and then wait on standard input for their job (`assign_helpers`)."""
    return [
        _start(["--job-from-stdin"], database_url, media_root, stdin=subprocess.PIPE)
        for _ in range(count)
    ]


def assign_helpers(helpers: list[Helper], job_id: str, share: float, used: int) -> None:
    """Send the first `used` waiting helpers `job_id` with `share` of the limits; the others
    get nothing and exit. (A helper that died meanwhile is simply not there to help.)"""
    for number, helper in enumerate(helpers):
        stdin = helper.process.stdin if helper.process is not None else None
        if stdin is None:
            continue
        with suppress(BrokenPipeError):
            if number < used:
                stdin.write(f"{job_id} {share!r}\n".encode())
            stdin.close()


def read_assignment() -> tuple[str, float] | None:
    """A waiting helper's job id and share from standard input; None when `run` sent none."""
    words = sys.stdin.readline().split()
    if len(words) != 2:
        return None
    return words[0], float(words[1])


def _start(
    arguments: list[str], database_url: str, media_root: str, *, stdin: int | None = None
) -> Helper:
    env = dict(os.environ, DATABASE_URL=database_url, MEDIA_ROOT=media_root)
    command = [sys.executable, "-m", "downloader", "worker", "--until-idle", *arguments]
    process = subprocess.Popen(
        command, env=env, stdin=stdin, stdout=subprocess.DEVNULL, preexec_fn=_die_with_parent
    )
    return Helper(process.pid, process)


def adopt_helpers(pids: str | None) -> list[Helper]:
    """The helpers started before the exec, from their comma-separated pids."""
    return [Helper(int(pid)) for pid in (pids or "").split(",") if pid]


def _die_with_parent() -> None:
    """Linux: a helper gets SIGKILL when `run` dies, so a killed run leaves no orphans.
    (An exec does not count as dying: the helpers outlive `run`'s re-execution.)"""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except OSError:
        pass
