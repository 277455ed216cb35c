"""Throughput and memory of `stream_zip` (not run by CI).

Generates N random files (default 10,000 x 200 KB) in a local media store, then writes the
master ZIP straight to a file through `stream_zip` and reports MB/s, files/s and peak RSS.
With --compare, also writes the same ZIP with the standard library's zipfile (ZIP_STORED)
as a baseline. With --backend s3 the files live in moto's S3 server on 127.0.0.1.

    .venv/bin/python benchmarks/bench_zip.py
    .venv/bin/python benchmarks/bench_zip.py --files 1000 --size-kb 1024 --compare
    .venv/bin/python benchmarks/bench_zip.py --backend s3 --files 2000

Files are kept in benchmarks/work/ (git-ignored) and reused by later runs with the same
--files/--size-kb; they are usually in the page cache, so local reads are warm.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from downloader.archive import stream_zip, zip_size
from downloader.manifest import ManifestRow, image_file_name
from downloader.storage import LocalStorage, S3Storage, Storage, image_key

WORK = Path(__file__).resolve().parent / "work"
PRODUCTS = 100  # files are spread over this many products


def rss_mb() -> float:
    """Current resident set size in MB (Linux)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # KiB on Linux


def make_rows(files: int, size: int, job: str) -> Iterator[ManifestRow]:
    for n in range(files):
        product = f"SKU-{n % PRODUCTS:04d}"
        position = n // PRODUCTS + 1
        yield ManifestRow(
            product=product,
            position=position,
            source_url=f"https://img.example.com/{product}/{position}.jpg",
            status="done",
            file=image_file_name(product, position, "jpg"),
            sha256=None,
            bytes=size,
            format="jpg",
            width=800,
            height=600,
            http_status=200,
            attempts=1,
            key=image_key(job, n % PRODUCTS, position, "jpg"),
        )


def generate(storage: Storage, files: int, size: int, job: str) -> None:
    block = os.urandom(size + 4096)
    started = time.perf_counter()
    for row in make_rows(files, size, job):
        assert row.key is not None
        if storage.name == "local" and storage.exists(row.key):
            continue
        offset = row.position % 4096
        temp = storage.temp_dir() / f"{os.getpid()}-{uuid.uuid4().hex}.part"
        temp.write_bytes(row.position.to_bytes(8, "big") + block[offset : offset + size - 8])
        storage.put(temp, row.key, "image/jpeg")
    print(f"files ready in {time.perf_counter() - started:.1f} s", file=sys.stderr)


def bench_stream_zip(
    storage: Storage, files: int, size: int, job: str, out: Path, prefetch: int | None
) -> dict:
    rss_before = rss_mb()
    started = time.perf_counter()
    expected = zip_size(storage, make_rows(files, size, job), folder_per_product=True)
    sized_at = time.perf_counter()
    written = 0
    with open(out, "wb") as handle:
        rows = make_rows(files, size, job)
        for chunk in stream_zip(storage, rows, folder_per_product=True, prefetch=prefetch):
            handle.write(chunk)
            written += len(chunk)
    seconds = time.perf_counter() - sized_at
    assert written == expected, (written, expected)
    return {
        "tool": f"stream_zip (prefetch={prefetch if prefetch is not None else 'default'})",
        "zip_mb": round(written / 1e6, 1),
        "zip_size_seconds": round(sized_at - started, 2),
        "seconds": round(seconds, 2),
        "mb_per_s": round(written / 1e6 / seconds, 1),
        "files_per_s": round(files / seconds),
        "rss_before_mb": round(rss_before, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def bench_zipfile(storage: LocalStorage, files: int, size: int, job: str, out: Path) -> dict:
    started = time.perf_counter()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for row in make_rows(files, size, job):
            assert row.key is not None and row.file is not None
            archive.write(storage.path(row.key), f"{row.product}/{row.file}")
    seconds = time.perf_counter() - started
    written = out.stat().st_size
    return {
        "tool": "zipfile (stdlib, no manifest)",
        "zip_mb": round(written / 1e6, 1),
        "seconds": round(seconds, 2),
        "mb_per_s": round(written / 1e6 / seconds, 1),
        "files_per_s": round(files / seconds),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def verify(out: Path, files: int) -> None:
    with zipfile.ZipFile(out) as archive:
        infos = archive.infolist()
        assert len(infos) == files + 1, len(infos)
        assert all(info.compress_type == zipfile.ZIP_STORED for info in infos)
        sample = infos[len(infos) // 2]
        hashlib.sha256(archive.read(sample)).hexdigest()
        assert archive.testzip() is None
    print("verified with zipfile.testzip()", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--size-kb", type=int, default=200)
    parser.add_argument("--backend", choices=["local", "s3"], default="local")
    parser.add_argument("--compare", action="store_true", help="also time stdlib zipfile")
    parser.add_argument("--verify", action="store_true", help="check the ZIP afterwards")
    parser.add_argument("--keep", action="store_true", help="keep the output ZIP")
    parser.add_argument("--prefetch", type=int, default=None, help="files read ahead")
    parser.add_argument("--out-dir", type=Path, default=WORK, help="where the ZIPs are written")
    args = parser.parse_args()
    size = args.size_kb * 1024
    job = f"bench-{args.files}x{args.size_kb}k"
    WORK.mkdir(exist_ok=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"{job}.zip"

    server = None
    if args.backend == "s3":
        import logging

        import boto3
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        ).create_bucket(Bucket="bench")
        storage: Storage = S3Storage(
            "bench", endpoint_url=endpoint, access_key_id="bench", secret_access_key="bench"
        )
    else:
        storage = LocalStorage(WORK / "media")

    try:
        generate(storage, args.files, size, job)
        results = [bench_stream_zip(storage, args.files, size, job, out, args.prefetch)]
        if args.verify:
            verify(out, args.files)
        if args.compare and isinstance(storage, LocalStorage):
            baseline = args.out_dir / f"{job}-zipfile.zip"
            results.append(bench_zipfile(storage, args.files, size, job, baseline))
            baseline.unlink()
    finally:
        if not args.keep:
            out.unlink(missing_ok=True)
        if server is not None:
            server.stop()
            shutil.rmtree(storage.temp_dir(), ignore_errors=True)
    summary = {
        "files": args.files,
        "size_kb": args.size_kb,
        "backend": args.backend,
        "cpus": os.cpu_count(),
        "results": results,
    }
    for result in results:
        print(
            f"{result['tool']}: {result['zip_mb']} MB in {result['seconds']} s ="
            f" {result['mb_per_s']} MB/s, {result['files_per_s']} files/s,"
            f" peak RSS {result['peak_rss_mb']} MB",
            file=sys.stderr,
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
