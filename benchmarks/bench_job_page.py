"""How long the job detail page takes to update for a job of 10,000 products.

Builds, in a temp SQLite file, one job of PRODUCTS products with IMAGES_PER_PRODUCT images each
(through jobs.create_job, like the app), marks most images done and some failed by SQL (a job
in full swing), then measures:

1. the data calls of one live update of the page (what the fragment runs every 2 s):
   jobs.job_summary + jobs.product_progress for one page of products;
2. the same for a filtered view (a product search, "only products with failures");
3. a full render of the job page with Streamlit's AppTest (every section: progress, products,
   downloads, failures, gallery, input problems).

Prints the median and p90 in milliseconds. Not run by CI.

    .venv/bin/python -m benchmarks.bench_job_page [--products 10000] [--images 5] [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from downloader import jobs  # noqa: E402
from downloader.inputs import ParsedInput  # noqa: E402
from downloader.services import Services, build_services  # noqa: E402
from downloader.settings import load_settings  # noqa: E402


def build_job(services: Services, products: int, per_product: int) -> str:
    numbers = [f"SKU-{i:06d}" for i in range(products)]
    frame = pd.DataFrame(
        {
            "product": [n for n in numbers for _ in range(per_product)],
            "url": [
                f"https://img{i % 7}.example.invalid/{n}/{k}.jpg"
                for i, n in enumerate(numbers)
                for k in range(per_product)
            ],
            "position": [k + 1 for _ in numbers for k in range(per_product)],
            "source_row": range(2, 2 + products * per_product),
        }
    )
    job = jobs.create_job(services.db, ParsedInput(frame=frame), name="bench", source="bench")
    now = time.time()
    with services.db.write() as session:
        conn = session.connection()
        # a job in full swing: 70% done, 4% failed, 2% downloading, the rest queued
        conn.exec_driver_sql(
            "UPDATE image SET status = CASE "
            " WHEN id % 100 < 70 THEN 'done'"
            " WHEN id % 100 < 74 THEN 'failed'"
            " WHEN id % 100 < 76 THEN 'downloading'"
            " ELSE 'queued' END,"
            " error_code = CASE WHEN id % 100 BETWEEN 70 AND 73 THEN"
            "   CASE WHEN id % 2 = 0 THEN 'http_404' ELSE 'timeout' END END,"
            " error = CASE WHEN id % 100 BETWEEN 70 AND 73 THEN 'The server answered 404.' END,"
            " format = CASE WHEN id % 100 < 70 THEN 'jpg' END,"
            " width = 800, height = 600, size_bytes = 120000 "
            "WHERE job_id = ?",
            (job.id,),
        )
        conn.exec_driver_sql(
            "UPDATE job SET status = 'running', started_at = ? WHERE id = ?", (now - 600, job.id)
        )
    return job.id


def timed(label: str, runs: int, call: Callable[[], object]) -> float:
    call()  # warm caches and connections
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    median = statistics.median(samples)
    p90 = samples[min(len(samples) - 1, int(len(samples) * 0.9))]
    print(f"{label:<58} median {median:8.1f} ms   p90 {p90:8.1f} ms   ({runs} runs)")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=5, help="images per product")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-job-page-") as tmp:
        settings = load_settings(
            database_url=f"sqlite:///{tmp}/app.db", media_root=f"{tmp}/media", embedded_worker=False
        )
        services = build_services(settings)
        start = time.perf_counter()
        job_id = build_job(services, args.products, args.images)
        print(
            f"job {job_id}: {args.products:,} products, {args.products * args.images:,} images "
            f"(built in {time.perf_counter() - start:.1f} s, SQLite)"
        )

        db = services.db

        def live_update() -> None:
            jobs.job_summary(db, job_id)
            jobs.product_progress(db, job_id, limit=200, offset=0)

        def last_page() -> None:
            jobs.job_summary(db, job_id)
            jobs.product_progress(db, job_id, limit=200, offset=args.products - 200)

        timed("live update data (summary + first 200 products)", args.runs, live_update)
        timed("live update data (summary + last page of products)", args.runs, last_page)
        timed(
            "product search ('SKU-0099')",
            args.runs,
            lambda: jobs.product_progress(db, job_id, text="SKU-0099", limit=200),
        )
        timed(
            "only products with failures",
            args.runs,
            lambda: jobs.product_progress(db, job_id, only_problems=True, limit=200),
        )
        timed("failed images (first 1,000) + error summary", args.runs, lambda: (
            jobs.error_summary(db, job_id), jobs.failed_images(db, job_id, limit=1000)
        ))  # fmt: skip

        from streamlit.testing.v1 import AppTest

        from pages import _common

        _common.install(services)
        app = str(REPO_ROOT / "app.py")
        at = AppTest.from_file(app, default_timeout=120).run()
        at.switch_page("pages/job.py")
        at.query_params["id"] = job_id
        at.run()
        if at.exception:
            raise SystemExit(f"the job page failed: {at.exception[0].message}")

        def render() -> None:
            at.run()

        median = timed("full job page render (AppTest, every section)", args.runs, render)
        print(
            f"\nJob page at {args.products:,} products: {median:.0f} ms per full render "
            "(median); a live update reruns only the progress fragment."
        )
        _common.install(None)
        services.db.dispose()


if __name__ == "__main__":
    main()
