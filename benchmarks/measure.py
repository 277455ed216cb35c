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
    server_cpu_seconds: float  # nginx's CPU while serving this run (0 without a server)
    other_load: float  # average cores busy with anything else: the machine's noise

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_bytes / MB

    def exit_problems(self) -> list[str]:
        if self.timed_out:
            return ["timed out"]
        return [f"exit code {self.returncode}"] if self.returncode else []


def tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (empty when it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return []


def tree_cpu_seconds(pid: int) -> float:
    """User+system CPU seconds used so far by a live process tree (e.g. nginx and its workers)."""
    total = 0.0
    for proc in tree(pid):
        try:
            times = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        total += times.user + times.system
    return total


def system_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (everything but idle and iowait)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


class TreeRssPoller:
    """Samples the summed RSS of `pid` and all its descendants in a background thread.

    Finding descendants means reading every process's /proc entry, so the tree is re-listed
    only every `rescan` seconds (every sample during the first second, when a program starts
    its workers); the known members' RSS is read every `interval` seconds.
    """

    def __init__(self, pid: int, interval: float = 0.05, rescan: float = 0.5) -> None:
        self.pid = pid
        self.interval = interval
        self.rescan = rescan
        self.peak = 0
        self.samples = 0
        self._members: list[psutil.Process] = []
        self._listed_at = 0.0
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"rss-{pid}", daemon=True)

    def __enter__(self) -> TreeRssPoller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        now = time.monotonic()
        if now - self._listed_at >= self.rescan or now - self._started < 1.0:
            self._members = tree(self.pid)
            self._listed_at = now
        total = 0
        alive = []
        for proc in self._members:
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            alive.append(proc)
        self._members = alive
        if alive:
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
    server_pid: int | None = None,
) -> Measurement:
    """Run argv to the end (killing its process group after `timeout` s) and measure it.

    CPU seconds are user+system time of the reaped process tree (RUSAGE_CHILDREN delta).
    `other_load` is the machine's busy CPU time during the run less the tool's, the server's
    and this harness's own, per second of wall time: near 0 on a quiet machine.
    """
    cpu_before = _children_cpu()
    server_before = tree_cpu_seconds(server_pid) if server_pid else 0.0
    busy_before = system_busy_seconds()
    own_before = time.process_time()
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
    cpu = _children_cpu() - cpu_before
    server_cpu = tree_cpu_seconds(server_pid) - server_before if server_pid else 0.0
    busy = system_busy_seconds() - busy_before
    own = time.process_time() - own_before
    return Measurement(
        seconds=seconds,
        peak_rss_bytes=poller.peak,
        cpu_seconds=cpu,
        returncode=proc.returncode,
        timed_out=timed_out,
        samples=poller.samples,
        server_cpu_seconds=server_cpu,
        other_load=max(0.0, (busy - cpu - server_cpu - own) / seconds) if seconds else 0.0,
    )
