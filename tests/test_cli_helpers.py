"""`run`'s helper processes (downloader/run_helpers.py, downloader/forked_parse.py): for a small
input the input is parsed in a forked child and the helper engines are forks of `run`; they take
part in the download, and none outlives `run`, whether the job finishes, the input is unusable
or fewer are needed."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.support.imageserver import ImageServer
from tests.test_cli import ROOT, Cli, add_slow_images, last_json, write_input


def processes_of(db_path: Path) -> list[psutil.Process]:
    """Live `python -m downloader` processes (anywhere) working on this test's database: `run`
    itself, its forks and the helpers it started."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if "downloader" in cmdline and str(db_path) in str(
                proc.environ().get("DATABASE_URL", "")
            ):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def wait_gone(db_path: Path, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while alive := [p for p in processes_of(db_path) if p.status() != psutil.STATUS_ZOMBIE]:
        if time.monotonic() > deadline:
            pytest.fail(f"processes still running: {alive}")
        time.sleep(0.1)


def test_a_small_input_is_parsed_by_a_fork_and_a_forked_helper_downloads_part_of_the_job(
    tmp_path: Path, image_server: ImageServer
) -> None:
    s = image_server
    add_slow_images(s, "early")
    total = 500  # above the 400 images that make a second process worth it
    src = write_input(
        tmp_path / "in.csv",
        [(f"P{i // 5}", s.url(f"/early/{i}.jpg", host=i % 3)) for i in range(total)],
    )
    cli = Cli(tmp_path)
    run = cli.start("run", str(src), "--processes", "2", "--quiet", MAX_GLOBAL_CONCURRENCY="8")
    parent = psutil.Process(run.pid)
    children: set[int] = set()
    registered: set[int] = set()
    libraries: set[str] = set()  # what `run` had mapped once its engine was running
    deadline = time.monotonic() + 60
    while run.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(psutil.NoSuchProcess):
            children |= {child.pid for child in parent.children()}
        if cli.db_path.exists():
            with contextlib.suppress(sqlite3.OperationalError):  # no schema yet
                registered |= {int(pid) for (pid,) in cli.sql("SELECT pid FROM worker")}
        if run.pid in registered and not libraries:
            with contextlib.suppress(psutil.NoSuchProcess):
                libraries = {m.path for m in parent.memory_maps()}
        time.sleep(0.01)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 0, stderr
    assert last_json(stdout)["done"] == total
    assert registered - {run.pid}, "a helper engine beside `run` itself"
    assert registered - {run.pid} <= children, "the helper is a child of `run`"
    assert run.pid in registered
    assert len(children) >= 2, "the parser and the helper"
    assert libraries and not [path for path in libraries if "/pandas/" in path], (
        "pandas is loaded by the parser only"
    )
    wait_gone(cli.db_path)


def test_no_helper_when_not_needed_and_no_process_left_when_the_input_is_unusable(
    tmp_path: Path, image_server: ImageServer
) -> None:
    cli = Cli(tmp_path)
    # two images: a second process is not worth it
    src = write_input(
        tmp_path / "small.csv",
        [("P1", image_server.url("/img/a.jpg")), ("P1", image_server.url("/img/b.jpg"))],
    )
    result = cli("run", str(src), "--processes", "2", "--quiet")
    assert result.returncode == 0, result.stderr
    assert last_json(result.stdout)["done"] == 2
    assert cli.sql("SELECT DISTINCT pid FROM worker") == []
    wait_gone(cli.db_path)

    # no valid rows: the parser's message, exit 2, no traceback, nothing left running
    bad = tmp_path / "bad.csv"
    bad.write_text("Product Number,Image URL\nP1,not a url\n")
    result = cli("run", str(bad), "--processes", "2", "--quiet")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: no valid rows to download" in result.stderr
    assert "row 2:" in result.stderr  # the rejected row, reported by the parser
    wait_gone(cli.db_path)


def _watch(run: subprocess.Popen[str], cli: Cli) -> tuple[list[list[str]], set[int], bool]:
    """Every distinct command line the `run` process had (an exec changes it), the pids of
    the engines that registered while it ran, and whether `run` had pandas loaded while its
    own engine was downloading."""
    seen: list[list[str]] = []
    registered: set[int] = set()
    pandas_while_downloading: bool | None = None
    parent = psutil.Process(run.pid)
    deadline = time.monotonic() + 60
    while run.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
            cmdline = parent.cmdline()
            if cmdline and cmdline not in seen:
                seen.append(cmdline)
            if run.pid in registered and pandas_while_downloading is None:
                maps = parent.memory_maps()
                pandas_while_downloading = any("/pandas/" in m.path for m in maps)
        if cli.db_path.exists():
            with contextlib.suppress(sqlite3.OperationalError):  # no schema yet
                registered |= {int(pid) for (pid,) in cli.sql("SELECT pid FROM worker")}
        time.sleep(0.02)
    assert pandas_while_downloading is not None, "run's engine was never seen downloading"
    return seen, registered, pandas_while_downloading


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_a_small_file_is_downloaded_without_a_re_exec_a_stream_after_one(
    tmp_path: Path, image_server: ImageServer, source: str
) -> None:
    """A small input file is parsed and downloaded by one process image (loading the engine's
    code twice would cost a short job half a second); standard input may be big, so `run`
    re-executes itself after queueing it. Both finish the job with their helper."""
    s = image_server
    add_slow_images(s, f"exec-{source}", delay=0.1)
    total = 500  # a second process is worth it
    rows = [(f"P{i // 5}", s.url(f"/exec-{source}/{i}.jpg", host=i % 3)) for i in range(total)]
    src = write_input(tmp_path / "in.csv", rows)
    cli = Cli(tmp_path)
    arguments = ["run", str(src) if source == "file" else "-", "--processes", "2", "--quiet"]
    run = subprocess.Popen(
        [sys.executable, "-m", "downloader", *arguments],
        cwd=ROOT,
        env={**cli.env, "MAX_GLOBAL_CONCURRENCY": "8"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert run.stdin is not None
    if source == "stdin":
        run.stdin.write(src.read_text())
    run.stdin.close()
    cmdlines, registered, pandas_while_downloading = _watch(run, cli)
    stdout = run.stdout.read() if run.stdout else ""
    stderr = run.stderr.read() if run.stderr else ""
    assert run.wait(timeout=60) == 0, stderr
    assert last_json(stdout)["done"] == total
    assert len(registered) == 2, "run's own engine and its helper"
    re_executed = any("--job" in cmdline for cmdline in cmdlines)
    assert re_executed == (source == "stdin"), cmdlines
    assert not pandas_while_downloading, "the parsing stays in the parser (or before the exec)"
    wait_gone(cli.db_path)


def test_the_same_small_input_again_resumes_its_unfinished_job(
    tmp_path: Path, image_server: ImageServer
) -> None:
    """The fingerprint the forked parser sends is the one the job was created with."""
    cli = Cli(tmp_path)
    src = write_input(tmp_path / "in.csv", [("P1", image_server.url("/img/r.jpg"))])
    first = cli("run", str(src), "--quiet")
    assert first.returncode == 0, first.stderr
    job_id = last_json(first.stdout)["job_id"]
    with sqlite3.connect(cli.db_path) as conn:  # as if the run had been interrupted
        conn.execute("UPDATE job SET status = 'running' WHERE id = ?", (job_id,))
        conn.execute("UPDATE image SET status = 'queued' WHERE job_id = ?", (job_id,))
    again = cli("run", str(src), "--quiet")
    assert again.returncode == 0, again.stderr
    assert f"resuming unfinished job {job_id}" in again.stderr
    assert last_json(again.stdout)["job_id"] == job_id and last_json(again.stdout)["done"] == 1
