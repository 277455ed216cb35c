"""A job's own request headers end to end (issue 20): `python -m downloader run` and `submit`
against a hotlink-protected loopback server, a cookie for one host only, "any format the CDN
prefers", and the secret value nowhere it must not be.

Real parts: the loopback image server on 127.0.0.2-4 (it records every request's headers),
`python -m downloader` as subprocesses, SQLite files, the media folder.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from urllib.parse import quote

import pytest

from downloader import jobs
from downloader.db import Database
from downloader.request_headers import ANY_FORMAT_ACCEPT
from tests.support.imageserver import ImageServer, Reply, Req, image_server

__all__ = ["image_server"]

ROOT = Path(__file__).resolve().parents[1]
REFERER = "https://shop.example/"
SECRET = "S3CR3T-c00kie-4242"
COOKIE = f"sid={SECRET}"


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}",
        "MEDIA_ROOT": str(tmp_path / "media"),
        "ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8",
        "DOWNLOAD_QPS": "0",
        "BACKOFF_BASE": "0.05",
        "MAX_RETRIES": "1",
    }


def _cli(
    tmp_path: Path, *args: str, stdin: bytes | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "downloader", *args],
        cwd=ROOT,
        env=_env(tmp_path),
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _hotlink_protected(server: ImageServer) -> None:
    """/hotlink/<id>.jpg: 403 unless the request says it comes from the shop's page."""

    def hotlink(req: Req) -> Reply:
        if req.record.headers.get("referer") != REFERER:
            return Reply.text(403, "hotlinking is not allowed")
        return Reply.image(f"hotlink-{req.param('id')}", "jpg")

    server.add_route(r"^/hotlink/(?P<id>\w+)\.jpg$", hotlink)


def _last_json(out: str) -> dict[str, object]:
    return dict(json.loads(out.strip().splitlines()[-1]))


def _input(tmp_path: Path, rows: list[tuple[str, str]], name: str = "input.csv") -> Path:
    path = tmp_path / name
    path.write_text("Product Number,Image URL\n" + "".join(f"{p},{u}\n" for p, u in rows))
    return path


def test_run_with_the_shops_referer_downloads_hotlink_protected_images(
    tmp_path: Path, image_server: ImageServer
) -> None:
    _hotlink_protected(image_server)
    rows = [(f"P{i}", image_server.url(f"/hotlink/{i}.jpg", host=i % 3)) for i in range(6)]
    source = _input(tmp_path, rows)

    refused = _cli(tmp_path, "run", str(source), "--quiet")
    assert refused.returncode == 0, refused.stderr
    assert _last_json(refused.stdout)["failed"] == 6
    db = Database(f"sqlite:///{tmp_path / 'app.db'}")
    job_id = str(_last_json(refused.stdout)["job_id"])
    failed = list(
        csv.DictReader(io.StringIO(b"".join(jobs.failed_csv(db, job_id)).decode("utf-8-sig")))
    )
    assert {row["error_code"] for row in failed} == {"http_403"}

    image_server.reset()
    allowed = _cli(tmp_path, "run", str(source), "--quiet", "--header", f"Referer: {REFERER}")
    assert allowed.returncode == 0, allowed.stderr
    result = _last_json(allowed.stdout)
    assert result["job_id"] != job_id  # the refused job had finished: this is a new one
    assert result["done"] == 6 and result["failed"] == 0
    assert {r.headers.get("referer") for r in image_server.requests} == {REFERER}


