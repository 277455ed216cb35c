"""Throughput of `python -m downloader worker` processes on PostgreSQL: 1 vs 2 workers.

    .venv/bin/python -m benchmarks.bench_workers [--images 2000] [--workers 1,2] [--rounds 2]

The corpus (benchmarks/corpus.py: ~200 KB JPEG/PNG/WebP noise images, all distinct) is served
by nginx on the 16 loopback hosts 127.0.0.2-17 (benchmarks/nginx.py). For every round and
worker count: a fresh PostgreSQL database on 127.0.0.1:5432 and a fresh media folder, one job
submitted (5 images per product, hosts round-robin), N workers started at once, and the job
timed from its first claim (`started_at`) to `completed` (`finished_at`) -- so process start
and the join handshake of the second worker are included only where they overlap the job.
Every stored file's SHA-256 is checked against the corpus manifest.

Limits are the deployment-wide defaults (global 32, per host 4) except DOWNLOAD_QPS, which is
0 (unlimited) by default here: at the default 20 requests/s the deployment, not the worker
count, sets the pace (pass --qps 20 to see exactly that). Results go to stdout and
benchmarks/work/runs/bench_workers-<time>.json. Traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.common import HOSTS, PYTHON, REPO_ROOT, WORK_DIR, child_env, log
from benchmarks.corpus import IMAGES_PER_PRODUCT, IMG_DIR, ensure_images, warm_page_cache
from benchmarks.nginx import serve
from downloader import jobs
from downloader.db import open_database
from downloader.inputs import parse_text

PG = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3"
RUNS_DIR = WORK_DIR / "runs"


def make_database() -> tuple[str, str]:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name, f"postgresql://postgres@127.0.0.1:5432/{name}"


def drop_database(name: str) -> None:
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def job_text(images: list[Any], port: int) -> str:
    lines = ["Product Number\tImage URL"]
    for index, image in enumerate(images):
        product = f"P{index // IMAGES_PER_PRODUCT + 1:05d}"
        lines.append(f"{product}\thttp://{HOSTS[index % len(HOSTS)]}:{port}/img/{image.name}")
    return "\n".join(lines)


def one_run(workers: int, images: list[Any], port: int, qps: str, run_dir: Path) -> dict[str, Any]:
    name, url = make_database()
    try:
        db = open_database(url)
        job = jobs.create_job(db, parse_text(job_text(images, port)), name=f"{workers} worker(s)")
        env = child_env(
            DATABASE_URL=url,
            MEDIA_ROOT=str(run_dir / "media"),
            ALLOWED_PRIVATE_NETWORKS="127.0.0.0/8",
            DOWNLOAD_QPS=qps,
            JOB_RETENTION_DAYS="0",
            EMBEDDED_WORKER="false",
        )
        load_before = os.getloadavg()[0]
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = time.monotonic()
        procs = [
            subprocess.Popen(
                [PYTHON, "-m", "downloader", "worker"],
                env=env,
                cwd=REPO_ROOT,
                stdout=(run_dir / f"worker{i}.out").open("wb"),
                stderr=(run_dir / f"worker{i}.err").open("wb"),
            )
            for i in range(workers)
        ]
        try:
            while jobs.get_job(db, job.id).status != "completed":
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"a worker exited early; see {run_dir}")
                time.sleep(0.2)
            wall = time.monotonic() - wall
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(30)
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        worker_cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (
            cpu_after.ru_stime - cpu_before.ru_stime
        )
        summary = jobs.job_summary(db, job.id)
        assert summary.job.started_at and summary.job.finished_at
        seconds = summary.job.finished_at - summary.job.started_at
        expected = {
            f"{HOSTS[i % len(HOSTS)]}/{img.name}": img.sha256 for i, img in enumerate(images)
        }
        got = {
            row.source_url.split("//", 1)[1].replace(f":{port}/img", ""): row.sha256
            for row in jobs.manifest_rows(db, job.id)
        }
        per_worker = [
            json.loads((run_dir / f"worker{i}.out").read_text().strip().splitlines()[-1])["images"]
            for i in range(workers)
        ]
        db.dispose()
        return {
            "workers": workers,
            "images": len(images),
            "done": summary.counts.done,
            "failed": summary.counts.failed,
            "sha256_ok": got == expected,
            "job_seconds": round(seconds, 2),
            "images_per_second": round(summary.counts.done / seconds, 1),
            "mb_per_second": round(sum(i.size for i in images) / seconds / 1e6, 1),
            "wall_seconds_with_startup": round(wall, 2),
            "per_worker_images": per_worker,
            "workers_cpu_seconds": round(worker_cpu, 1),  # whole process lives, startup included
            "load_average_before": round(load_before, 2),
        }
    finally:
        drop_database(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--qps", default="0", help="DOWNLOAD_QPS for the deployment")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    images = ensure_images(args.images)
    warm_page_cache(IMG_DIR, [i.name for i in images])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = WORK_DIR / "bench_workers" / stamp
    results: list[dict[str, Any]] = []
    with serve() as server:
        for round_no in range(1, args.rounds + 1):
            for n in counts:  # interleaved, so drifting machine load hits both alike
                run_dir = base / f"r{round_no}-w{n}"
                run_dir.mkdir(parents=True)
                result = {"round": round_no, **one_run(n, images, server.port, args.qps, run_dir)}
                log("workers", json.dumps(result))
                results.append(result)
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    out = RUNS_DIR / f"bench_workers-{stamp}.json"
    meta = {"cpus": os.cpu_count(), "qps": args.qps, "python": sys.version.split()[0]}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"\n{'workers':>7} {'round':>5} {'img/s':>7} {'MB/s':>6} {'job s':>7} {'per worker'}")
    for r in results:
        print(
            f"{r['workers']:>7} {r['round']:>5} {r['images_per_second']:>7} "
            f"{r['mb_per_second']:>6} {r['job_seconds']:>7} {r['per_worker_images']}"
        )
    for n in counts:
        rates = [r["images_per_second"] for r in results if r["workers"] == n]
        print(
            f"{n} worker(s): median {sorted(rates)[len(rates) // 2]} img/s over {len(rates)} run(s)"
        )
    print(f"saved {out}")
    return 0 if all(r["sha256_ok"] and r["done"] == r["images"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
