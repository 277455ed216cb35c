"""Any product number and naming templates (issue 23), end to end through the command line.

Real parts: `python -m downloader run/submit/zip` subprocesses, a SQLite file, the local media
folder and the loopback image server.
"""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

from tests.support.imageserver import ImageServer, image_bytes
from tests.test_cli import Cli, last_json

TEMPLATE = "{product}-{color}-{position}"


def write_catalog(path: Path, server: ImageServer) -> Path:
    """SKUs with a slash and a dot, a case twin, a device name and an accent; a Color column."""
    rows = [
        ("AB/12.5", "a1.jpg", "Red"),
        ("AB/12.5", "a2.png", "Red"),
        ("ab/12.5", "b1.jpg", "Blue"),
        ("CON", "c1.jpg", "Green"),
        ("Größe 42", "g1.jpg", "Schwarz/Weiß"),
        ("Größe 42", "g2.jpg", "Schwarz/Weiß"),
    ]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["SKU", "Image URL", "Color"])
    for sku, image, color in rows:
        writer.writerow([sku, server.url(f"/img/{image}"), color])
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


def read_manifest(archive: zipfile.ZipFile) -> list[list[str]]:
    text = archive.read("manifest.csv").decode("utf-8")
    return list(csv.reader(io.StringIO(text, newline="")))


def run_and_zip(cli: Cli, tmp_path: Path, src: Path, *options: str) -> zipfile.ZipFile:
    result = cli("run", str(src), "--quiet", *options)
    assert result.returncode == 0, result.stderr
    summary = last_json(result.stdout)
    assert (summary["products"], summary["done"]) == (4, 6), summary
    out = tmp_path / "all.zip"
    zipped = cli("zip", str(summary["job_id"]), "--out", str(out))
    assert zipped.returncode == 0, zipped.stderr
    return zipfile.ZipFile(out)


def test_real_skus_and_a_template_with_an_input_column(
    tmp_path: Path, image_server: ImageServer
) -> None:
    cli = Cli(tmp_path)
    src = write_catalog(tmp_path / "catalog.csv", image_server)
    with run_and_zip(cli, tmp_path, src, "--naming", TEMPLATE) as archive:
        assert archive.testzip() is None
        assert archive.namelist() == [
            "AB_12.5/AB_12.5-Red-1.jpg",
            "AB_12.5/AB_12.5-Red-2.png",
            "ab_12.5-2/ab_12.5-2-Blue-1.jpg",  # the case twin gets its own folder
            "CON_/CON_-Green-1.jpg",  # never the Windows device
            "Größe 42/Größe 42-Schwarz_Weiß-1.jpg",  # letters kept, the slash made safe
            "Größe 42/Größe 42-Schwarz_Weiß-2.jpg",
            "manifest.csv",
        ]
        assert archive.read("AB_12.5/AB_12.5-Red-1.jpg") == image_bytes("a1", "jpg")
        manifest = read_manifest(archive)
    header, rows = manifest[0], manifest[1:]
    assert header[-1] == "Color" and header[0] == "product"
    by_name = [dict(zip(header, row, strict=True)) for row in rows]
    # The SKUs exactly as typed, the Color column carried through, the files as zipped.
    assert [(r["product"], r["Color"], r["file"]) for r in by_name] == [
        ("AB/12.5", "Red", "AB_12.5-Red-1.jpg"),
        ("AB/12.5", "Red", "AB_12.5-Red-2.png"),
        ("ab/12.5", "Blue", "ab_12.5-2-Blue-1.jpg"),
        ("CON", "Green", "CON_-Green-1.jpg"),
        ("Größe 42", "Schwarz/Weiß", "Größe 42-Schwarz_Weiß-1.jpg"),
        ("Größe 42", "Schwarz/Weiß", "Größe 42-Schwarz_Weiß-2.jpg"),
    ]
    # The product ZIP names its files the same way.
    job_id = cli.sql("SELECT id FROM job")[0][0]
    one = tmp_path / "one.zip"
    result = cli("zip", job_id, "--out", str(one), "--product", "Größe 42")
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(one) as product_archive:
        assert product_archive.namelist() == [
            "Größe 42-Schwarz_Weiß-1.jpg",
            "Größe 42-Schwarz_Weiß-2.jpg",
            "manifest.csv",
        ]


def test_flat_layout_suffixes_collisions_across_products_ignoring_case(
    tmp_path: Path, image_server: ImageServer
) -> None:
    cli = Cli(tmp_path)
    src = write_catalog(tmp_path / "catalog.csv", image_server)
    with run_and_zip(cli, tmp_path, src, "--naming", "{color}", "--layout", "flat") as archive:
        assert archive.namelist() == [
            "Red.jpg",
            "Red.png",  # another extension is another name
            "Blue.jpg",
            "Green.jpg",
            "Schwarz_Weiß.jpg",
            "Schwarz_Weiß-2.jpg",  # the same name again: numbered
            "manifest.csv",
        ]
        files = [row[4] for row in read_manifest(archive)[1:]]
    assert files == [name for name in archive.namelist() if name != "manifest.csv"]
    # A product ZIP of a flat job uses the job-wide names too.
    job_id = cli.sql("SELECT id FROM job")[0][0]
    one = tmp_path / "one.zip"
    assert cli("zip", job_id, "--out", str(one), "--product", "Größe 42").returncode == 0
    with zipfile.ZipFile(one) as product_archive:
        assert product_archive.namelist() == [
            "Schwarz_Weiß.jpg",
            "Schwarz_Weiß-2.jpg",
            "manifest.csv",
        ]


def test_unknown_template_field_exits_2_before_anything_is_queued(
    tmp_path: Path, image_server: ImageServer
) -> None:
    cli = Cli(tmp_path)
    src = write_catalog(tmp_path / "catalog.csv", image_server)
    for command in ("run", "submit"):
        result = cli(command, str(src), "--naming", "{product}-{colour}")
        assert result.returncode == 2, result.stderr
        assert "Unknown field {colour}" in result.stderr and "{color}" in result.stderr
        assert "Traceback" not in result.stderr
    malformed = cli("submit", str(src), "--naming", "{product")
    assert malformed.returncode == 2 and "naming template" in malformed.stderr
    assert not cli.db_path.exists() or cli.sql("SELECT count(*) FROM job") == [(0,)]
