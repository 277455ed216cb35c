"""Secrets never leave through a command line, a log line, the system check or the image.

Real parts only: `python -m downloader run` and `check` as subprocesses, the PostgreSQL server
on 127.0.0.1 (trust authentication: the password in the URL is ignored by the server, but it
is the secret a leak would show), the loopback image server, and the real loggers.
"""

from __future__ import annotations

import fnmatch
import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from downloader.redact import is_secret_name, looks_random, redact_text, redact_url
from downloader.settings import load_settings
from tests.support.imageserver import ImageServer, Reply, Req, closed_port, image_server
from tests.support.pg import pg_url

__all__ = ["image_server", "pg_url"]  # fixtures used by the tests below

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "s3cretpw"


# ---------------------------------------------------------------- the redaction function

SIGNATURE = "0f3e2b1c9d8a7f6e5d4c3b2a19080706f5e4d3c2b1a0998877665544332211ff"
PRESIGNED = (
    "https://bucket.s3.amazonaws.com/img/a.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261208%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20261208T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
    f"&X-Amz-Signature={SIGNATURE}"
)


@pytest.mark.parametrize(
    ("url", "secrets", "kept"),
    [
        (
            PRESIGNED,
            ["AKIAIOSFODNN7EXAMPLE", SIGNATURE],
            ["https://bucket.s3.amazonaws.com/img/a.jpg?"],
        ),
        (
            "https://cdn.example.com/p/1.jpg?w=800&token=abcdef1234567890ABCDEF&v=1690000000",
            ["abcdef1234567890ABCDEF"],
            ["https://cdn.example.com/p/1.jpg?w=800&token=***&v=1690000000"],
        ),
        (
            "https://alice:hunter2@images.example.com/a.png",
            ["hunter2"],
            ["https://alice:***@images.example.com/a.png"],
        ),
        (
            "https://ghp_16C7e42F292c6912E7710c838347Ae178B4a@host.example/x.jpg",
            ["ghp_16C7e42F292c6912E7710c838347Ae178B4a"],
            ["https://***@host.example/x.jpg"],
        ),
        (
            "https://storage.googleapis.com/b/o.jpg?GoogleAccessId=svc%40p.iam&Expires=1"
            "&Signature=Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA%3D%3D",
            ["Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA"],
            ["Expires=1"],
        ),
        (
            "https://d111.cloudfront.net/i.jpg?Policy=eyJTdGF0ZW1lbnQiOlt7&Key-Pair-Id=APKA9ONS7Q",
            ["eyJTdGF0ZW1lbnQiOlt7", "APKA9ONS7Q"],
            ["Policy=***", "Key-Pair-Id=***"],
        ),
        (
            "https://img.example.com/a.jpg?sessionId=42&accessToken=x1&api_key=k&sig=s#access_token=t0k",
            ["=42", "=x1", "=k&", "=s#", "=t0k"],
            ["sessionId=***", "#access_token=***"],
        ),
        (
            "https://img.example.com/a.jpg?id=f2a1c9e07b3d4e5f8a6b7c8d9e0f1a2b",
            ["f2a1c9e07b3d4e5f8a6b7c8d9e0f1a2b"],
            ["?id=***"],
        ),
        (
            "postgresql+psycopg://app:pw1@db.internal:5432/prod?password=pw2&sslmode=require",
            ["pw1", "pw2"],
            ["postgresql+psycopg://app:***@db.internal:5432/prod?password=***&sslmode=require"],
        ),
        (
            "postgresql://app:pa/ss?w#rd@db.internal/prod",  # raw / ? # (SQLAlchemy allows)
            ["pa/ss", "w#rd"],
            ["postgresql://app:***@db.internal/prod"],
        ),
    ],
)
def test_redact_url_masks_userinfo_and_token_values(
    url: str, secrets: list[str], kept: list[str]
) -> None:
    shown = redact_url(url)
    for secret in secrets:
        assert secret not in shown, shown
    for part in kept:
        assert part in shown, shown


