"""`run`'s helper processes: extra engines beside the one in `run` itself, one per further core
(`python -m downloader worker --job ID --until-idle --share S`).

`run` starts them just before it re-executes itself for its download phase, so their start-up
(~0.7 s of CPU each: SQLAlchemy, aiohttp, httpx, Pillow) runs on the other core at the same
time as the download phase's own instead of after it. The re-executed `run` keeps the same pid,
so it is still their parent: it gets their pids on its command line, waits for them and passes
stop signals on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import suppress
from dataclasses import dataclass


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
    env = dict(os.environ, DATABASE_URL=database_url, MEDIA_ROOT=media_root)
    command = [sys.executable, "-m", "downloader", "worker", "--job", job_id, "--until-idle"]
    command += ["--share", str(share)]
    helpers = []
    for _ in range(count):
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
        helpers.append(Helper(process.pid, process))
    return helpers


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
