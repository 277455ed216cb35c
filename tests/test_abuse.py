"""Bad input and abuse: the job rate limit, the row and upload limits, spreadsheet formulas
in exported CSVs, and URLs built to escape the media folder or a ZIP.

Real parts: a SQLite file, the local media folder, the engine in-process (or the CLI as a
subprocess), and the loopback image server.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import time
import tomllib
import uuid
import zipfile
import zlib
from pathlib import Path

import anyio
import pytest
from sqlalchemy import update

from downloader import jobs, queue
from downloader.csvsafe import UNSAFE_FIRST_CHARACTERS
from downloader.engine import Engine
from downloader.inputs import InputError, parse_path, parse_text
from downloader.models import ImageStatus, Job
from downloader.services import Services
from downloader.settings import Settings, SettingsError, load_settings
from tests.support.imageserver import ImageServer, Reply, Req, image_bytes
from tests.test_cli import Cli, write_input
from tests.test_crash import ROOT, in_process_services


def run_engine(services: Services, job_id: str) -> None:
    engine = Engine(services.db, services.storage, services.settings, job_id=job_id, share=1.0)
    anyio.run(lambda: engine.run(until_idle=True))


def read_csv(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"))))


def assert_excel_safe(rows: list[list[str]], what: str) -> None:
    for row in rows:
        for cell in row:
            assert cell[:1] not in UNSAFE_FIRST_CHARACTERS, (
                f"{what}: {cell!r} could run as a formula"
            )


# ---------------------------------------------------------------- rate limit


def test_job_rate_limit_refuses_the_n_plus_first_job_of_a_session_within_a_minute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings.model_fields["job_rate_limit_per_minute"].default == 10
    monkeypatch.setenv("JOB_RATE_LIMIT_PER_MINUTE", "3")
    assert load_settings().job_rate_limit_per_minute == 3
    services = in_process_services(tmp_path)
    db, limit = services.db, 3
    parsed = parse_text("P1\thttp://127.0.0.2/img/a.jpg")

    def create(session: str) -> str:
        jobs.check_rate_limit(db, session, limit)
        return jobs.create_job(db, parsed, created_by=session).id

    first = [create("session-a") for _ in range(limit)]
    with pytest.raises(jobs.RateLimited, match=r"3 jobs in the last minute \(limit 3\)"):
        create("session-a")
    create("session-b")  # another session has its own budget
    jobs.check_rate_limit(db, "session-a", 0)  # 0 = off
    jobs.check_rate_limit(db, "", limit)  # no identity (the CLI): not limited here
    assert len(jobs.list_jobs(db)) == limit + 1  # the refused job was not created

    # a minute later the session may create jobs again
    with db.write() as session:
        session.execute(
            update(Job).where(Job.id.in_(first)).values(created_at=time.time() - 61)  # type: ignore[attr-defined]
        )
    create("session-a")


# ---------------------------------------------------------------- row and upload limits


def test_a_csv_over_max_rows_per_job_is_refused_by_submit_with_exit_2(tmp_path: Path) -> None:
    rows = [(f"P{i}", f"http://127.0.0.2/img/{i}.jpg") for i in range(6)]
    src = write_input(tmp_path / "in.csv", rows)
    cli = Cli(tmp_path)
    result = cli("submit", str(src), MAX_ROWS_PER_JOB="5")
    assert result.returncode == 2, result
    assert result.stderr.strip().startswith("error:")
    assert "at most 5" in result.stderr and "Split it into smaller jobs" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert cli.sql("SELECT count(*) FROM job") == [(0,)]
    # exactly at the limit is fine (checked in-process: same parser, same limit)
    src.write_text(src.read_text().rsplit("P5,", 1)[0])
    assert len(parse_path(src, max_rows=5).frame) == 5
    with pytest.raises(InputError, match="at most 4"):
        parse_path(src, max_rows=4)


def test_the_streamlit_upload_limit_matches_max_upload_mb() -> None:
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    default = Settings.model_fields["max_upload_mb"].default
    assert config["server"]["maxUploadSize"] == default == 200
    settings_doc = (ROOT / "docs" / "configuration.md").read_text()
    assert re.search(rf"\|\s*`MAX_UPLOAD_MB`\s*\|\s*`{default}`\s*\|", settings_doc)


def test_an_invalid_allowed_private_networks_stops_the_program_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALLOWED_PRIVATE_NETWORKS", "127.0.0.0/8, everything")
    with pytest.raises(SettingsError, match=r"ALLOWED_PRIVATE_NETWORKS.*'everything'"):
        load_settings()
    monkeypatch.setenv("ALLOWED_PRIVATE_NETWORKS", " 127.0.0.0/8 , 10.1.0.0/16 ")
    assert load_settings().allowed_private_networks == ["127.0.0.0/8", "10.1.0.0/16"]


def test_a_rejected_row_does_not_stop_duplicate_urls_from_being_removed() -> None:
    # Regression: a rejected row's URL used to hide a repeated URL from duplicate removal.
    parsed = parse_text(
        "Product,URL\nA,http://h/a.jpg\nA,http://h/b.jpg\nA,http://h/b.jpg\nbad\x07sku,http://h/x.jpg\n"
    )
    assert list(parsed.frame["url"]) == ["http://h/a.jpg", "http://h/b.jpg"]
    assert [(r.row, r.reason) for r in parsed.duplicates] == [
        (4, "Duplicate URL (same as in row 3)")
    ]
    assert [r.row for r in parsed.rejected] == [5]


# ---------------------------------------------------------------- CSV injection


def test_exported_csvs_neutralise_formula_cells_end_to_end(
    tmp_path: Path, image_server: ImageServer
) -> None:
    s = image_server
    injected = s.url("/status/404?x==cmd|' /C calc'!A0")
    src = tmp_path / "in.csv"
    src.write_text(
        "Product Number,Image URL\n"
        f"P1,{injected}\n"
        f"-5,{s.url('/img/a.jpg')}\n"
        f"-5,{s.url('/same/1', host=1)}\n"
        f"-5,{s.url('/same/2', host=2)}\n"  # same bytes: a duplicate of -5_2.jpg
        f"-2,{s.url('/status/500')}\n"  # a server error, retried, then failed
    )
    services = in_process_services(tmp_path)
    parsed = parse_path(src, max_rows=100)
    job = jobs.create_job(services.db, parsed)
    run_engine(services, job.id)
    counts = jobs.job_counts(services.db, job.id)
    assert (counts.done, counts.duplicate, counts.failed) == (2, 1, 2)

    archive = zipfile.ZipFile(
        io.BytesIO(b"".join(jobs.job_zip(services.db, services.storage, job.id)))
    )
    manifest = read_csv(archive.read("manifest.csv"))
    product_zip = zipfile.ZipFile(
        io.BytesIO(jobs.product_zip_bytes(services.db, services.storage, job.id, "-5"))
    )
    failed = read_csv(b"".join(jobs.failed_csv(services.db, job.id)))
    exports = {
        "manifest.csv in the master ZIP": manifest,
        "manifest.csv in a product ZIP": read_csv(product_zip.read("manifest.csv")),
        "manifest.csv": read_csv(b"".join(jobs.manifest_csv(services.db, job.id))),
        "failed rows": failed,
    }
    for what, rows in exports.items():
        assert_excel_safe(rows, what)

    header = manifest[0]
    by_product = {(r[0], r[1]): dict(zip(header, r, strict=True)) for r in manifest[1:]}
    assert set(by_product) == {("P1", "1"), ("'-5", "1"), ("'-5", "2"), ("'-5", "3"), ("'-2", "1")}
    assert by_product[("'-5", "1")]["file"] == "'-5_1.jpg"
    assert by_product[("'-5", "3")]["duplicate_of"] == "'-5_2.jpg"
    assert by_product[("P1", "1")]["source_url"].startswith(f"http://{s.host(0)}/status/404?x==cmd")
    assert "http_500" in by_product[("'-2", "1")]["error"]
    # the ZIP entries keep the real names; only CSV cells are quoted
    assert sorted(archive.namelist()) == ["-5/-5_1.jpg", "-5/-5_2.jpg", "manifest.csv"]
    assert by_product[("'-5", "1")]["sha256"] == hashlib.sha256(image_bytes("a", "jpg")).hexdigest()

    failed_header = failed[0]
    failed_rows = [dict(zip(failed_header, r, strict=True)) for r in failed[1:]]
    assert [(r["product"], r["error_code"], r["http_status"]) for r in failed_rows] == [
        ("P1", "http_404", "404"),
        ("'-2", "http_500", "500"),
    ]
    assert failed_rows[0]["url"] == parsed.frame["url"].iloc[0]  # the URL itself is unchanged
    assert failed_rows[1]["attempts"] == str(services.settings.max_retries + 1)


def test_rejected_input_cells_that_look_like_formulas_are_neutralised(tmp_path: Path) -> None:
    """A rejected row keeps the user's raw cells: its CSV (the only export of them, since
    st.dataframe's own CSV download is switched off) quotes every formula-like cell, and
    holds every row, past the 1,000 the page shows."""
    services = in_process_services(tmp_path)
    hostile = ['=HYPERLINK("http://x")', "+1+1", "@SUM(A1)", "=cmd|' /C calc'!A0"]
    lines = ["Product Number\tImage URL"]
    # Formula-like product numbers are valid ones (kept as typed, issue 23): these rows are
    # rejected for their URL, and the rejected-rows CSV still shows the product cells safely.
    lines += [f"{cell}\tnot-a-url-{i}" for i, cell in enumerate(hostile)]
    lines += [f'P{i}\t=IMAGE("http://x/{i}")' for i in range(1_001)]
    lines.append("OK-1\thttp://127.0.0.2/img/ok.jpg")
    job = jobs.create_job(services.db, parse_text("\n".join(lines), max_rows=2_000))
    assert job.images == 1
    assert job.rejected_rows == len(hostile) + 1_001
    rows = read_csv(b"".join(jobs.rejected_csv(services.db, job.id)))
    assert rows[0] == list(jobs.REJECTED_COLUMNS)
    assert len(rows) == 1 + len(hostile) + 1_001
    assert_excel_safe(rows, "rejected rows")
    products = [row[3] for row in rows[1:]]
    assert products[: len(hostile)] == ["'" + cell for cell in hostile]
    assert rows[-1][4] == '\'=IMAGE("http://x/1000")'
    assert len(jobs.rejected_rows(services.db, job.id)) == 1_000  # what the page shows


def test_failed_and_rejected_csvs_stream_every_row_once_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both CSVs read the database a batch at a time (a job may have a million such rows):
    with batches of 7 for 40 failed images and 40 rejected rows, every row still comes out,
    in order, once."""
    from downloader.jobs import details

    monkeypatch.setattr(details, "STREAM_BATCH", 7)
    services = in_process_services(tmp_path)
    lines = [f"P{i:02d}\thttp://127.0.0.2/img/{i}.jpg" for i in range(40)]
    lines += [f"R{i:02d}\tnot-a-url-{i}" for i in range(40)]
    job = jobs.create_job(services.db, parse_text("\n".join(lines), max_rows=100))
    claims = queue.claim(services.db, "test-worker", 100, 30, job_id=job.id)
    assert len(claims) == 40
    failures = [
        queue.Result(image_id=c.image_id, status=ImageStatus.FAILED, attempts=1, error_code="x")
        for c in claims
    ]
    queue.record_results(services.db, "test-worker", failures)

    failed = read_csv(b"".join(jobs.failed_csv(services.db, job.id)))
    assert [row[0] for row in failed[1:]] == [f"P{i:02d}" for i in range(40)]
    rejected = read_csv(b"".join(jobs.rejected_csv(services.db, job.id)))
    assert [row[3] for row in rejected[1:]] == [f"R{i:02d}" for i in range(40)]
    assert len(jobs.rejected_rows(services.db, job.id, limit=10)) == 10


