"""Process helpers: the engine processes' garbage-collector tuning."""

from __future__ import annotations

import json
import subprocess
import sys

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
