"""Converted outputs, marketplace checks and the Excel report end to end (issue 23): the real
`python -m downloader` in subprocesses, a real SQLite file, a real image server on loopback."""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import openpyxl
import pytest
from PIL import Image

from tests.support.imageserver import ImageServer, Reply, Req, image_bytes
from tests.test_cli import Cli, last_json


def transparent_png() -> bytes:
    """800x400, fully transparent but for an opaque blue 100x100 square at the top left."""
    image = Image.new("RGBA", (800, 400), (255, 0, 0, 0))
    image.paste((0, 0, 255, 255), (0, 0, 100, 100))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def rotated_jpeg() -> bytes:
    """Stored 900x300 green with a red 150x150 corner at the stored top left, EXIF orientation
    6: shown upright it is 300x900 with the red corner at the top right."""
    image = Image.new("RGB", (900, 300), (0, 160, 0))
    image.paste((255, 0, 0), (0, 0, 150, 150))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


def cmyk_jpeg() -> bytes:
    image = Image.new("CMYK", (640, 480), (0, 255, 255, 0))  # pure red in CMYK
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95)
    return out.getvalue()


def truncated_jpeg() -> bytes:
    """A JPEG cut after its header and a little data: sniffed as a JPEG, not decodable."""
    whole = image_bytes("whole", "jpg")
    return whole[: len(whole) // 3]


BODIES = {
    "clear.png": transparent_png,
    "turned.jpg": rotated_jpeg,
    "cmyk.jpg": cmyk_jpeg,
    "cut.jpg": truncated_jpeg,
}


@pytest.fixture
def server() -> Iterator[ImageServer]:
    with ImageServer() as server:

        def fixed(req: Req) -> Reply:
            name = req.param("name") or ""
            kind = "image/png" if name.endswith(".png") else "image/jpeg"
            return Reply(body=BODIES[name](), content_type=kind)

        server.add_route(r"^/fixed/(?P<name>[a-z]+\.(png|jpg))$", fixed)
        yield server


def write_input(path: Path, server: ImageServer) -> list[tuple[str, str, str]]:
    rows = [
        ("P1", server.url("/fixed/clear.png"), "Blue"),
        ("P1", server.url("/fixed/turned.jpg"), '=HYPERLINK("http://x")'),
        ("P2", server.url("/img/wide.webp?w=1200&h=500", 1), "Red"),
        ("P2", server.url("/fixed/cmyk.jpg", 1), "Red"),
        ("P3", server.url("/same/a.jpg", 2), "Grey"),
        ("P4", server.url("/same/b.jpg", 2), "Grey"),
        ("P5", server.url("/same/c.jpg", 2), "Grey"),
        ("P5", server.url("/fixed/cut.jpg"), "Grey"),
    ]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Product Number", "Image URL", "Color"])
        writer.writerows(rows)
    return rows


def rgb(picture: Image.Image, x: int, y: int) -> tuple[int, int, int]:
    value = picture.getpixel((x, y))
    assert isinstance(value, tuple)
    return value[0], value[1], value[2]


def manifest_of(archive: zipfile.ZipFile) -> list[dict[str, str]]:
    text = archive.read("manifest.csv").decode("utf-8-sig")
    return list(csv.DictReader(io.StringIO(text)))


def test_convert_checks_and_report(tmp_path: Path, server: ImageServer) -> None:
    cli = Cli(tmp_path)
    source = tmp_path / "input.csv"
    write_input(source, server)
    result = cli(
        "run", str(source), "--quiet",
        "--convert", "jpeg", "--max-side", "300", "--background", "white",
        "--min-side", "1000", "--square", "--formats", "jpeg,png",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = last_json(result.stdout)
    job_id = str(summary["job_id"])
    assert summary["done"] == 7 and summary["failed"] == 1, summary

    out = tmp_path / "all.zip"
    assert cli("zip", job_id, "--out", str(out)).returncode == 0
    with zipfile.ZipFile(out) as archive:
        rows = manifest_of(archive)
        entries = {name: archive.read(name) for name in archive.namelist()}
    files = {name: data for name, data in entries.items() if name != "manifest.csv"}
    assert len(files) == 7
    pictures = {}
    for name, data in files.items():
        assert name.endswith(".jpg"), name
        with Image.open(io.BytesIO(data)) as picture:
            assert picture.format == "JPEG", name
            assert max(picture.size) <= 300, (name, picture.size)
            pictures[name] = picture.convert("RGB")
    by_url = {row["source_url"]: row for row in rows}

    # transparency flattened onto white; the opaque square kept
    clear = by_url[server.url("/fixed/clear.png")]
    flat = pictures[f"P1/{clear['file']}"]
    assert flat.size == (300, 150)
    assert min(rgb(flat, 290, 140)) >= 250  # white, not black or red
    blue = rgb(flat, 10, 10)
    assert blue[2] > 200 and blue[0] < 60
    # EXIF orientation applied: upright 100x300, the red corner now at the top right
    turned = by_url[server.url("/fixed/turned.jpg")]
    upright = pictures[f"P1/{turned['file']}"]
    assert upright.size == (100, 300)
    red = rgb(upright, upright.width - 5, 5)
    assert red[0] > 200 and red[1] < 80
    green = rgb(upright, 5, upright.height - 5)
    assert green[1] > 120 and green[0] < 80
    # CMYK to RGB: red stays red
    cmyk = by_url[server.url("/fixed/cmyk.jpg", 1)]
    reddish = rgb(pictures[f"P2/{cmyk['file']}"], 10, 10)
    assert reddish[0] > 200 and reddish[1] < 80 and reddish[2] < 80

    # the manifest: the original's bytes and hash, the output's format, bytes and size
    assert int(clear["bytes"]) == len(transparent_png())
    assert clear["format"] == "png" and clear["output_format"] == "jpg"
    assert int(clear["output_bytes"]) == len(files[f"P1/{clear['file']}"])
    assert (clear["output_width"], clear["output_height"]) == ("300", "150")
    assert (turned["output_width"], turned["output_height"]) == ("100", "300")
    # checks: warnings, never failures
    assert "min_side:" in clear["warnings"] and "square:" in clear["warnings"]
    webp = by_url[server.url("/img/wide.webp?w=1200&h=500", 1)]
    assert webp["status"] == "done" and "format:" not in webp["warnings"]  # judged as JPEG
    placeholders = [row for row in rows if "/same/" in row["source_url"]]
    assert all("placeholder:" in row["warnings"] for row in placeholders)
    assert "placeholder:" not in clear["warnings"]
    # a failed download has no file and no output
    cut = by_url[server.url("/fixed/cut.jpg")]
    assert cut["status"] == "failed" and not cut["file"] and not cut["output_format"]

    # the originals stay in storage, each output beside its original
    stored = sorted(p.name for p in (cli.media / "jobs" / job_id).rglob("*") if p.is_file())
    assert sum(name.endswith(".output") for name in stored) == 7
    assert len(stored) == 14

    # the Excel report: a picture per image, the input's own columns, formula-safe cells
    report = tmp_path / "report.xlsx"
    made = cli("report", job_id, "--out", str(report))
    assert made.returncode == 0, made.stderr
    assert last_json(made.stdout)["thumbnails"] == 7
    with zipfile.ZipFile(report) as package:
        media = [name for name in package.namelist() if name.startswith("xl/media/")]
        sheet = package.read("xl/worksheets/sheet1.xml").decode()
    assert len(media) == 5  # the three placeholder files share one picture
    assert sheet.count(' vm="') == 7  # a picture in a cell of each downloaded image
    workbook = openpyxl.load_workbook(report, read_only=True)
    images = list(workbook["Images"].iter_rows(values_only=True))
    header = images[0]
    assert header[:5] == ("Thumbnail", "Product", "Position", "File", "Status")
    assert len(images) == 1 + 8
    colour = header.index("Color (input)")
    values = [row[colour] for row in images[1:]]
    assert '\'=HYPERLINK("http://x")' in values  # text, never a formula
    failed = next(row for row in images[1:] if row[header.index("Status")] == "failed")
    # refused by the download's whole-file check, or else by the conversion: never in a ZIP
    error = failed[header.index("Error")]
    assert "truncated" in error or "conversion_failed" in error
    products = list(workbook["Products"].iter_rows(values_only=True))
    assert [row[0] for row in products[1:]] == ["P1", "P2", "P3", "P4", "P5"]
    assert products[5][products[0].index("Failed")] == 1


def test_bad_output_options_are_input_errors(tmp_path: Path, server: ImageServer) -> None:
    cli = Cli(tmp_path)
    source = tmp_path / "input.csv"
    write_input(source, server)
    for args, words in [
        (["--convert", "jpeg", "--quality", "0"], "Quality"),
        (["--convert", "jpeg", "--background", "not-a-colour"], "Background colour"),
        (["--max-side", "0"], "Maximum side"),
        (["--formats", "jpeg,bmp"], "Allowed formats"),
    ]:
        result = cli("run", str(source), "--quiet", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert words in result.stderr
    assert not cli.db_path.exists() or not cli.sql("SELECT id FROM job")


def test_duplicate_outputs_are_deleted(tmp_path: Path, server: ImageServer) -> None:
    cli = Cli(tmp_path)
    source = tmp_path / "input.csv"
    source.write_text(
        "Product Number,Image URL\n"
        f"D1,{server.url('/same/one.jpg')}\nD1,{server.url('/same/two.jpg')}\n"
        f"D1,{server.url('/img/other.png')}\n",
        encoding="utf-8",
    )
    result = cli("run", str(source), "--quiet", "--convert", "webp", "--pad-square")
    assert result.returncode == 0, result.stderr
    summary = last_json(result.stdout)
    assert (summary["done"], summary["duplicate"]) == (2, 1)
    stored = [p for p in (cli.media / "jobs").rglob("*") if p.is_file()]
    assert len(stored) == 4  # two originals, two outputs: the duplicate's both deleted
    out = tmp_path / "d1.zip"
    assert cli("zip", str(summary["job_id"]), "--out", str(out)).returncode == 0
    with zipfile.ZipFile(out) as archive:
        for name in archive.namelist():
            if name.endswith(".webp"):
                with Image.open(io.BytesIO(archive.read(name))) as picture:
                    assert picture.format == "WEBP" and picture.width == picture.height
        assert sum(name.endswith(".webp") for name in archive.namelist()) == 2
