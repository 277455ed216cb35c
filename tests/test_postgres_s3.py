"""The scaled-out stack in one process: the engine on PostgreSQL with S3 (moto's server
mode over HTTP) for files -- uploads leave no local copy, big images go multipart, and the
ZIPs streamed from the S3 objects match the manifest."""

from __future__ import annotations

import csv
import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any

import anyio
import pytest

from downloader import jobs
from downloader.db import Database
from downloader.engine import Engine
from downloader.inputs import parse_text
from downloader.settings import load_settings
from downloader.storage import make_storage
from downloader.storage.s3 import MIN_PART_SIZE
from tests.support.imageserver import ImageServer, image_bytes
from tests.test_cli import Cli, last_json, write_input

pytestmark = pytest.mark.postgres


def test_engine_on_postgres_and_s3(
    pg_url: str,
    pg_db: Database,
    image_server: ImageServer,
    s3_overrides: dict[str, Any],
    s3_client: Any,
    tmp_path: Path,
) -> None:
    s = image_server
    rows = ["SKU\tImage Src"]
    for p in range(6):
        for i in range(5):
            rows.append(f"P{p}\t{s.url(f'/img/p{p}-{i}.jpg', host=(p + i) % 3)}")
    rows.append(f"BIG\t{s.url('/img/big.png?w=1400&h=1400')}")  # ~5.9 MB: multipart upload
    rows.append(f"P0\t{s.url('/same/a')}")
    rows.append(f"P0\t{s.url('/same/b', host=1)}")  # same bytes: a duplicate, its object removed
    rows.append(f"P1\t{s.url('/status/404')}")
    settings = load_settings(
        **s3_overrides,
        database_url=pg_url,
        allowed_private_networks=["127.0.0.0/8"],
        download_qps=0,
        backoff_base=0.05,
    )
    storage = make_storage(settings, multipart_threshold=MIN_PART_SIZE)
    job = jobs.create_job(pg_db, parse_text("\n".join(rows)))
    engine = Engine(pg_db, storage, settings, kind="run", job_id=job.id, share=1.0)
    anyio.run(lambda: engine.run(until_idle=True))

    summary = jobs.job_summary(pg_db, job.id)
    assert summary.job.status == "completed"
    assert summary.counts.as_dict() == {
        "queued": 0,
        "downloading": 0,
        "done": 32,
        "duplicate": 1,
        "failed": 1,
        "skipped": 0,
    }
    bucket = s3_overrides["aws_storage_bucket_name"]
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=f"jobs/{job.id}/")
    keys = sorted(item["Key"] for item in listed.get("Contents", []))
    manifest = list(jobs.manifest_rows(pg_db, job.id))
    assert keys == sorted(r.key for r in manifest if r.key)  # the done images, nothing else
    big = next(r for r in manifest if r.product == "BIG")
    assert big.bytes is not None and big.bytes > MIN_PART_SIZE
    assert s3_client.head_object(Bucket=bucket, Key=big.key)["ETag"].strip('"').endswith("-2")
    # nothing left in the local temp directory
    assert not [p for p in storage.temp_dir().iterdir() if p.is_file()]

    archive = zipfile.ZipFile(io.BytesIO(b"".join(jobs.job_zip(pg_db, storage, job.id))))
    listed_rows = list(
        csv.DictReader(io.StringIO(archive.read("manifest.csv").decode("utf-8-sig")))
    )
    assert len(listed_rows) == 34
    files = [r for r in listed_rows if r["status"] == "done"]
    assert sorted(archive.namelist()) == sorted(
        ["manifest.csv", *(f"{r['product']}/{r['file']}" for r in files)]
    )
    for row in files:
        data = archive.read(f"{row['product']}/{row['file']}")
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
    assert archive.read("P3/P3_2.jpg") == image_bytes("p3-1")
    assert archive.read("BIG/BIG_1.png") == image_bytes("big", "png", 1400, 1400)

    product = zipfile.ZipFile(io.BytesIO(b"".join(jobs.product_zip(pg_db, storage, job.id, "P0"))))
    assert sorted(product.namelist()) == sorted(
        ["manifest.csv", *(f"P0_{i}.jpg" for i in range(1, 7))]  # P0_7 is the duplicate
    )


def test_a_failed_upload_leaves_no_local_copy(
    pg_url: str, pg_db: Database, image_server: ImageServer, s3_overrides: dict[str, Any]
) -> None:
    settings = load_settings(
        **{
            **s3_overrides,
            "aws_storage_bucket_name": f"{s3_overrides['aws_storage_bucket_name']}-gone",
        },
        database_url=pg_url,
        allowed_private_networks=["127.0.0.0/8"],
        download_qps=0,
    )
    storage = make_storage(settings)
    job = jobs.create_job(pg_db, parse_text(f"P\t{image_server.url('/img/lost.jpg')}"))
    engine = Engine(pg_db, storage, settings, kind="run", job_id=job.id, share=1.0)
    anyio.run(lambda: engine.run(until_idle=True))
    (row,) = jobs.manifest_rows(pg_db, job.id)
    assert row.status == "failed"  # the bucket does not exist
    assert image_server.count("/img/lost.jpg") == 1
    assert not [p for p in storage.temp_dir().iterdir() if p.is_file()]


def test_run_on_postgres_and_s3_forks_a_helper_with_its_own_connections(
    pg_url: str,
    pg_db: Database,
    image_server: ImageServer,
    s3_overrides: dict[str, Any],
    s3_client: Any,
    tmp_path: Path,
) -> None:
    """`run` on a small input forks its helper engine: the fork opens its own database
    connections and its own S3 client (sharing the parent's would mix two conversations on
    one socket), and every image is stored once."""
    total = 450  # above the 400 images that make a second process (the fork) worth it
    src = write_input(
        tmp_path / "in.csv",
        [(f"P{i // 5}", image_server.url(f"/img/f{i}.jpg", host=i % 3)) for i in range(total)],
    )
    cli = Cli(tmp_path)
    env = {key.upper(): str(value) for key, value in s3_overrides.items()}
    result = cli("run", str(src), "--processes", "2", "--quiet", DATABASE_URL=pg_url, **env)
    assert result.returncode == 0, result.stderr
    summary = last_json(result.stdout)
    assert summary["done"] == total and summary["failed"] == 0
    assert "Traceback" not in result.stderr
    job_id = str(summary["job_id"])
    assert jobs.job_summary(pg_db, job_id).counts.done == total
    bucket = s3_overrides["aws_storage_bucket_name"]
    keys: list[str] = []
    for page in s3_client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"jobs/{job_id}/"
    ):
        keys += [item["Key"] for item in page.get("Contents", [])]
    assert len(keys) == total
