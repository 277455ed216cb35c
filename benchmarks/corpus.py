"""The benchmark corpus (generated once, cached in benchmarks/work/corpus) and URL list files.

Images are random noise, which compresses poorly, so a few hundred pixels a side give the
~200 KB average the benchmark wants; every image is a valid JPEG, PNG or WebP with unique
bytes. Each image's format and size follow from its index, so the corpus is reproducible and
grows incrementally (a smoke run's 200 images are the first 200 of the full run's 10,000).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import HOSTS, WORK_DIR, log

CORPUS_DIR = WORK_DIR / "corpus"
IMG_DIR = CORPUS_DIR / "img"
SMALL_DIR = CORPUS_DIR / "small"
MANIFEST = CORPUS_DIR / "manifest.json"
LISTS_DIR = WORK_DIR / "lists"

CORPUS_VERSION = 1
SEED = 20251125
SMALL_FILES = 1000
IMAGES_PER_PRODUCT = 5
# Measured bytes per pixel of random noise with the encoder options below.
_BYTES_PER_PIXEL = {"jpg": 2.45, "png": 3.0, "webp": 2.65}
_SIZE_RANGE = (100_000, 300_000)  # target bytes per image, uniform: ~200 KB on average


@dataclass(frozen=True)
class ImageSpec:
    index: int
    ext: str
    width: int
    height: int

    @property
    def name(self) -> str:
        return f"{self.index:06d}.{self.ext}"


@dataclass(frozen=True)
class CorpusFile:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class UrlList:
    """One workload written three ways: our CSV, an aria2c input file and a curl config."""

    name: str
    csv: Path
    aria2: Path
    curl: Path
    images: int
    products: int
    total_bytes: int


def image_spec(index: int) -> ImageSpec:
    rng = np.random.default_rng([SEED, 0, index])
    pick = rng.random()
    ext = "jpg" if pick < 0.5 else "png" if pick < 0.75 else "webp"
    area = rng.uniform(*_SIZE_RANGE) / _BYTES_PER_PIXEL[ext]
    aspect = rng.uniform(0.75, 4 / 3)
    width = max(16, round(math.sqrt(area * aspect)))
    height = max(16, round(area / width))
    return ImageSpec(index, ext, width, height)


def _encode(pixels: np.ndarray, ext: str) -> bytes:
    out = io.BytesIO()
    image = Image.fromarray(pixels)
    if ext == "jpg":
        image.save(out, "JPEG", quality=95, subsampling=0)
    elif ext == "png":
        image.save(out, "PNG", compress_level=1)
    else:
        image.save(out, "WEBP", quality=100, method=0)
    return out.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _make_image(index: int) -> tuple[int, CorpusFile]:
    spec = image_spec(index)
    rng = np.random.default_rng([SEED, 1, index])
    pixels = rng.integers(0, 256, (spec.height, spec.width, 3), dtype=np.uint8)
    data = _encode(pixels, spec.ext)
    _write_atomic(IMG_DIR / spec.name, data)
    return index, CorpusFile(spec.name, len(data), hashlib.sha256(data).hexdigest())


def _make_small(index: int) -> tuple[int, CorpusFile]:
    rng = np.random.default_rng([SEED, 2, index])
    pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    data = _encode(pixels, "jpg")
    name = f"{index:04d}.jpg"
    _write_atomic(SMALL_DIR / name, data)
    return index, CorpusFile(name, len(data), hashlib.sha256(data).hexdigest())


def _load_manifest() -> dict[str, list[CorpusFile]]:
    try:
        raw = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return {"images": [], "small": []}
    if raw.get("version") != CORPUS_VERSION or raw.get("seed") != SEED:
        return {"images": [], "small": []}
    return {key: [CorpusFile(*entry) for entry in raw.get(key, [])] for key in ("images", "small")}


def _save_manifest(manifest: dict[str, list[CorpusFile]]) -> None:
    raw = {
        "version": CORPUS_VERSION,
        "seed": SEED,
        **{key: [[f.name, f.size, f.sha256] for f in files] for key, files in manifest.items()},
    }
    _write_atomic(MANIFEST, json.dumps(raw).encode())


def _ensure(
    kind: str, folder: Path, count: int, make: Callable[[int], tuple[int, CorpusFile]]
) -> list[CorpusFile]:
    """First `count` files of one kind, generating the missing or damaged ones in parallel."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = _load_manifest()
    known = manifest[kind]
    present = {e.name: e.stat().st_size for e in os.scandir(folder) if e.is_file()}
    todo = [
        i for i in range(count) if i >= len(known) or present.get(known[i].name) != known[i].size
    ]
    if not todo:
        return known[:count]
    log("corpus", f"generating {len(todo)} {kind} file(s) in {folder} ...")
    files: list[CorpusFile | None] = [*known[:count], *[None] * max(0, count - len(known))]
    with Pool(processes=os.cpu_count() or 2) as pool:
        for done, (index, made) in enumerate(pool.imap_unordered(make, todo, chunksize=16), 1):
            files[index] = made
            if done % 1000 == 0:
                log("corpus", f"  {done}/{len(todo)}")
    complete = [f for f in files if f is not None]
    assert len(complete) == count
    if len(known) > count:
        complete += known[count:]
    manifest[kind] = complete
    _save_manifest(manifest)
    return complete[:count]


