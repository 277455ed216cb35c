"""Real-world image files (issue 26): whatever images the installed packages and the Python
standard library ship (icons, test data, documentation pictures) go through the whole-file
check and the full decode. No file may crash, hang or bloat the engine: each ends accepted
or refused with a known code, within a per-file time bound, in a child process whose peak
memory is measured; the standard library's well-known samples (imghdrdata) are accepted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".tif", ".tiff", ".webp", ".bmp", ".avif"}
SUFFIXES |= {".heic", ".jxl", ".ico", ".svg", ".exr", ".pbm", ".pgm", ".ppm", ".xbm", ".ras"}
MAX_FILES = 600
MAX_FILE_BYTES = 20 * 1024 * 1024
KNOWN_CODES = {"not_an_image", "truncated_image", "corrupt_image", "decompression_bomb"}

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from downloader.fetch.sniff import SniffError, image_info
from downloader.fetch.verify import decode

results = []
for name in json.loads(sys.stdin.read()):
    data = Path(name).read_bytes()
    started = time.monotonic()
    try:
        info = image_info(None, data[:64], data)
        outcome = "ok:" + info.format
        decode(data, info.format)
    except SniffError as exc:
        outcome = exc.code
    except Exception as exc:  # a crash: reported, then the test fails
        outcome = "crash:" + type(exc).__name__ + ": " + str(exc)[:200]
    results.append((name, outcome, time.monotonic() - started))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"results": results, "peak": peak}))
"""


def corpus() -> list[Path]:
    roots = [
        Path(sysconfig.get_paths()["stdlib"]),
        Path(sysconfig.get_paths()["purelib"]),
        Path("/usr/share/icons"),
        Path("/usr/share/doc"),
        Path("/usr/share/tcltk"),
    ]
    found: list[Path] = []
    for root in roots:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            wanted = path.suffix.lower() in SUFFIXES and not path.is_symlink()
            if wanted and path.is_file() and path.stat().st_size <= MAX_FILE_BYTES:
                found.append(path)
    # every kind of file, not 500 icons of one theme: round-robin over the folders
    by_folder: dict[Path, list[Path]] = {}
    for path in found:
        by_folder.setdefault(path.parent, []).append(path)
    samples = Path(sysconfig.get_paths()["stdlib"]) / "test" / "imghdrdata"
    picked: list[Path] = by_folder.pop(samples, [])  # the well-known samples, all of them
    while len(picked) < MAX_FILES and any(by_folder.values()):
        for files in by_folder.values():
            if files:
                picked.append(files.pop(0))
    return picked[:MAX_FILES]


def test_real_world_files_neither_crash_hang_nor_bloat() -> None:
    files = corpus()
    assert len(files) >= 20, "the machine ships too few images to test on"
    child = subprocess.run(
        [sys.executable, "-c", CHILD],
        input=json.dumps([str(path) for path in files]),
        capture_output=True,
        text=True,
        timeout=300,  # a hang ends the test, not the suite
        cwd=Path(__file__).resolve().parent.parent,
        check=True,
    )
    report = json.loads(child.stdout)
    results = report["results"]
    crashes = [(name, outcome) for name, outcome, _ in results if outcome.startswith("crash")]
    assert not crashes
    for name, outcome, seconds in results:
        assert outcome.startswith("ok:") or outcome in KNOWN_CODES, (name, outcome)
        assert seconds < 10, (name, seconds)  # per file, generous
    assert report["peak"] < 1536 * 1024 * 1024  # never near a decompression bomb's memory
    outcomes = {Path(name).name: outcome for name, outcome, _ in results}
    stdlib_samples = Path(sysconfig.get_paths()["stdlib"]) / "test" / "imghdrdata"
    if stdlib_samples.is_dir():
        for name, fmt in [
            ("python.png", "png"),
            ("python.jpg", "jpg"),
            ("python.gif", "gif"),
            ("python.tiff", "tif"),
            ("python.bmp", "bmp"),
            ("python.webp", "webp"),
        ]:
            assert outcomes.get(name) == "ok:" + fmt, (name, outcomes.get(name))
        assert outcomes.get("python.exr") == "not_an_image"
