"""Conversion throughput: images per second through the engine's conversion pool
(downloader.outputs.pool.ConvertPool, one spawned worker process per core), one worker and all
of them, for a few output profiles.

    .venv/bin/python -m benchmarks.bench_convert [--images 200] [--side 2000]

The corpus is photo-like (smooth gradients plus noise, so encoders do real work): JPEGs of
`side` x 3/4 `side` px, a quarter of them with an EXIF rotation, and PNGs with transparency.
Each profile converts the whole corpus once per pool size after a warm-up (the workers'
start-up is not counted). Printed: images/s in total and per worker process.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from PIL import Image

from downloader.outputs.convert import worker_count
from downloader.outputs.pool import ConvertPool
from downloader.outputs.profile import OutputProfile

PROFILES = {
    "jpeg, max side 1000": OutputProfile("jpeg", max_side=1000),
    "jpeg, max side 300, square": OutputProfile("jpeg", max_side=300, pad_square=True),
    "webp, max side 1000": OutputProfile("webp", max_side=1000),
    "jpeg, full size": OutputProfile("jpeg"),
}


def make_corpus(folder: Path, count: int, side: int) -> list[Path]:
    height = side * 3 // 4
    base = Image.linear_gradient("L").resize((side, height))
    noise = Image.effect_noise((side, height), 40)
    photo = Image.merge("RGB", (base, noise, base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    paths = []
    for index in range(count):
        if index % 8 == 7:  # a transparent PNG now and then
            image = photo.convert("RGBA")
            image.putalpha(base)
            path = folder / f"{index}.png"
            image.save(path, "PNG", compress_level=1)
        else:
            exif = Image.Exif()
            if index % 4 == 1:
                exif[0x0112] = 6
            path = folder / f"{index}.jpg"
            photo.save(path, "JPEG", quality=90, exif=exif.tobytes())
        paths.append(path)
    return paths


async def run(pool: ConvertPool, paths: list[Path], out: Path, profile: OutputProfile) -> float:
    limit = asyncio.Semaphore(pool.workers * 2)

    async def one(index: int, path: Path) -> None:
        async with limit:
            await pool.convert(str(path), str(out / f"{index}.{profile.extension}"), profile)

    started = time.perf_counter()
    await asyncio.gather(*(one(index, path) for index, path in enumerate(paths)))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--side", type=int, default=2000)
    args = parser.parse_args()
    cores = worker_count()
    with tempfile.TemporaryDirectory() as work:
        folder, out = Path(work) / "in", Path(work) / "out"
        folder.mkdir()
        out.mkdir()
        paths = make_corpus(folder, args.images, args.side)
        megabytes = sum(path.stat().st_size for path in paths) / 1e6
        print(f"{len(paths)} images, {args.side}x{args.side * 3 // 4} px, {megabytes:.1f} MB")
        print(f"{'profile':30} {'workers':>7} {'images/s':>9} {'per worker':>10}")
        for workers in sorted({1, cores}):
            pool = ConvertPool(workers)
            try:
                asyncio.run(run(pool, paths[: workers * 2], out, PROFILES["jpeg, full size"]))
                for name, profile in PROFILES.items():
                    seconds = asyncio.run(run(pool, paths, out, profile))
                    rate = len(paths) / seconds
                    print(f"{name:30} {workers:>7} {rate:>9.1f} {rate / workers:>10.1f}")
            finally:
                pool.close()


if __name__ == "__main__":
    main()
