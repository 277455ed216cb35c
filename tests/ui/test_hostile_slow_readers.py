"""Issue 18, item 4: clients that request a download and never read must not starve the app.

A real `streamlit run app.py` (embedded engine on) serves a finished job whose master ZIP is
far bigger than what socket buffers and the read-ahead can hold. Fifty raw sockets request
its ZIP, manifest and failed rows and then never read a byte. While they hang on:
- another export is downloaded whole, and the main page's HTML is served;
- a job queued by `python -m downloader submit` on the same database is run to its end by the
  app's embedded engine;
and every stalled connection is closed by the server once it has been idle for
DOWNLOAD_STALL_TIMEOUT seconds.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.imageserver import ImageServer
from tests.ui.conftest import ROOT, make_services, run_job

STALLED_CLIENTS = 50
BIG_IMAGES = 48  # ~1 MB of incompressible PNG each: the ZIP is ~50 MB
BIG_SIDE = 600
STALL_TIMEOUT = 30  # seconds (DOWNLOAD_STALL_TIMEOUT for the app under test): the checks
# below run well within it, while all fifty clients are still stalled
BOUND = 120  # generous bound on every wait below: a starved app fails it


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sql(db_path: Path, query: str, *params: object) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(db_path, timeout=30)) as conn:
        return conn.execute(query, params).fetchall()


@contextlib.contextmanager
def streamlit_app(tmp_path: Path, env: dict[str, str]) -> Iterator[str]:
    """`streamlit run app.py` on a free port; yields its base URL, stops it after."""
    port = free_port()
    log = tmp_path / "app.log"
    args = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app.py",
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
    ]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + BOUND
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the app did not start:\n" + log.read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/_stcore/health", timeout=5).status_code == 200:
                    break
            time.sleep(0.3)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        print(log.read_text()[-4000:])


def stalled_request(port: int, path: str) -> socket.socket:
    """A client that sends its request and then never reads (a tiny receive buffer)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    return sock


def read_until_closed(sock: socket.socket, deadline: float) -> int:
    """Read what the server sent until it closes the connection; the byte count."""
    total = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the server kept the stalled connection open")
        sock.settimeout(remaining)
        try:
            data = sock.recv(1 << 20)
        except ConnectionResetError:
            return total
        if not data:
            return total
        total += len(data)


@pytest.mark.slow
def test_fifty_stalled_downloads_do_not_starve_pages_downloads_or_the_engine(
    tmp_path: Path, image_server: ImageServer
) -> None:
    s = image_server
    # The hostile job's images: big and incompressible, so its ZIP cannot be buffered away.
    rows = ["Product Number\tImage URL"]
    rows += [
        f"BIG-{i // 6}\t{s.url(f'/img/big{i}.png?w={BIG_SIDE}&h={BIG_SIDE}', host=i % 3)}"
        for i in range(BIG_IMAGES)
    ]
    rows.append(f"BIG-0\t{s.url('/status/404')}")  # one failed row for failed.csv
    services = make_services(tmp_path)
    try:
        big_job = run_job(services, "\r\n".join(rows), name="big")
        # another user's small finished job, to download whole while the big one is stalled
        small_job = run_job(
            services, f"SMALL-1\t{s.url('/img/small.jpg')}\r\nSMALL-1\t{s.url('/status/404')}"
        )
    finally:
        services.db.dispose()
    db_path = tmp_path / "app.db"
    media_bytes = sum(p.stat().st_size for p in (tmp_path / "media").rglob("*.png"))
    assert media_bytes > 40 << 20

    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{db_path}",
        "MEDIA_ROOT": str(tmp_path / "media"),
        "ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8",
        "DOWNLOAD_QPS": "0",
        "BACKOFF_BASE": "0.05",
        "MAX_RETRIES": "1",
        "EMBEDDED_WORKER": "true",
        "DOWNLOAD_STALL_TIMEOUT": str(STALL_TIMEOUT),
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
    }
    with streamlit_app(tmp_path, env) as base:
        port = int(base.rsplit(":", 1)[1])
        paths = [
            f"/download/job/{big_job}.zip",
            f"/download/job/{big_job}/manifest.csv",
            f"/download/job/{big_job}/failed.csv",
        ]
        stalled = [
            stalled_request(port, paths[0] if i % 5 else paths[1 + (i // 5) % 2])
            for i in range(STALLED_CLIENTS)
        ]
        opened = time.monotonic()
        try:
            time.sleep(2)  # let every stalled stream start and fill its buffers

            with httpx.Client(base_url=base, timeout=BOUND) as client:
                # another export, read whole
                manifest = client.get(f"/download/job/{small_job}/manifest.csv")
                assert manifest.status_code == 200, manifest.text[:500]
                listed = list(csv.DictReader(io.StringIO(manifest.content.decode("utf-8-sig"))))
                assert sorted(r["status"] for r in listed) == ["done", "failed"]
                failed = client.get(f"/download/job/{small_job}/failed.csv")
                assert failed.status_code == 200, failed.text[:500]
                assert "http_404" in failed.text
                # the app's main page
                page = client.get("/")
                assert page.status_code == 200
                assert "<html" in page.text.lower()

            # a job queued from the command line is run by the app's embedded engine
            src = tmp_path / "new.csv"
            src.write_text(
                f"Product Number,Image URL\nNEW-1,{s.url('/img/new1.jpg', host=1)}\n",
                encoding="utf-8",
            )
            submitted = subprocess.run(
                [sys.executable, "-m", "downloader", "submit", str(src)],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=BOUND,
            )
            assert submitted.returncode == 0, submitted.stderr[-2000:]
            new_job = json.loads(submitted.stdout.strip().splitlines()[-1])["job_id"]
            deadline = time.monotonic() + BOUND
            while sql(db_path, "SELECT status FROM job WHERE id = ?", new_job) != [("completed",)]:
                assert time.monotonic() < deadline, "the embedded engine did not run the job"
                time.sleep(0.2)
            assert sql(db_path, "SELECT status FROM image WHERE job_id = ?", new_job) == [("done",)]

            # every stalled connection is closed by the server once it idled long enough: read
            # nothing until well past the limit, then find each one cut off
            time.sleep(max(0.0, opened + STALL_TIMEOUT + 15 - time.monotonic()))
            deadline = time.monotonic() + BOUND
            received = [read_until_closed(sock, deadline) for sock in stalled]
            print(f"stalled clients received {min(received)}..{max(received)} bytes")
            assert max(received) < media_bytes, "a stalled client was sent the whole ZIP"
        finally:
            for sock in stalled:
                sock.close()