def test_the_app_switches_off_streamlits_own_table_export() -> None:
    """st.dataframe's "Download as CSV" and copy would hand the raw cells above to Excel."""
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["client"]["disableDataExport"] is True


def test_error_texts_that_look_like_formulas_are_neutralised_in_every_export(
    tmp_path: Path,
) -> None:
    """Defence in depth: whatever text ends up in an image's error (a message quoting a
    hostile server, say), the CSVs never start a cell with a formula character."""
    services = in_process_services(tmp_path)
    hostile = ['=HYPERLINK("http://x")', "+1+1", "-1-1", "@SUM(A1)", "\tTAB", "\rCR"]
    text = "\n".join(f"P{i}\thttp://127.0.0.2/img/{i}.jpg" for i in range(len(hostile)))
    job = jobs.create_job(services.db, parse_text(text))
    claims = queue.claim(services.db, "test-worker", 100, 30, job_id=job.id)
    results = [
        queue.Result(
            image_id=c.image_id,
            status=ImageStatus.FAILED,
            attempts=1,
            error_code=hostile[i],
            error=hostile[i],
            http_status=500,
        )
        for i, c in enumerate(claims)
    ]
    queue.record_results(services.db, "test-worker", results)
    assert jobs.job_counts(services.db, job.id).failed == len(hostile)
    manifest = read_csv(b"".join(jobs.manifest_csv(services.db, job.id)))
    failed = read_csv(b"".join(jobs.failed_csv(services.db, job.id)))
    zipped = zipfile.ZipFile(
        io.BytesIO(b"".join(jobs.job_zip(services.db, services.storage, job.id)))
    )
    for what, rows in (
        ("manifest", manifest),
        ("failed rows", failed),
        ("ZIP manifest", read_csv(zipped.read("manifest.csv"))),
    ):
        assert_excel_safe(rows, what)
    assert sorted(r[4] for r in failed[1:]) == sorted("'" + h for h in hostile)


