"""The fetcher's temp files: ``<pid>-<uuid>.part`` in the temp dir.

The pid in the name lets a restarted process tell files left by dead processes (safe to delete)
from those of fetchers still running on the same host.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from uuid import uuid4

TEMP_SUFFIX = ".part"
_O_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def create_temp_file(temp_dir: Path, pid: int) -> tuple[Path, int]:
    """A new, exclusively created ``<pid>-<uuid>.part`` file in temp_dir and its descriptor."""
    path = temp_dir / f"{pid}-{uuid4().hex}{TEMP_SUFFIX}"
    return path, os.open(path, _O_FLAGS, 0o600)


def write_all(fd: int, data: bytes) -> None:
    # os.write may write less than asked (signals, full pipes); the slice copy is only paid then.
    written = os.write(fd, data)
    if written < len(data):
        view = memoryview(data)
        while written < len(data):
            written += os.write(fd, view[written:])


def remove_leftovers(temp_dir: Path, *, all_pids: bool = False) -> int:
    """Delete ``<pid>-<uuid>.part`` files left by dead processes (or by any, with all_pids).

    Returns how many were removed. Call at start-up, before fetchers of this host start.
    """
    removed = 0
    me = os.getpid()
    for path in Path(temp_dir).glob(f"*{TEMP_SUFFIX}"):
        pid_text = path.name.split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if not all_pids and (pid == me or _pid_alive(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
