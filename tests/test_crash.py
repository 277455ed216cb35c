"""Crash safety: processes running the engine are SIGKILLed at random moments of a job and
started again. The job always completes, every image is stored exactly once under its
generated key, no file at a final key is ever half-written, no .part file outlives the
restart, and the counts match the rows.

Real parts only: `python -m downloader worker` / `run` (and `streamlit run app.py`) as
subprocesses, one SQLite file, the local media folder, and the loopback image server.

The kill moments come from a seeded random generator. The seed is printed (pytest shows it
on failure); set CRASH_TEST_SEED to replay one.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from downloader import jobs
from downloader.inputs import parse_path
from downloader.services import Services, build_services
from downloader.settings import load_settings
from tests.support.imageserver import ImageServer, Reply, Req, image_bytes
from tests.test_cli import Cli, last_json, write_input

ROOT = Path(__file__).resolve().parents[1]
LIMITS = {"MAX_GLOBAL_CONCURRENCY": "12", "MAX_PER_HOST_CONCURRENCY": "4"}
FORMATS = ("jpg", "png", "webp")
IMAGE_SIZE = (160, 120)  # big enough to arrive in several pieces
BIG_SIZE = (640, 480)  # every BIG_EVERY-th image: a ~900 KB PNG, written to a .part file
BIG_EVERY = 10
PIECES = 6
PIECE_INTERVAL = 0.02  # seconds between body pieces: every download spends time mid-body
KEY_RE = re.compile(
    r"^jobs/(?P<job>[0-9a-f]+)/(?P<product>\d+)/(?P<position>\d+)\.(?P<ext>[a-z]+)$"
)


def seeded_rng(name: str) -> random.Random:
    seed = int(os.environ.get("CRASH_TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"{name}: seed {seed} (replay with CRASH_TEST_SEED={seed})")
    return random.Random(seed)


# ---------------------------------------------------------------- the job


def crash_image(ident: int) -> tuple[str, str]:
    """(server path, format) of image `ident`: unique bytes, the format varies."""
    fmt = "png" if ident % BIG_EVERY == 0 else FORMATS[ident % len(FORMATS)]
    return f"/crash/{ident}.{fmt}", fmt


def crash_bytes(ident: int) -> bytes:
    fmt = crash_image(ident)[1]
    size = BIG_SIZE if ident % BIG_EVERY == 0 else IMAGE_SIZE
    return image_bytes(f"crash-{ident}", fmt, *size)


def serve_crash_images(server: ImageServer) -> None:
    """`/crash/<id>.<fmt>`: a unique image, sent in pieces with a pause between them."""

    def handler(req: Req) -> Reply:
        ident = int(req.param("id") or 0)
        data = crash_bytes(ident)
        pieces_count = PIECES * 3 if ident % BIG_EVERY == 0 else PIECES
        step = -(-len(data) // pieces_count)
        pieces = [data[i : i + step] for i in range(0, len(data), step)]
        return Reply(
            body=pieces, length=len(data), content_type="image/jpeg", interval=PIECE_INTERVAL
        )

    server.add_route(r"^/crash/(?P<id>\d+)\.(?:jpg|png|webp)$", handler)


@dataclass
class CrashJob:
    job_id: str
    src: Path
    total: int
    expected: dict[str, bytes]  # url -> the exact bytes the server sends


def make_crash_job(
    tmp_path: Path, server: ImageServer, total: int, per_product: int = 5
) -> CrashJob:
    serve_crash_images(server)
    rows, expected = [], {}
    for ident in range(total):
        path, _ = crash_image(ident)
        url = server.url(path, host=ident % 3)
        rows.append((f"P{ident // per_product:04d}", url))
        expected[url] = crash_bytes(ident)
    src = write_input(tmp_path / "in.csv", rows)
    services = in_process_services(tmp_path)
    job = jobs.create_job(services.db, parse_path(src, max_rows=10_000), source=src.name)
    services.db.dispose()
    return CrashJob(job.id, src, total, expected)


def in_process_services(tmp_path: Path) -> Services:
    return build_services(
        load_settings(
            database_url=f"sqlite:///{tmp_path / 'app.db'}",
            media_root=str(tmp_path / "media"),
            allowed_private_networks=["127.0.0.0/8"],
            download_qps=0,
            backoff_base=0.05,
        )
    )


# ---------------------------------------------------------------- processes


def sql(db_path: Path, query: str, *params: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(db_path, timeout=30) as conn:
        return conn.execute(query, params).fetchall()


def done_count(db_path: Path, job_id: str) -> int:
    rows = sql(db_path, "SELECT count(*) FROM image WHERE job_id = ? AND status = 'done'", job_id)
    return int(rows[0][0])  # type: ignore[call-overload]


def spawn(cli: Cli, args: list[str], log: Path, **env: str) -> subprocess.Popen[bytes]:
    """A long-running process whose output goes to a file (a pipe nobody reads can fill up)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            args, cwd=ROOT, env={**cli.env, **LIMITS, **env}, stdout=out, stderr=subprocess.STDOUT
        )