# ---------------------------------------------------------------- names from URLs


def test_zip_entry_names_and_storage_keys_are_generated_never_taken_from_the_url(
    tmp_path: Path, image_server: ImageServer
) -> None:
    s = image_server
    token = f"pwned-{uuid.uuid4().hex[:8]}"

    def anything(req: Req) -> Reply:
        # a PNG (whatever the URL's extension says), unique per path and query
        name = f"evil-{zlib.crc32(repr((req.path, sorted(req.query.items()))).encode())}"
        return Reply(body=image_bytes(name, "png"), content_type="image/jpeg")

    s.add_route(r".*", anything)
    hostile_paths = [
        f"/../../../../../../tmp/{token}.jpg",
        f"/..%2f..%2f..%2f..%2ftmp%2f{token}.jpg",
        f"/%2e%2e/%2e%2e/%2e%2e/%2e%2e/tmp/{token}.jpg",
        f"/img/%2e%2e%5c%2e%2e%5c{token}.exe",
        f"//tmp/{token}.jpg",
        f"/C:\\Windows\\System32\\{token}.jpg",
        f"/img/..\\..\\{token}.jpg",
        f"/a.jpg?name=../../../../tmp/{token}.jpg",
        f"/%00{token}.jpg",
        f"/.{token}",
        "/" + "n" * 1900 + ".jpg",
    ]
    lines = ["Product Number\tImage URL"]
    lines += [f"P{i}\t{s.url(p)}" for i, p in enumerate(hostile_paths)]
    lines += [f"Q\t{s.url(p, host=1)}" for p in hostile_paths[:4]]  # several in one product
    services = in_process_services(tmp_path)
    parsed = parse_text("\n".join(lines))
    assert not parsed.rejected and len(parsed.frame) == len(hostile_paths) + 4
    job = jobs.create_job(services.db, parsed)
    run_engine(services, job.id)
    counts = jobs.job_counts(services.db, job.id)
    assert counts.done == len(parsed.frame), jobs.error_summary(services.db, job.id)

    media = tmp_path / "media"
    key_re = re.compile(rf"^jobs/{job.id}/\d+/[1-9]\d*\.png$")
    keys = [r.key for r in jobs.manifest_rows(services.db, job.id)]
    assert keys and all(key and key_re.match(key) for key in keys), keys
    stored = sorted(p.relative_to(media).as_posix() for p in media.rglob("*") if p.is_file())
    assert stored == sorted(str(k) for k in keys), "files only at the generated keys"
    assert not any(token in p.name for p in tmp_path.rglob("*"))
    assert not (Path("/tmp") / f"{token}.jpg").exists() and not list(ROOT.glob(f"*{token}*"))

    expected = {f"P{i}/P{i}_1.png" for i in range(len(hostile_paths))} | {
        f"Q/Q_{i}.png" for i in range(1, 5)
    }
    master = zipfile.ZipFile(
        io.BytesIO(b"".join(jobs.job_zip(services.db, services.storage, job.id)))
    )
    assert set(master.namelist()) == expected | {"manifest.csv"}
    product = zipfile.ZipFile(
        io.BytesIO(jobs.product_zip_bytes(services.db, services.storage, job.id, "Q"))
    )
    assert set(product.namelist()) == {f"Q_{i}.png" for i in range(1, 5)} | {"manifest.csv"}
    for name in master.namelist():
        assert ".." not in name and "\\" not in name and not name.startswith("/") and len(name) < 64
        if name != "manifest.csv":
            assert master.read(name)[:8] == b"\x89PNG\r\n\x1a\n"
    out = tmp_path / "extracted"
    master.extractall(out)
    assert all(p.resolve().is_relative_to(out.resolve()) for p in out.rglob("*"))
    manifest = list(csv.DictReader(io.StringIO(master.read("manifest.csv").decode())))
    assert {f"{r['product']}/{r['file']}" for r in manifest} == expected
    long_row = next(r for r in manifest if r["product"] == f"P{len(hostile_paths) - 1}")
    assert (
        long_row["source_url"].endswith("n" * 1900 + ".jpg")
        and long_row["file"] == long_row["product"] + "_1.png"
    )
