"""CPU of the durable queue per image, by claim size: what `Engine.CLAIM_SLOTS` is chosen from.

    .venv/bin/python -m benchmarks.bench_queue [--images 10000] [--claims 32,64,128,256]
        [--flush 250] [--repeat 3]

For every claim size: a fresh SQLite file in a temporary folder, one job of `--images` images
(5 per product) queued through `jobs.create_job`, then the engine's database work done in one
thread, as fast as it goes: `queue.claim` that many at a time, and `queue.record_results` of
`--flush` results at a time (what the engine's flush writes after FLUSH_INTERVAL). Prints the
CPU seconds of claiming and recording every image (best of `--repeat`). No network at all.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

from downloader import jobs, queue
from downloader.db import open_database
from downloader.inputs import parse_text
from downloader.models import ImageStatus
from downloader.queue import Result


def queued_job_csv(images: int) -> str:
    lines = ["Product Number,Image URL"]
    lines += [
        f"P{index // 5 + 1:06d},http://img{index % 16}.example.invalid/{index:07d}.jpg"
        for index in range(images)
    ]
    return "\n".join(lines) + "\n"


def drain(folder: Path, text: str, images: int, claim_size: int, flush_size: int) -> float:
    """CPU seconds to claim and record every image of a fresh job, `claim_size` at a time."""
    db = open_database(f"sqlite:///{folder / 'queue.db'}")
    job = jobs.create_job(db, parse_text(text, max_rows=images), name="bench")
    started = time.process_time()
    pending: list[Result] = []
    while claims := queue.claim(db, "bench-worker", claim_size, 60, job_id=job.id):
        for claim in claims:
            digest = hashlib.sha256(claim.url.encode()).hexdigest()
            pending.append(
                Result(
                    image_id=claim.image_id,
                    status=ImageStatus.DONE,
                    attempts=1,
                    http_status=200,
                    sha256=digest,
                    crc32=0,
                    size_bytes=200_000,
                    format="jpg",
                    width=640,
                    height=480,
                    storage_key=f"jobs/{job.id}/{claim.product_id}/{claim.position}.jpg",
                )
            )
        if len(pending) >= flush_size:
            queue.record_results(db, "bench-worker", pending)
            pending = []
    if pending:
        queue.record_results(db, "bench-worker", pending)
    seconds = time.process_time() - started
    if jobs.job_counts(db, job.id).done != job.images:
        raise RuntimeError("not every image was recorded")
    db.dispose()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--claims", default="32,64,128,256", help="comma-separated claim sizes")
    parser.add_argument("--flush", type=int, default=250, help="results per record_results")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    text = queued_job_csv(args.images)
    print(f"{args.images:,} images, {args.flush} results per flush, best of {args.repeat}")
    for size in (int(value) for value in args.claims.split(",")):
        best = float("inf")
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as folder:
                best = min(best, drain(Path(folder), text, args.images, size, args.flush))
        per_image = best / args.images * 1e6
        print(f"claims of {size:4d}: {best:5.2f} CPU s ({per_image:4.0f} us an image)")


if __name__ == "__main__":
    main()
