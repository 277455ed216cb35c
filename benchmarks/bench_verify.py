"""The cost of the image checks per image (issue 26), on the download benchmark's corpus.

    .venv/bin/python -m benchmarks.bench_verify [--images N] [--decode N] [--dir DIR]

- "header" is what the fetcher did before the whole-file check (the format, imagesize's
  header size, every frame's declared size: sniff + frames.py);
- "structure" is today's default (VERIFY_IMAGES=structure): the same plus the whole-file walk
  (markers to EOI, chunk CRCs to IEND, boxes, strips);
- "full decode" (VERIFY_IMAGES=full) decodes every image in this one process: its images/s is
  the rate per core (the engine runs one decode worker per core).

Each body is read into memory first (as the fetcher holds bodies up to 256 KiB), so only the
check is timed. Prints microseconds per image and MB/s of image bytes for each.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import imagesize

from downloader.fetch.frames import check_frames
from downloader.fetch.sniff import MAX_IMAGE_PIXELS, check_magic, image_info
from downloader.fetch.verify import decode

CORPUS = Path(__file__).resolve().parent / "work" / "corpus" / "img"


def header_only(data: bytes) -> None:
    """The check as it was before issue 26: magic, imagesize, every frame's size."""
    fmt = check_magic(data[:64])
    import io

    width, height = imagesize.get(io.BytesIO(data), exif_rotation=False)
    if fmt != "jpg":
        check_frames(fmt, data, width, height, MAX_IMAGE_PIXELS)


def structure(data: bytes) -> None:
    image_info(None, data[:64], data)


def timed(label: str, check: object, bodies: list[bytes], rounds: int) -> None:
    assert callable(check)
    total = sum(map(len, bodies))
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for body in bodies:
            check(body)
        best = min(best, time.perf_counter() - started)
    per_image = best / len(bodies)
    print(
        f"{label:<13} {per_image * 1e6:9.1f} us/image  {total / best / 1e6:9.0f} MB/s  "
        f"{len(bodies) / best:9.0f} images/s  ({len(bodies)} images, {total / 1e6:.1f} MB, "
        f"best of {rounds})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=CORPUS, help="folder of images")
    parser.add_argument("--images", type=int, default=2000, help="images for the checks")
    parser.add_argument("--decode", type=int, default=300, help="images for the full decode")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    paths = sorted(path for path in args.dir.iterdir() if path.is_file())[: args.images]
    if not paths:
        raise SystemExit(f"no images in {args.dir}: run the download benchmark once to make them")
    bodies = [path.read_bytes() for path in paths]
    kinds: dict[str, int] = {}
    for body in bodies:
        fmt = check_magic(body[:64])
        kinds[fmt] = kinds.get(fmt, 0) + 1
    print(f"corpus: {args.dir} ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})")
    timed("header", header_only, bodies, args.rounds)
    timed("structure", structure, bodies, args.rounds)
    sample = bodies[: args.decode]
    formats = [check_magic(body[:64]) for body in sample]
    started = time.perf_counter()
    for body, fmt in zip(sample, formats, strict=True):
        decode(body, fmt)
    elapsed = time.perf_counter() - started
    total = sum(map(len, sample))
    print(
        f"{'full decode':<13} {elapsed / len(sample) * 1e6:9.1f} us/image  "
        f"{total / elapsed / 1e6:9.0f} MB/s  {len(sample) / elapsed:9.0f} images/s per core  "
        f"({len(sample)} images)"
    )


if __name__ == "__main__":
    main()