def test_a_cookie_for_one_host_reaches_that_host_only_and_is_shown_nowhere(
    tmp_path: Path, image_server: ImageServer
) -> None:
    """`--header-for 127.0.0.3:PORT "Cookie: …"`: only 127.0.0.3 sees it (127.0.0.2 and
    127.0.0.4 never do); the value is not in the output, manifest.csv or failed.csv."""
    target = image_server.host(1)  # 127.0.0.3:PORT
    rows = [(f"P{i}", image_server.url(f"/img/c{i}.jpg", host=i % 3)) for i in range(9)]
    rows.append(("P9", image_server.url("/status/404", host=1)))  # a failure on the cookie host
    # the cookie host redirects to another host: the cookie does not follow
    away = quote(image_server.url("/img/moved.jpg", host=2), safe="")
    rows.append(("P10", image_server.url(f"/redirect-to?url={away}", host=1)))
    source = _input(tmp_path, rows)
    done = _cli(
        tmp_path,
        "run",
        str(source),
        "--header",
        f"Referer: {REFERER}",
        "--header-for",
        target,
        f"Cookie: {COOKIE}",
    )
    assert done.returncode == 0, done.stderr
    result = _last_json(done.stdout)
    assert result["done"] == 10 and result["failed"] == 1
    assert image_server.count("/img/moved.jpg", host=2) == 1
    for record in image_server.requests:
        if record.host == target:
            assert record.headers.get("cookie") == COOKIE, record
        else:
            assert "cookie" not in record.headers, record
        assert record.headers.get("referer") == REFERER
    assert {r.host for r in image_server.requests} == set(image_server.hosts)

    job_id = str(result["job_id"])
    archive = tmp_path / "all.zip"
    zipped = _cli(tmp_path, "zip", job_id, "--out", str(archive))
    assert zipped.returncode == 0, zipped.stderr
    with zipfile.ZipFile(archive) as opened:
        manifest = opened.read("manifest.csv").decode("utf-8-sig")
    assert "404" in manifest
    db = Database(f"sqlite:///{tmp_path / 'app.db'}")
    failed = b"".join(jobs.failed_csv(db, job_id)).decode("utf-8-sig")
    standalone = b"".join(jobs.manifest_csv(db, job_id)).decode("utf-8-sig")
    status = _cli(tmp_path, "status", job_id)
    for text in (
        done.stdout,
        done.stderr,
        manifest,
        standalone,
        failed,
        status.stdout,
        status.stderr,
    ):
        assert SECRET not in text
    assert "http_404" in failed