def test_redact_url_leaves_ordinary_image_urls_alone() -> None:
    for url in (
        "https://cdn.shopify.com/s/files/1/0/products/a.jpg?v=1690000000",
        "https://img.example.com/a.jpg?w=800&h=600&fit=crop&color=red",
        "http://127.0.0.2:8080/img/ab1.jpg",
        "https://example.com/path@with-at/x.jpg",
        "not a url at all",
        "",
    ):
        assert redact_url(url) == url


def test_redact_url_never_raises_on_malformed_urls() -> None:
    for url in ("http://[::1", "http://a:b@[zz/?token=secret123", "://@?&=#", "http://@@@/"):
        shown = redact_url(url)
        assert "secret123" not in shown


def test_redact_text_finds_urls_inside_messages() -> None:
    text = (
        "S3 endpoint https://AKIAKEY:wJalrXUtnFEMI@s3.local:9000/ for bucket 'b' is "
        f"unreachable; also fetched '{PRESIGNED}' (done)"
    )
    shown = redact_text(text)
    assert "wJalrXUtnFEMI" not in shown and SIGNATURE not in shown
    assert "https://AKIAKEY:***@s3.local:9000/" in shown
    assert shown.endswith("(done)")


def test_secret_names_and_random_values() -> None:
    for name in ("password", "X-Amz-Signature", "x-amz-date", "apiKey", "key", "sig", "token"):
        assert is_secret_name(name), name
    for name in ("w", "width", "v", "format", "keyword", "monkey", "color"):
        assert not is_secret_name(name), name
    assert looks_random("a1b2c3d4e5f6a7b8c9d0e1f2")
    assert not looks_random("1690000000169000000016900")  # digits only: a version stamp
    assert not looks_random("red-summer-shoes-front-view")  # words, no digits


# ---------------------------------------------------------------- the settings shown


def test_masked_settings_hide_query_passwords_and_endpoint_credentials() -> None:
    settings = load_settings(
        database_url=f"postgresql+psycopg://app@db.internal/prod?password={PASSWORD}",
        aws_s3_endpoint_url="https://AKIAKEY:wJalrXUtnFEMI@s3.local:9000/",
    )
    shown = " ".join(str(value) for value in settings.masked().values())
    assert PASSWORD not in shown
    assert "wJalrXUtnFEMI" not in shown
    assert "postgresql+psycopg://app@db.internal/prod?password=***" in shown
    assert "https://AKIAKEY:***@s3.local:9000/" in shown


