"""Process liveness on this host."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True if a process with this id exists on this host (this process always does)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return False
    return True
