"""Process helpers: the engine processes' garbage-collector and allocator tuning."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from downloader.processes import ENGINE_GC_THRESHOLD0


def test_engine_gc_tuning_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    # In a child interpreter: freezing is process-wide and must not leak into the test run.
    script = (
        "import gc, json\n"
        "from downloader.processes import tune_gc_for_engine\n"
        "before = gc.get_threshold()\n"
        "tune_gc_for_engine()\n"
        "class Node:\n"
        "    pass\n"
        "a, b = Node(), Node()\n"
        "a.other, b.other = b, a\n"
        "import weakref\n"
        "ref = weakref.ref(a)\n"
        "del a, b\n"
        "gc.collect()\n"
        "print(json.dumps({'before': before, 'after': gc.get_threshold(),\n"
        "                  'frozen': gc.get_freeze_count(), 'cycle_freed': ref() is None}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    result = json.loads(out)
    assert result["before"][0] < ENGINE_GC_THRESHOLD0
    assert result["after"][0] == ENGINE_GC_THRESHOLD0
    assert result["after"][1:] == result["before"][1:]
    assert result["frozen"] > 1000  # the modules' objects loaded before the call
    assert result["cycle_freed"]  # new cycles are still collected


ARENAS_SCRIPT = """
import sys, threading, ctypes, ctypes.util
from downloader.processes import tune_malloc
if sys.argv[1] == "limited":
    assert tune_malloc()
held, ready = [], threading.Barrier(5)
def work():
    held.append([bytearray(200_000) for _ in range(20)])  # malloc'd in this thread
    ready.wait()
threads = [threading.Thread(target=work) for _ in range(4)]
for thread in threads:
    thread.start()
ready.wait()
ctypes.CDLL(ctypes.util.find_library("c")).malloc_stats()  # per arena, on stderr
for thread in threads:
    thread.join()
"""


def run_script(script: str, mode: str) -> subprocess.CompletedProcess[str]:
    """`script` in a child interpreter (allocator settings are process-wide)."""
    return subprocess.run(
        [sys.executable, "-c", script, mode], capture_output=True, text=True, check=True, timeout=60
    )


def malloc_arenas(mode: str) -> int:
    stderr = run_script(ARENAS_SCRIPT, mode).stderr
    return sum(line.startswith("Arena ") for line in stderr.splitlines())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc arenas")
def test_engines_allocate_from_one_malloc_arena_whatever_their_threads() -> None:
    """Per-thread arenas stranded the free memory of an engine's database threads."""
    assert malloc_arenas("default") >= 3  # glibc gives new threads arenas of their own
    assert malloc_arenas("limited") == 1


FAULTS_SCRIPT = """
import resource, sys
from downloader.processes import tune_malloc
if sys.argv[1] == "tuned":
    assert tune_malloc()
body = bytes(range(256)) * 860  # a 220 KB response body
for _ in range(50):  # warm up: the heap grows to its working size
    bytes(bytearray(body))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2000):  # a buffer per body, as the fetcher's receive path has
    bytes(bytearray(body))
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    return int(run_script(FAULTS_SCRIPT, mode).stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc thresholds")
def test_engines_reuse_freed_body_buffers_instead_of_faulting_in_new_pages() -> None:
    """Freed 220 KB buffers went back to the kernel, so every new one faulted in fresh pages."""
    assert page_faults("default") > 20_000  # ~55 pages for each of 2 x 2,000 buffers
    assert page_faults("tuned") < 1_000