def test_submit_stores_them_on_the_job_and_a_worker_uses_them(
    tmp_path: Path, image_server: ImageServer
) -> None:
    _hotlink_protected(image_server)
    rows = [(f"P{i}", image_server.url(f"/hotlink/s{i}.jpg", host=i % 3)) for i in range(4)]
    headers_file = tmp_path / "headers.txt"
    headers_file.write_text(
        f"# the shop\nReferer: {REFERER}\n{image_server.host(2)} | Cookie: {COOKIE}\n"
    )
    submitted = _cli(
        tmp_path, "submit", str(_input(tmp_path, rows)), "--headers-file", str(headers_file)
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = str(_last_json(submitted.stdout)["job_id"])
    worked = _cli(tmp_path, "worker", "--until-idle")
    assert worked.returncode == 0, worked.stderr
    status = _last_json(_cli(tmp_path, "status", job_id).stdout)
    assert status["done"] == 4 and status["status"] == "completed"
    cookies = {r.host: r.headers.get("cookie") for r in image_server.requests}
    assert cookies == {
        image_server.host(0): None,
        image_server.host(1): None,
        image_server.host(2): COOKIE,
    }
    assert SECRET not in submitted.stdout + submitted.stderr + worked.stdout + worked.stderr


def test_run_resuming_a_job_keeps_its_headers_unless_it_gives_new_ones(
    tmp_path: Path, image_server: ImageServer
) -> None:
    """`submit` with the shop's Referer, no worker; `run` on the same input resumes that job
    and fetches with the stored Referer. Another job submitted without headers, then `run`
    with them: the run's headers replace the job's (none) for the rest of it."""
    _hotlink_protected(image_server)
    kept = _input(tmp_path, [("P1", image_server.url("/hotlink/k1.jpg"))], "kept.csv")
    submitted = _cli(tmp_path, "submit", str(kept), "--header", f"Referer: {REFERER}")
    assert submitted.returncode == 0, submitted.stderr
    resumed = _cli(tmp_path, "run", str(kept), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming unfinished job" in resumed.stderr
    assert _last_json(resumed.stdout)["job_id"] == _last_json(submitted.stdout)["job_id"]
    assert _last_json(resumed.stdout)["done"] == 1

    given = _input(tmp_path, [("P1", image_server.url("/hotlink/g1.jpg"))], "given.csv")
    assert _cli(tmp_path, "submit", str(given)).returncode == 0
    replaced = _cli(tmp_path, "run", str(given), "--quiet", "--header", f"Referer: {REFERER}")
    assert replaced.returncode == 0, replaced.stderr
    assert "request headers are replaced" in replaced.stderr
    assert _last_json(replaced.stdout)["done"] == 1


def test_any_format_asks_for_what_the_cdn_prefers(
    tmp_path: Path, image_server: ImageServer
) -> None:
    """A CDN that negotiates the format from Accept: with --any-format the job's requests carry
    the any-format Accept (and get WebP); without it they never do."""

    def negotiate(req: Req) -> Reply:
        accept = req.record.headers.get("accept", "")
        fmt = "webp" if accept.startswith("image/avif,image/webp") else "jpg"
        return Reply.image(f"neg-{req.param('id')}", fmt)

    image_server.add_route(r"^/negotiate/(?P<id>\w+)$", negotiate)
    source = _input(tmp_path, [("P1", image_server.url("/negotiate/a"))], "any.csv")
    done = _cli(tmp_path, "run", str(source), "--quiet", "--any-format")
    assert done.returncode == 0, done.stderr
    assert [r.headers.get("accept") for r in image_server.requests] == [ANY_FORMAT_ACCEPT]
    db = Database(f"sqlite:///{tmp_path / 'app.db'}")
    manifest = b"".join(jobs.manifest_csv(db, str(_last_json(done.stdout)["job_id"])))
    assert b",webp," in manifest

    image_server.reset()
    plain = _cli(
        tmp_path,
        "run",
        str(_input(tmp_path, [("P1", image_server.url("/negotiate/b"))])),
        "--quiet",
    )
    assert plain.returncode == 0, plain.stderr
    assert [r.headers.get("accept") for r in image_server.requests] != [ANY_FORMAT_ACCEPT]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--header", "Host: evil.example"], "error: --header 'Host: …': Host cannot be given"),
        (["--header", "X-A: a\r\nX-B: b"], "the value of X-A holds a line break"),
        (["--header", "Referer"], "expected 'Name: value'"),
        (["--header", "Bad Name: x"], "'Bad Name' is not a header name"),
        (["--header-for", "a.example/x", f"Cookie: {COOKIE}"], "'a.example/x' is not a host"),
        (["--header-for", "a.example", f"Proxy-Authorization: {SECRET}"], "for a proxy"),
        (["--headers-file", "/nonexistent/h.txt"], "--headers-file h.txt: cannot be read"),
    ],
)
@pytest.mark.parametrize("command", ["run", "submit"])
def test_a_bad_header_exits_2_with_a_message_and_queues_nothing(
    tmp_path: Path, command: str, args: list[str], message: str
) -> None:
    source = _input(tmp_path, [("P1", "http://127.0.0.2:9/a.jpg")])
    done = _cli(tmp_path, command, str(source), *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert SECRET not in done.stderr
    assert not (tmp_path / "app.db").exists() or not jobs.list_jobs(
        Database(f"sqlite:///{tmp_path / 'app.db'}")
    )


def _command_lines() -> list[str]:
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"downloader" in raw:
                lines.append(raw.replace(b"\0", b" ").decode(errors="replace"))
    return lines


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
def test_run_passes_them_through_the_database_never_on_a_command_line(
    tmp_path: Path, image_server: ImageServer
) -> None:
    """`run -` (the parse-then-re-exec path, with a helper process), headers from a file: no
    process of the run shows the cookie in its /proc/<pid>/cmdline (readable by every user),
    and the re-executed run and its helper send it."""

    def slow_image(req: Req) -> Reply:
        time.sleep(0.02)
        return Reply.image(f"slow-{req.param('id')}", "jpg")

    image_server.add_route(r"^/slow-img/(?P<id>\d+)\.jpg$", slow_image)
    rows = [(f"P{i // 4}", image_server.url(f"/slow-img/{i}.jpg", host=i % 3)) for i in range(900)]
    source = _input(tmp_path, rows)
    headers_file = tmp_path / "headers.txt"
    headers_file.write_text(f"Cookie: {COOKIE}\n")
    with source.open("rb") as stdin:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "downloader",
                "run",
                "-",
                "--processes",
                "2",
                "--quiet",
                "--headers-file",
                str(headers_file),
            ],
            cwd=ROOT,
            env=_env(tmp_path),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    lines: set[str] = set()
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        lines.update(_command_lines())
        time.sleep(0.02)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert _last_json(stdout)["done"] == 900
    assert any(" run --job " in line for line in lines), lines  # the re-executed run was seen
    assert any(" worker " in line for line in lines), lines  # and its helper
    assert not [line for line in lines if SECRET in line]
    assert {r.headers.get("cookie") for r in image_server.requests} == {COOKIE}
    assert SECRET not in stdout + stderr
