"""Process-level helpers: liveness on this host, garbage-collector tuning for engines."""

from __future__ import annotations

import gc
import os

# Generation-0 threshold for engine processes (CPython's default is 700). An engine allocates
# a few hundred short-lived objects per image, nearly all freed by reference counting; at the
# default it ran a collection every few images, and the older generations' passes walked
# every SQLAlchemy/pydantic object loaded at start-up (~3% of a download's CPU in perf).
ENGINE_GC_THRESHOLD0 = 50_000


def tune_gc_for_engine() -> None:
    """Call once an engine process has loaded its code: the objects alive now (modules,
    classes, mappers) move to the permanent generation, which collections never walk, and
    young-object collections run less often. Cycles are still collected."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(ENGINE_GC_THRESHOLD0, gen1, gen2)


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
