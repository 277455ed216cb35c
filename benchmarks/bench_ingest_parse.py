"""How long the input parser takes on big tables, and how much memory it needs.

Generates the inputs into a temporary folder, then parses each one in a fresh Python process
(so the peak RSS is the parser's alone) and prints seconds and peak RSS:

    .venv/bin/python benchmarks/bench_ingest_parse.py                 # 100k and 1M-row CSVs
    .venv/bin/python benchmarks/bench_ingest_parse.py --rows 100000 --xlsx
    .venv/bin/python benchmarks/bench_ingest_parse.py --rows 100000 --xlsx --openpyxl

Each CSV is the common two-column layout (Product Number, Image URL), ten images per
product, with 0.1% duplicate URLs and 0.1% bad rows so every path of validation runs.
Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def write_csv(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("Product Number,Image URL\r\n")
        lines = []
        for index in range(rows):
            product = f"SKU-{index // 10:07d}"
            url = f"https://img{index % 16}.example.invalid/catalog/{index // 10:07d}/{index}.jpg"
            if index % 1000 == 999:
                url = f"https://img{(index - 1) % 16}.example.invalid/catalog/{index // 10:07d}/{index - 1}.jpg"  # noqa: E501
            elif index % 1000 == 500:
                url = "ftp://wrong.example.invalid/x.jpg"
            lines.append(f"{product},{url}\r\n")
            if len(lines) >= 100_000:
                out.write("".join(lines))
                lines.clear()
        out.write("".join(lines))


def write_xlsx(path: Path, rows: int) -> None:
    from openpyxl import Workbook

    book = Workbook(write_only=True)
    sheet = book.create_sheet("Images")
    sheet.append(["Product Number", "Image URL"])
    for index in range(rows):
        product: int | str = 100_000 + index // 10 if index % 2 else f"SKU-{index // 10:07d}"
        sheet.append(
            [product, f"https://img{index % 16}.example.invalid/c/{index // 10:07d}/{index}.jpg"]
        )
    book.save(path)


def child(path: str, use_openpyxl: bool) -> None:
    """Parse one file and print one JSON line (runs in its own process)."""
    sys.path.insert(0, str(REPO_ROOT))
    if use_openpyxl:
        from downloader.inputs import workbook

        workbook.USE_CALAMINE = False
    from downloader.inputs import parse_path

    started = time.perf_counter()
    parsed = parse_path(path, max_rows=2_000_000)
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "seconds": round(seconds, 2),
                "peak_rss_mb": round(peak_kb / 1024),
                "source_rows": parsed.source_rows,
                "products": parsed.products,
                "images": parsed.images,
                "duplicates": len(parsed.duplicates),
                "rejected": len(parsed.rejected),
            }
        )
    )


def measure(path: Path, use_openpyxl: bool) -> dict[str, object]:
    command = [sys.executable, __file__, "--child", str(path)]
    if use_openpyxl:
        command.append("--openpyxl")
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO_ROOT)
    if done.returncode != 0:
        raise SystemExit(f"parsing {path.name} failed:\n{done.stderr}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--xlsx", action="store_true", help="also time an XLSX of each size")
    parser.add_argument("--openpyxl", action="store_true", help="read XLSX with openpyxl")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.openpyxl)
        return
    with tempfile.TemporaryDirectory(prefix="bench-inputs-") as folder:
        for rows in args.rows:
            kinds = ["csv", "xlsx"] if args.xlsx else ["csv"]
            for kind in kinds:
                path = Path(folder) / f"rows-{rows}.{kind}"
                started = time.perf_counter()
                (write_csv if kind == "csv" else write_xlsx)(path, rows)
                made = time.perf_counter() - started
                size_mb = os.path.getsize(path) / 1e6
                reader = "openpyxl" if (kind == "xlsx" and args.openpyxl) else ""
                result = measure(path, use_openpyxl=kind == "xlsx" and args.openpyxl)
                label = f"{rows:>9,} rows {kind}{' (' + reader + ')' if reader else ''}"
                print(
                    f"{label}: {result['seconds']:.2f} s, peak RSS {result['peak_rss_mb']} MB "
                    f"({size_mb:.0f} MB file, made in {made:.1f} s) -> "
                    f"{result['products']:,} products, {result['images']:,} images, "
                    f"{result['duplicates']:,} duplicates, {result['rejected']:,} rejected",
                    flush=True,
                )


if __name__ == "__main__":
    main()
