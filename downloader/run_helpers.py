"""`run`'s helper processes: extra engines beside the one in `run` itself, one per further core.

Their start-up (~0.6-1.1 s of CPU each: SQLAlchemy, SQLModel, httpx) should not delay the
download:

* for a small input file (up to SMALL_INPUT_BYTES, POSIX) `run` has the input parsed in a
  forked process while it loads its own code, then forks the helpers from itself once the job
  is queued (`fork_helpers`): they start with every module loaded (cli_run.py).
* otherwise `run` starts them (`python -m downloader worker --job ID --until-idle --share S`)
  with the job id just before it re-executes itself for its download phase, so their start-up
  overlaps the re-executed process's own. The re-executed `run` keeps the same pid, so it is
  still their parent: it gets their pids on its command line, waits for them and passes stop
  signals on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass

from downloader.processes import die_with_parent, fork_child

SMALL_INPUT_BYTES = 1_000_000  # ~20,000 CSV rows: the parser then stays well under 200 MB


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


def fork_helpers(count: int, engine: Callable[[], None]) -> list[Helper]:
    """Fork `count` children of this process that each run `engine()` and exit (see
    processes.fork_child). What a child writes to standard output goes nowhere: the output is
    `run`'s."""

    def quiet_engine() -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        engine()

    return [Helper(fork_child(quiet_engine)) for _ in range(count)]


def _start(arguments: list[str], database_url: str, media_root: str) -> Helper:
    env = dict(os.environ, DATABASE_URL=database_url, MEDIA_ROOT=media_root)
    command = [sys.executable, "-m", "downloader", "worker", "--until-idle", *arguments]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, preexec_fn=die_with_parent
    )
    return Helper(process.pid, process)


def adopt_helpers(pids: str | None) -> list[Helper]:
    """The helpers started before the exec, from their comma-separated pids."""
    return [Helper(int(pid)) for pid in (pids or "").split(",") if pid]