def wait_until(
    condition: Callable[[], bool], timeout: float, proc: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            pytest.fail(f"the process exited early ({proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout} s:\n{log.read_text()[-3000:]}")


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- invariants


@dataclass
class Snapshot:
    statuses: Counter[str] = field(default_factory=Counter)
    done_urls: set[str] = field(default_factory=set)
    parts: int = 0  # .part files in media_root/.tmp
    orphans: int = 0  # files published at a final key whose result was not recorded yet


def check_invariants(cli: Cli, crash: CrashJob, *, final: bool = False) -> Snapshot:
    """What must hold after any crash (and, with `final`, after the job completed)."""
    snap = Snapshot()
    job_rows = sql(
        cli.db_path, "SELECT images, products, status FROM job WHERE id = ?", crash.job_id
    )
    assert len(job_rows) == 1
    images, products, status = job_rows[0]
    rows = sql(
        cli.db_path,
        "SELECT product_id, position, url, status, storage_key, sha256, size_bytes, format"
        " FROM image WHERE job_id = ?",
        crash.job_id,
    )
    assert images == crash.total == len(rows), "the job's count must match its image rows"
    assert (
        products
        == sql(cli.db_path, "SELECT count(*) FROM product WHERE job_id = ?", crash.job_id)[0][0]
    )
    by_slot = {(int(r[0]), int(r[1])): r for r in rows}  # type: ignore[call-overload]
    assert len(by_slot) == len(rows)
    for product_id, position, url, state, key, sha, size, fmt in rows:
        snap.statuses[str(state)] += 1
        assert state in ("queued", "downloading", "done"), (url, state)  # nothing fails here
        if state != "done":
            continue
        snap.done_urls.add(str(url))
        assert key == f"jobs/{crash.job_id}/{product_id}/{position}.{fmt}"
        path = cli.media / str(key)
        assert path.is_file(), f"image {url} is done but {key} is missing"
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha, f"{key} does not hold the recorded bytes"
        assert data == crash.expected[str(url)] and len(data) == size

    for path in sorted(p for p in cli.media.rglob("*") if p.is_file()):
        key = path.relative_to(cli.media).as_posix()
        if key.startswith(".tmp/"):
            assert key.endswith(".part"), key
            snap.parts += 1
            continue
        match = KEY_RE.match(key)
        assert match and match["job"] == crash.job_id, f"unexpected file {key}"
        row = by_slot[(int(match["product"]), int(match["position"]))]
        # a file at a final key is always complete: published by one atomic rename
        assert path.read_bytes() == crash.expected[str(row[2])], f"{key} is half-written or wrong"
        if row[3] != "done":
            snap.orphans += 1
    assert status in (("completed",) if final else ("queued", "running")), status
    if final:
        assert snap.statuses == Counter(done=crash.total)
        assert snap.parts == 0, "temp files were left behind"
        assert snap.orphans == 0, "a published file has no recorded result"
    return snap


def assert_not_fetched_again(server: ImageServer, fetched_at_kill: dict[str, int]) -> None:
    for url, count in fetched_at_kill.items():
        path = "/" + url.split("/", 3)[3]
        assert server.count(path) == count, f"{url} was done at a kill, then fetched again"


# ---------------------------------------------------------------- tests


@pytest.mark.slow
def test_engine_processes_sigkilled_three_times_at_random_moments_then_the_job_completes(
    tmp_path: Path, image_server: ImageServer
) -> None:
    s = image_server
    rng = seeded_rng("sigkill x3")
    crash = make_crash_job(tmp_path, s, total=300)
    cli = Cli(tmp_path)
    log = tmp_path / "engine.log"
    fetched_at_kill: dict[str, int] = {}
    # At least two kills while images are completing; the third may also land anywhere
    # from interpreter start-up through migrations and claiming.
    modes = ["progress", "progress", rng.choice(["time", "progress"])]
    rng.shuffle(modes)
    for round_no, mode in enumerate(modes, 1):
        command = rng.choice(["worker", "run"])
        args = [sys.executable, "-m", "downloader", command]
        if command == "run":
            args += [str(crash.src), "--processes", "1", "--quiet"]
        before = done_count(cli.db_path, crash.job_id)
        proc = spawn(cli, args, log)
        started = time.monotonic()
        cap = before + 60  # never let one round finish the job
        if mode == "time":
            delay = rng.uniform(0.3, 6.0)
            plan = f"{delay:.2f} s after start"
            wait_until(
                lambda: (
                    time.monotonic() - started >= delay
                    or done_count(cli.db_path, crash.job_id) >= cap
                ),
                60,
                proc,
                log,
            )
        else:
            target, extra = before + rng.randint(1, 40), rng.uniform(0.0, 0.3)
            plan = f"{extra:.2f} s after {target} images are done"
            wait_until(lambda: done_count(cli.db_path, crash.job_id) >= target, 60, proc, log)
            time.sleep(extra)
        kill(proc)
        snap = check_invariants(cli, crash)
        print(
            f"kill {round_no}: {command} {plan} (at {time.monotonic() - started:.2f} s):"
            f" {dict(snap.statuses)}, {snap.parts} .part files, {snap.orphans} unrecorded files"
        )
        assert snap.statuses["done"] < crash.total, "the kill must land before the job ends"
        for url in snap.done_urls:
            fetched_at_kill.setdefault(url, s.count("/" + url.split("/", 3)[3]))
    assert len(fetched_at_kill) > 0

    final = cli("run", str(crash.src), "--processes", "1", "--quiet", **LIMITS)
    assert final.returncode == 0, final.stderr
    assert "resuming" in final.stderr
    summary = last_json(final.stdout)
    assert summary["job_id"] == crash.job_id
    assert (summary["images"], summary["done"], summary["duplicate"], summary["failed"]) == (
        crash.total,
        crash.total,
        0,
        0,
    )
    check_invariants(cli, crash, final=True)
    assert_not_fetched_again(s, fetched_at_kill)
    for path, _ in (crash_image(i) for i in range(crash.total)):
        assert s.count(path) >= 1
    assert cli.sql("SELECT count(*) FROM job") == [(1,)]
    # killed engines were reaped, the last one unregistered: nothing holds a lease
    assert cli.sql("SELECT count(*) FROM worker") == [(0,)]
    assert cli.sql("SELECT count(*) FROM image WHERE lease_owner IS NOT NULL") == [(0,)]
    assert "Traceback" not in log.read_text()


@pytest.mark.slow
def test_the_streamlit_app_sigkilled_mid_job_then_started_again_completes_the_job(
    tmp_path: Path, image_server: ImageServer
) -> None:
    """The app's lifespan runs the embedded engine; killing the server mid-job loses nothing."""
    s = image_server
    rng = seeded_rng("streamlit sigkill")
    crash = make_crash_job(tmp_path, s, total=200)
    cli = Cli(tmp_path)
    log = tmp_path / "app.log"

    def start_app() -> subprocess.Popen[bytes]:
        args = [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.headless",
            "true",
            "--server.port",
            str(free_port()),
            "--server.address",
            "127.0.0.1",
        ]
        return spawn(
            cli, args, log, EMBEDDED_WORKER="true", STREAMLIT_BROWSER_GATHER_USAGE_STATS="false"
        )

    app = start_app()
    target, extra = rng.randint(5, 80), rng.uniform(0.0, 0.3)
    wait_until(lambda: done_count(cli.db_path, crash.job_id) >= target, 120, app, log)
    time.sleep(extra)
    kill(app)
    snap = check_invariants(cli, crash)
    print(
        f"app killed {extra:.2f} s after {target} images were done: {dict(snap.statuses)},"
        f" {snap.parts} .part files, {snap.orphans} unrecorded files"
    )
    assert snap.statuses["done"] < crash.total, "the kill must land before the job ends"
    fetched_at_kill = {url: s.count("/" + url.split("/", 3)[3]) for url in snap.done_urls}

    app = start_app()
    try:
        wait_until(
            lambda: (
                sql(cli.db_path, "SELECT status FROM job WHERE id = ?", crash.job_id)
                == [("completed",)]
            ),
            120,
            app,
            log,
        )
    finally:
        app.send_signal(signal.SIGTERM)
        try:
            app.wait(timeout=40)
        except subprocess.TimeoutExpired:
            kill(app)
    check_invariants(cli, crash, final=True)
    assert_not_fetched_again(s, fetched_at_kill)
    # the killed app's engine was reaped, the stopped one unregistered
    assert cli.sql("SELECT count(*) FROM worker") == [(0,)]
    assert cli.sql("SELECT count(*) FROM image WHERE lease_owner IS NOT NULL") == [(0,)]
    assert "Traceback" not in log.read_text()
