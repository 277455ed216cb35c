"""A real `streamlit run app.py` for the HTTP API tests (issue 25), with its image server,
a webhook receiver on its own loopback address, and tokens made by the real CLI."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.support.imageserver import ImageServer
from tests.ui.conftest import ROOT
from tests.ui.test_hostile_slow_readers import streamlit_app

WEBHOOK_SECRET = "test-webhook-secret-0123456789"
RECEIVER_HOST = "127.0.0.5"  # allowed for webhooks only (WEBHOOK_ALLOWLIST)
ADMIN = "boss@example.com"
BOUND = 90  # generous bound on every wait: a hung server fails it


@dataclass
class Hook:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook receiver: /ok answers 200, /flaky 500 once then 200, /redirect a 302."""

    hooks: list[Hook] = field(default_factory=list)
    port: int = 0
    flaky_seen: int = 0

    def url(self, path: str) -> str:
        return f"http://{RECEIVER_HOST}:{self.port}{path}"

    def wait_for(self, path: str, count: int = 1, timeout: float = BOUND) -> list[Hook]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [hook for hook in self.hooks if hook.path == path]
            if len(found) >= count:
                return found
            time.sleep(0.1)
        raise AssertionError(f"no {count} webhook(s) at {path}: {self.hooks}")


@contextlib.contextmanager
def receiver() -> Iterator[Receiver]:
    got = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            size = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(size)
            got.hooks.append(Hook(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            if self.path == "/flaky" and got.flaky_seen == 0:
                got.flaky_seen += 1
                self.send_response(500)
            elif self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", got.url("/ok"))
            else:
                self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer((RECEIVER_HOST, 0), Handler)
    got.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield got
    finally:
        server.shutdown()
        server.server_close()


def signed(body: bytes) -> str:
    return "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class ApiServer:
    base: str
    db_path: Path
    env: dict[str, str]
    images: ImageServer
    hooks: Receiver

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])

    def cli(self, *args: str) -> dict[str, Any]:
        """Run `python -m downloader ARGS` on the app's database; its last stdout JSON line."""
        done = subprocess.run(
            [sys.executable, "-m", "downloader", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=BOUND,
            check=False,
        )
        assert done.returncode in (0, 1), done.stderr
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))

    def token(self, owner: str, *extra: str) -> str:
        return str(self.cli("token", "create", "--owner", owner, *extra)["token"])

    def client(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=f"{self.base}/api/v1", headers=headers, timeout=BOUND)

    def sql(self, query: str, *params: object) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(self.db_path, timeout=30)) as conn, conn:
            return conn.execute(query, params).fetchall()

    def wait_ended(self, client: httpx.Client, job_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline:
            job = client.get(f"/jobs/{job_id}").json()
            if job["status"] in ("completed", "cancelled"):
                return dict(job)
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not end")


@contextlib.contextmanager
def api_server(tmp: Path, **settings: str) -> Iterator[ApiServer]:
    """The app on a free port with the API's settings; an image server on 127.0.0.2-4."""
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp / 'app.db'}",
        "MEDIA_ROOT": str(tmp / "media"),
        # the image hosts only: the webhook receiver's address needs WEBHOOK_ALLOWLIST
        "ALLOWED_PRIVATE_NETWORKS": "127.0.0.2/31,127.0.0.4/32",
        "WEBHOOK_ALLOWLIST": f"{RECEIVER_HOST}/32",
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "METRICS_ENABLED": "true",
        "ADMIN_USERS": ADMIN,
        "JOB_RATE_LIMIT_PER_MINUTE": "0",
        "MAX_ACTIVE_JOBS_PER_USER": "3",
        "DOWNLOAD_QPS": "0",
        "BACKOFF_BASE": "0.05",
        "MAX_RETRIES": "1",
        "EMBEDDED_WORKER": "true",
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
        **settings,
    }
    for name in ("TRUSTED_USER_HEADER", "WEBHOOK_SECRET_FILE"):
        env.pop(name, None)
    with ImageServer() as images, receiver() as hooks, streamlit_app(tmp, env) as base:
        yield ApiServer(base, tmp / "app.db", env, images, hooks)


def sse_events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a text/event-stream response."""
    name, data = "", []
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            yield name, json.loads("\n".join(data))
            name, data = "", []
