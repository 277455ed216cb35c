"""Time a whole process and the peak of the summed RSS of its process tree.

`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss` only reports the largest single descendant,
which understates a multi-process run, so a thread polls the tree with psutil every 50 ms and
keeps the peak of the sum. (Summed RSS counts pages shared between processes once per process:
an upper bound, the same way for every tool.)
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import psutil
except ImportError as exc:  # pragma: no cover - told to the user, not hidden
    raise SystemExit(
        "benchmarks need psutil: .venv/bin/pip install psutil==7.2.2 (see benchmarks/README.md)"
    ) from exc

MB = 1024 * 1024


@dataclass(frozen=True)
class Measurement:
    seconds: float
    peak_rss_bytes: int
    cpu_seconds: float
    returncode: int
    timed_out: bool
    samples: int

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_bytes / MB


class TreeRssPoller:
    """Samples the summed RSS of `pid` and all its descendants in a background thread."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"rss-{pid}", daemon=True)

    def __enter__(self) -> TreeRssPoller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return
        total = 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
        self.peak = max(self.peak, total)
        self.samples += 1

    def _loop(self) -> None:
        self.sample()
        while not self._stop.wait(self.interval):
            self.sample()


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_measured(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    stdout: Path,
    stderr: Path,
    timeout: float,
) -> Measurement:
    """Run argv to the end (killing its process group after `timeout` s) and measure it.

    CPU seconds are user+system time of the reaped process tree (RUSAGE_CHILDREN delta).
    """
    cpu_before = _children_cpu()
    with stdout.open("wb") as out, stderr.open("wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        timed_out = False
        with TreeRssPoller(proc.pid) as poller:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        seconds = time.perf_counter() - started
    return Measurement(
        seconds=seconds,
        peak_rss_bytes=poller.peak,
        cpu_seconds=_children_cpu() - cpu_before,
        returncode=proc.returncode,
        timed_out=timed_out,
        samples=poller.samples,
    )