def _check(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "downloader", "check"],
        cwd=ROOT,
        env={**os.environ, "MEDIA_ROOT": str(tmp_path / "media"), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.postgres
def test_check_output_masks_a_query_password_in_database_url(tmp_path: Path, pg_url: str) -> None:
    """`check` prints the effective settings masked, like the system page."""
    url = pg_url.replace("postgresql://", "postgresql+psycopg://") + f"?password={PASSWORD}"
    done = _check(tmp_path, DATABASE_URL=url)
    output = done.stdout + done.stderr
    assert PASSWORD not in output, output
    assert "password=***" in output, output  # the setting is shown, masked
    assert json.loads(done.stdout.strip().splitlines()[-1])["checks"]["Database"]["ok"] is True


def test_check_output_masks_credentials_in_the_s3_endpoint_url(tmp_path: Path) -> None:
    """An S3 endpoint nobody listens on (loopback): the failing Storage line names the
    endpoint, without its credentials."""
    endpoint = f"http://AKIAKEY:wJalrXUtnFEMIsecret@127.0.0.1:{closed_port()}/"
    done = _check(
        tmp_path,
        DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}",
        MEDIA_BACKEND="s3",
        AWS_STORAGE_BUCKET_NAME="images",
        AWS_ACCESS_KEY_ID="AKIAKEY",
        AWS_SECRET_ACCESS_KEY="wJalrXUtnFEMIsecret",
        AWS_S3_ENDPOINT_URL=endpoint,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "wJalrXUtnFEMIsecret" not in output, output
    assert "AKIAKEY:***@127.0.0.1" in output, output


# ---------------------------------------------------------------- command lines


def _command_lines(pid: int) -> list[str]:
    """The command lines of `pid` and all its descendants (read from /proc)."""
    seen: list[str] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            seen.append(Path(f"/proc/{current}/cmdline").read_bytes().replace(b"\0", b" ").decode())
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                pending.extend(int(child) for child in children)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return seen


@pytest.mark.postgres
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
def test_run_never_puts_the_database_password_on_a_command_line(
    tmp_path: Path, pg_url: str, image_server: ImageServer
) -> None:
    """`run -` (standard input: the parse-then-re-exec path, with a helper process) against
    PostgreSQL with a password in DATABASE_URL: no process of the run shows it in its
    /proc/<pid>/cmdline, which every user of the machine can read."""

    def slow_image(req: Req) -> Reply:
        time.sleep(0.02)
        return Reply.image(f"slow-{req.param('id')}", "jpg")

    image_server.add_route(r"^/slow-img/(?P<id>\d+)\.jpg$", slow_image)
    rows = "".join(
        f"P{i // 4},{image_server.url(f'/slow-img/{i}.jpg', host=i % 3)}\n" for i in range(900)
    )
    url = pg_url.replace("postgresql://postgres@", f"postgresql+psycopg://postgres:{PASSWORD}@")
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "MEDIA_ROOT": str(tmp_path / "media"),
        "ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8",
        "DOWNLOAD_QPS": "0",
        "BACKOFF_BASE": "0.05",
    }
    source = tmp_path / "input.csv"
    source.write_text("Product Number,Image URL\n" + rows)
    with source.open("rb") as stdin:
        process = subprocess.Popen(
            [sys.executable, "-m", "downloader", "run", "-", "--processes", "2", "--quiet"],
            cwd=ROOT,
            env=env,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    lines: set[str] = set()
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        lines.update(_command_lines(process.pid))
        time.sleep(0.02)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert json.loads(stdout.strip().splitlines()[-1])["done"] == 900
    assert any(" run --job " in line for line in lines), lines  # the re-executed run was seen
    assert any(" worker " in line for line in lines), lines  # and its helper
    leaked = [line for line in lines if PASSWORD in line]
    assert not leaked, leaked


# ---------------------------------------------------------------- logs


@pytest.mark.parametrize(
    "logger_name", ["downloader.fetch.fetcher", "downloader.engine", "downloader.services"]
)
def test_engine_log_lines_redact_urls(logger_name: str) -> None:
    """What the engine's loggers print (message and traceback) has its URLs redacted."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    __import__(logger_name)
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        try:
            raise ValueError(f"bad answer from {PRESIGNED}")
        except ValueError:
            logger.exception("unexpected error fetching %s", "https://u:hunter2@h.example/a.jpg")
    finally:
        logger.removeHandler(handler)
    printed = stream.getvalue()
    assert "unexpected error fetching https://u:***@h.example/a.jpg" in printed
    assert "ValueError: bad answer from https://bucket.s3.amazonaws.com/img/a.jpg?" in printed
    assert "hunter2" not in printed and SIGNATURE not in printed


# ---------------------------------------------------------------- the image


def _ignored(patterns: list[str], path: str) -> bool:
    """Docker's rule for a path: the last matching pattern wins (`!` re-includes)."""
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        if fnmatch.fnmatchcase(path, body) or fnmatch.fnmatchcase(path, f"**/{body}"):
            ignored = not negated
    return ignored


@pytest.mark.parametrize(
    "path", [".env", ".env.local", ".env.production", ".streamlit/secrets.toml"]
)
def test_secret_files_stay_out_of_the_docker_build_context(path: str) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert _ignored(patterns, path), f"{path} would be sent to the Docker build context"
    assert not _ignored(patterns, ".streamlit/config.toml")  # the image needs this one
