"""Process-level helpers: liveness on this host, garbage-collector and allocator tuning for
engines."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import sys
import traceback
from collections.abc import Callable

# Generation-0 threshold for engine processes (CPython's default is 700). An engine allocates
# a few hundred short-lived objects per image, nearly all freed by reference counting; at the
# default it ran a collection every few images, and the older generations' passes walked
# every SQLAlchemy/pydantic object loaded at start-up (~3% of a download's CPU in perf).
ENGINE_GC_THRESHOLD0 = 50_000


# glibc's mallopt() parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

# Response bodies pass through buffers of 64-512 KiB. With glibc's defaults the free space they
# leave at the top of the heap is handed back to the kernel (and buffers over the mmap threshold
# get pages of their own), so the next buffer starts on fresh pages: ~55 page faults per
# 220 KB image, each a zeroed page (and, on this project's VM, a round trip to the host). Kept
# in the heap, the same pages serve image after image: a 10,000-image run into tmpfs went from
# 130,000-360,000 minor faults to ~52,000 and from 3.4-4.7 to 2.6-3.4 s of system CPU.
# Setting a threshold turns off glibc's own adjustment of both: the mmap threshold is set to
# glibc's maximum so that the ZIP route's 4 MiB batches are reused too (at 1 MiB each batch was
# mapped afresh: 474 instead of 585 MB/s), and the free heap top kept is capped at 8 MiB (at
# 32 MiB the memory run's two engines held ~40 MB more).
MALLOC_MMAP_THRESHOLD = 32 * 1024 * 1024
MALLOC_TRIM_THRESHOLD = 8 * 1024 * 1024


def tune_gc_for_engine() -> None:
    """Call once an engine process has loaded its code: the objects alive now (modules,
    classes, mappers) move to the permanent generation, which collections never walk, and
    young-object collections run less often. Cycles made from now on are still collected.
    Also tunes malloc for the engine (tune_malloc).

    No collection first: after loading (and after `run` parsed a small input) a full one
    found ~20 unreachable objects among 70,000-115,000, and took 35-45 ms of every engine's
    start."""
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(ENGINE_GC_THRESHOLD0, gen1, gen2)
    tune_malloc()


def tune_malloc() -> bool:
    """One malloc arena for every thread started from now on (see below), and freed body
    buffers kept for reuse (MALLOC_MMAP_THRESHOLD, MALLOC_TRIM_THRESHOLD); False where that
    cannot be done (another C library).

    An engine frees in one thread what its database threads allocated in theirs, and glibc
    gives each thread its own arena: the free memory stranded in those arenas grew without
    bound. One engine on 400,000 small images held 45-60 MB in use throughout while the free
    part of its heaps went from 47 to 171 MB (RSS 288 -> 435 MB); with one arena the free
    part stayed under 7 MB at 200,000 images, for the same CPU time.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this interpreter runs on
    except (OSError, AttributeError):
        return False
    return all(
        mallopt(option, value)
        for option, value in (
            (M_ARENA_MAX, 1),
            (M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD),
            (M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD),
        )
    )


def flush_standard_streams() -> None:
    """Flush stdout and stderr, whatever state they are in (before a fork or an os._exit)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


def fork_child(work: Callable[[], None]) -> int:
    """Fork a child that runs `work()` and exits (0, 130 on Ctrl-C, 1 with the traceback on
    stderr for anything else); its pid. The child dies with its parent and never returns into
    the caller's code. POSIX; call it before this process starts any thread."""
    flush_standard_streams()  # or the child would write what is buffered a second time
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        die_with_parent()
        work()
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # a bug: reported, then the child ends
        traceback.print_exc()
        code = 1
    finally:
        flush_standard_streams()
        os._exit(code)


def die_with_parent() -> None:
    """Linux: this process (a child of `run`) gets SIGKILL when `run` dies, so a killed run
    leaves no orphans. (An exec does not count as dying: `run`'s helpers outlive its
    re-execution.)"""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except OSError:
        pass


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