def ensure_images(count: int) -> list[CorpusFile]:
    images = _ensure("images", IMG_DIR, count, _make_image)
    if len({f.sha256 for f in images}) != len(images):
        raise RuntimeError("corpus images are not all distinct; delete benchmarks/work/corpus")
    return images


def ensure_small() -> list[CorpusFile]:
    return _ensure("small", SMALL_DIR, SMALL_FILES, _make_small)


def warm_page_cache(folder: Path, names: Iterable[str]) -> None:
    """Read files once so that no tool pays for the first read from disk."""
    for name in names:
        with open(folder / name, "rb") as handle:
            while handle.read(1 << 20):
                pass


def _write_url_list(name: str, rows: Iterator[tuple[str, str, str]], total: int) -> UrlList:
    """rows: (product, url, output file name)."""
    LISTS_DIR.mkdir(parents=True, exist_ok=True)
    csv_path = LISTS_DIR / f"{name}.csv"
    aria2_path = LISTS_DIR / f"{name}.aria2"
    curl_path = LISTS_DIR / f"{name}.curl"
    products: set[str] = set()
    images = 0
    with (
        csv_path.open("w", newline="") as csv_file,
        aria2_path.open("w") as aria2_file,
        curl_path.open("w") as curl_file,
    ):
        writer = csv.writer(csv_file)
        writer.writerow(["Product Number", "Image URL"])
        for product, url, out in rows:
            writer.writerow([product, url])
            aria2_file.write(f"{url}\n  out={out}\n")
            curl_file.write(f'url = "{url}"\noutput = "{out}"\n')
            products.add(product)
            images += 1
    return UrlList(name, csv_path, aria2_path, curl_path, images, len(products), total)


def download_list(
    images: list[CorpusFile],
    port: int,
    *,
    hosts: tuple[str, ...] = HOSTS,
    scheme: str = "http",
    name: str = "download",
) -> UrlList:
    """N images, 5 per product, spread round-robin over the loopback hosts (16 by default)."""

    def rows() -> Iterator[tuple[str, str, str]]:
        for index, image in enumerate(images):
            product = f"P{index // IMAGES_PER_PRODUCT + 1:05d}"
            position = index % IMAGES_PER_PRODUCT + 1
            ext = image.name.rsplit(".", 1)[1]
            url = f"{scheme}://{hosts[index % len(hosts)]}:{port}/img/{image.name}"
            yield product, url, f"{product}_{position}.{ext}"

    return _write_url_list(f"{name}-{len(images)}", rows(), sum(f.size for f in images))


def memory_list(small: list[CorpusFile], products: int, port: int) -> UrlList:
    """`products` products of one small image; URL /small/<n>/<file> serves small[n % 1000]."""

    def rows() -> Iterator[tuple[str, str, str]]:
        for n in range(products):
            product = f"M{n + 1:07d}"
            url = f"http://{HOSTS[n % len(HOSTS)]}:{port}/small/{n}/{small[n % len(small)].name}"
            yield product, url, f"{product}_1.jpg"

    total = sum(small[n % len(small)].size for n in range(products))
    return _write_url_list(f"memory-{products}", rows(), total)


def ingest_csv(rows: int) -> Path:
    """A CSV of `rows` image URLs (5 per product) for `submit`; cached, its URLs never fetched."""
    path = WORK_DIR / "ingest" / f"ingest-{rows}.csv"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Product Number", "Image URL"])
        for index in range(rows):
            product = f"I{index // IMAGES_PER_PRODUCT + 1:07d}"
            host = HOSTS[index % len(HOSTS)]
            writer.writerow([product, f"http://{host}/ingest/{index:07d}.jpg"])
    os.replace(tmp, path)
    return path
