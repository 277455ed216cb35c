"""`python -m downloader` as a user runs it: real subprocesses, a real SQLite file, real HTTP
servers on loopback, and SIGKILL in the middle of a job."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.support.imageserver import ImageServer, Reply, Req, image_bytes

ROOT = Path(__file__).resolve().parents[1]


class Cli:
    def __init__(self, tmp_path: Path) -> None:
        self.db_path = tmp_path / "app.db"
        self.media = tmp_path / "media"
        self.env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{self.db_path}",
            "MEDIA_ROOT": str(self.media),
            "ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8",
            "DOWNLOAD_QPS": "0",
            "BACKOFF_BASE": "0.05",
        }

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "downloader", *args],
            cwd=ROOT,
            env={**self.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def __call__(
        self, *args: str, stdin: str | None = None, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "downloader", *args],
            cwd=ROOT,
            env={**self.env, **env},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=180,
        )

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.db_path, timeout=30) as conn:
            return conn.execute(query).fetchall()


def last_json(output: str) -> dict[str, object]:
    return json.loads(output.strip().splitlines()[-1])


def add_slow_images(server: ImageServer, folder: str, delay: float = 0.05) -> None:
    """Serve /<folder>/<id>.jpg, each after `delay` seconds (so a job lasts long enough)."""

    def slow_image(req: Req) -> Reply:
        time.sleep(delay)
        return Reply.image(f"slow-{req.param('id')}", "jpg")

    server.add_route(rf"^/{folder}/(?P<id>\d+)\.jpg$", slow_image)


def write_input(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("Product Number,Image URL\n" + "".join(f"{p},{u}\n" for p, u in rows))
    return path


def test_run_status_zip_and_check_follow_the_contract(
    tmp_path: Path, image_server: ImageServer
) -> None:
    s = image_server
    cli = Cli(tmp_path)
    rows = [
        ("P1", s.url("/img/a.jpg")),
        ("P1", s.url("/img/b.png", host=1)),
        ("P2", s.url("/status/404")),
    ]
    src = write_input(tmp_path / "in.csv", [*rows, ("X" * 129, s.url("/img/c.jpg"))])

    result = cli("run", str(src))
    assert result.returncode == 0, result.stderr
    summary = last_json(result.stdout)
    assert {k: summary[k] for k in ("products", "images", "done", "duplicate", "failed")} == {
        "products": 2,
        "images": 3,
        "done": 2,
        "duplicate": 0,
        "failed": 1,
    }
    assert "row 5" in result.stderr  # the rejected row is reported with its sheet row number
    job_id = str(summary["job_id"])

    status = last_json(cli("status", job_id).stdout)
    assert status["status"] == "completed" and status["done"] == 2

    out = tmp_path / "all.zip"
    assert cli("zip", job_id, "--out", str(out)).returncode == 0
    with zipfile.ZipFile(out) as archive:
        assert sorted(archive.namelist()) == ["P1/P1_1.jpg", "P1/P1_2.png", "manifest.csv"]
        assert archive.read("P1/P1_1.jpg") == image_bytes("a", "jpg")
    product_zip = tmp_path / "p1.zip"
    assert cli("zip", job_id, "--out", str(product_zip), "--product", "P1").returncode == 0
    with zipfile.ZipFile(product_zip) as archive:
        assert sorted(archive.namelist()) == ["P1_1.jpg", "P1_2.png", "manifest.csv"]
    missing = cli("zip", job_id, "--out", str(tmp_path / "x.zip"), "--product", "NOPE")
    assert missing.returncode == 2 and "NOPE" in missing.stderr

    check = cli("check")
    assert check.returncode == 0 and last_json(check.stdout)["healthy"] is True


def test_unusable_input_exits_2_with_a_message_and_no_traceback(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    garbage = tmp_path / "random.csv"
    garbage.write_bytes(os.urandom(4096))
    for args, stdin in (
        (["run", str(garbage)], None),
        (["submit", "-"], "no urls here\n"),
        (["run", str(tmp_path / "missing.csv")], None),
    ):
        result = cli(*args, stdin=stdin)
        assert result.returncode == 2, result
        assert result.stderr.strip().startswith("error:")
        assert "Traceback" not in result.stderr
    assert cli("status", "nosuchjob").returncode == 2
    bad_setting = cli("check", MAX_GLOBAL_CONCURRENCY="lots")
    assert bad_setting.returncode == 2 and "MAX_GLOBAL_CONCURRENCY" in bad_setting.stderr


def test_profiled_cli_still_writes_its_profile(tmp_path: Path) -> None:
    """The CLI ends without the interpreter's teardown, except under a profiler or tracer,
    which write their results at exit."""
    cli = Cli(tmp_path)
    profile = tmp_path / "status.prof"
    result = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "downloader", "status", "x"],
        cwd=ROOT,
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stderr.startswith("error: No job")  # (cProfile itself exits 0 on SystemExit)
    assert profile.stat().st_size > 0


def test_submit_then_a_worker_finishes_the_job(tmp_path: Path, image_server: ImageServer) -> None:
    s = image_server
    cli = Cli(tmp_path)
    src = write_input(
        tmp_path / "in.csv", [(f"P{i}", s.url(f"/img/w{i}.webp", host=i % 3)) for i in range(12)]
    )
    submitted = cli("submit", str(src))
    assert submitted.returncode == 0, submitted.stderr
    info = last_json(submitted.stdout)
    assert info["images"] == 12 and info["rejected"] == 0
    assert last_json(cli("status", str(info["job_id"])).stdout)["status"] == "queued"

    worker = cli.start("worker")
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            if last_json(cli("status", str(info["job_id"])).stdout)["status"] == "completed":
                break
            time.sleep(0.3)
        else:
            pytest.fail("the worker did not finish the job")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=25)
    assert worker.returncode == 0
    assert cli.sql("SELECT count(*) FROM worker") == [(0,)]  # it unregistered on SIGTERM


def test_sigkill_mid_job_then_run_again_finishes_without_refetching(
    tmp_path: Path, image_server: ImageServer
) -> None:
    s = image_server
    add_slow_images(s, "work")
    total = 400
    rows = [(f"P{i // 4}", s.url(f"/work/{i}.jpg", host=i % 3)) for i in range(total)]
    src = write_input(tmp_path / "in.csv", rows)
    cli = Cli(tmp_path)
    limits = {"MAX_GLOBAL_CONCURRENCY": "12", "MAX_PER_HOST_CONCURRENCY": "4"}

    first = cli.start("run", str(src), "--processes", "2", "--quiet", **limits)
    deadline = time.time() + 60
    while time.time() < deadline:
        time.sleep(0.1)
        if cli.db_path.exists():
            try:
                if cli.sql("SELECT count(*) FROM image WHERE status = 'done'")[0][0] >= 100:
                    break
            except sqlite3.OperationalError:
                continue  # schema not there yet
    first.send_signal(signal.SIGKILL)
    first.wait()
    time.sleep(0.5)  # helper processes die with their parent (PR_SET_PDEATHSIG)

    done_before = {str(u) for (u,) in cli.sql("SELECT url FROM image WHERE status = 'done'")}
    assert 100 <= len(done_before) < total, "the kill must land mid-job"
    fetched_at_kill = {path: s.count(path) for path in (Req_path(u) for u in done_before)}
    requests_at_kill = len(s.requests)
    time.sleep(0.5)
    assert len(s.requests) == requests_at_kill, "nothing may keep downloading after the kill"

    second = cli("run", str(src), "--quiet", **limits)
    assert second.returncode == 0, second.stderr
    summary = last_json(second.stdout)
    assert "resuming" in second.stderr
    assert summary["done"] == total and summary["failed"] == 0
    assert cli.sql("SELECT count(*) FROM job") == [(1,)]
    assert cli.sql("SELECT status, count(*) FROM image GROUP BY status") == [("done", total)]

    # no image that was done at the kill was fetched again
    for path, count in fetched_at_kill.items():
        assert s.count(path) == count, path
    # every image stored exactly once, with the right bytes, and no temp files left
    files = sorted((cli.media / "jobs").rglob("*.jpg"))
    assert len(files) == total
    keys = dict(cli.sql("SELECT storage_key, sha256 FROM image"))
    for key, sha in keys.items():
        assert hashlib.sha256((cli.media / str(key)).read_bytes()).hexdigest() == sha
    assert not [p for p in (cli.media / ".tmp").iterdir()]

    job_id = str(summary["job_id"])
    out = tmp_path / "all.zip"
    assert cli("zip", job_id, "--out", str(out)).returncode == 0
    with zipfile.ZipFile(out) as archive:
        manifest = archive.read("manifest.csv").decode()
        assert manifest.count("\n") == total + 1
        for info in archive.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
        names = [n for n in archive.namelist() if n != "manifest.csv"]
        assert len(names) == total == len(set(names))
        first_entry = io.BytesIO(archive.read(names[0]))
        assert first_entry.getvalue()[:2] == b"\xff\xd8"


def Req_path(url: str) -> str:
    return "/" + url.split("/", 3)[3]
