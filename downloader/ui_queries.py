"""Small helpers the Streamlit pages need that are not part of the jobs service.

No Streamlit import here: everything is plain Python and tested without a browser.
- turning the rows of the paste grid into a ParsedInput (through the normal parser),
- telling which grid cells a rejected row points at (for highlighting),
- thumbnails for the gallery,
- a light product lookup for pickers (the product table only, no image aggregates).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from downloader.db import Database
from downloader.inputs import ParsedInput, parse_text
from downloader.inputs.columns import PRODUCT_SYNONYMS, URL_SYNONYMS
from downloader.storage import Storage

#: Column headers of the paste grid (also the header row handed to the parser).
GRID_PRODUCT = "Product Number"
GRID_URL = "Image URL"

#: A grid row as the grid returns it: (grid row index, row id, product cell, URL cell).
GridRow = tuple[int, str, str, str]


@dataclass
class GridParse:
    """The parse of the grid plus what the grid needs to highlight its invalid cells."""

    parsed: ParsedInput | None
    error: str | None = None
    rows: int = 0
    """Non-blank grid rows."""
    invalid: dict[str, dict[str, str]] = field(default_factory=lambda: {"product": {}, "url": {}})
    """Column ("product" or "url") -> row id -> reason."""
    row_numbers: dict[int, int] = field(default_factory=dict)
    """Parser row number -> 1-based grid row (as shown in the grid's # column)."""


def grid_fingerprint(rows: Sequence[Sequence[object]]) -> str:
    """A stable hash of the grid content, to parse each distinct content only once."""
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def clean_grid_rows(raw: object) -> list[GridRow]:
    """Validate the grid's return value: a list of [index, id, product, url]."""
    if not isinstance(raw, list):
        return []
    rows: list[GridRow] = []
    for item in raw:
        if not isinstance(item, list | tuple) or len(item) != 4:
            continue
        index, row_id, product, url = item
        try:
            position = int(index)
        except (TypeError, ValueError):
            continue
        product_text = "" if product is None else str(product)
        url_text = "" if url is None else str(url)
        if product_text.strip() or url_text.strip():
            rows.append((position, str(row_id), product_text, url_text))
    return rows


def grid_text(rows: Sequence[GridRow]) -> tuple[str, dict[int, GridRow]]:
    """The grid as TSV with its header row, and parser row number -> grid row.

    The parser numbers rows as a sheet does (header row is 1), so data line k is row k + 1.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow([GRID_PRODUCT, GRID_URL])
    by_number: dict[int, GridRow] = {}
    for line, row in enumerate(rows, start=2):
        writer.writerow([_one_line(row[2]), _one_line(row[3])])
        by_number[line] = row
    return buffer.getvalue(), by_number


def _one_line(text: str) -> str:
    # Cells never hold line breaks or tabs that matter: they separate URLs at most.
    return text.replace("\r", " ").replace("\n", " ").replace("\t", " ")


def parse_grid(rows: Sequence[GridRow], *, max_rows: int | None = None) -> GridParse:
    """Parse the grid's rows with the normal parser; map reasons back to grid cells."""
    from downloader.inputs import InputError

    if not rows:
        return GridParse(parsed=None)
    text, by_number = grid_text(rows)
    try:
        parsed = parse_text(
            text, product_column=GRID_PRODUCT, url_column=GRID_URL, max_rows=max_rows
        )
    except InputError as exc:
        return GridParse(parsed=None, error=str(exc), rows=len(rows))
    result = GridParse(parsed=parsed, rows=len(rows))
    for number, row in by_number.items():
        result.row_numbers[number] = row[0] + 1
    for rejected in parsed.rejected:
        grid_row = by_number.get(rejected.row)
        if grid_row is None:
            continue
        column = reason_column(rejected.reason)
        result.invalid[column].setdefault(grid_row[1], rejected.reason)
    return result


def reason_column(reason: str) -> str:
    """Which cell a rejection reason is about: "product" or "url"."""
    return "product" if reason.lower().startswith("product") else "url"


def header_synonyms() -> dict[str, list[str]]:
    """Normalised header names the grid's paste handler recognises (same as the parser)."""
    return {"product": list(PRODUCT_SYNONYMS), "url": list(URL_SYNONYMS)}


def thumbnail(storage: Storage, key: str, max_px: int = 320) -> bytes:
    """A small JPEG/PNG of a stored image for the gallery, or a placeholder PNG.

    Decoding stays within the pixel limit whatever the stored file says: every frame's declared
    size is checked first (as when it was fetched, for files stored before that check), Pillow's
    own size is checked again, only the first frame of an animation is decoded, and a JPEG is
    scaled down while it is decoded. A file that is refused or does not decode gets the
    placeholder, never its own bytes (st.image would decode those again in the server).
    """
    from PIL import ImageOps

    from downloader.fetch.sniff import (
        HEAD_BYTES,
        MAX_IMAGE_PIXELS,
        PIL_FORMATS,
        SniffError,
        image_info,
        pillow_image,
    )

    data = storage.read_bytes(key)
    try:
        info = image_info(None, data[:HEAD_BYTES], data)
    except SniffError:
        return _placeholder(max_px, "not shown")
    Image = pillow_image()  # the pixel limit set, AVIF support loaded
    try:
        with Image.open(io.BytesIO(data), formats=[PIL_FORMATS[info.format]]) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                return _placeholder(max_px, "not shown")
            img.draft("RGB", (max_px, max_px))  # cheap JPEG downscale while decoding
            img.thumbnail((max_px, max_px))  # decodes the current (first) frame only
            frame = ImageOps.exif_transpose(img) or img  # on the small image: no big copy
            frame = _to_display(frame, img.info.get("icc_profile"))
            out = io.BytesIO()
            if frame.mode in ("RGBA", "LA", "P", "PA"):
                frame.convert("RGBA").save(out, format="PNG", optimize=False)
            else:
                frame.convert("RGB").save(out, format="JPEG", quality=80)
            return out.getvalue()
    except Exception:  # Pillow raises many types for a file it cannot decode
        return _placeholder(max_px, "no preview")


def _to_display(image: Any, icc: bytes | None) -> Any:
    """`image` in a mode a browser shows as intended: CMYK (and other profiled images) through
    the embedded ICC profile to sRGB, 16-bit greyscale scaled to 8 bits."""
    from PIL import ImageCms

    if icc and image.mode in ("CMYK", "RGB", "L"):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            target = ImageCms.createProfile("sRGB")
            output = "RGB" if image.mode != "L" else "L"
            converted = ImageCms.profileToProfile(image, source, target, outputMode=output)
            return converted or image
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a damaged profile: Pillow's own conversion below
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return image.convert("I").point(lambda value: value / 256).convert("L")
    return image


@functools.cache
def _placeholder(max_px: int, text: str) -> bytes:
    """A plain grey PNG with a word or two, shown instead of an image that is not decoded."""
    from PIL import Image, ImageDraw

    size = (max_px, max_px * 3 // 4)
    image = Image.new("RGB", size, (236, 236, 236))
    ImageDraw.Draw(image).text((size[0] // 2, size[1] // 2), text, fill=(90, 90, 90), anchor="mm")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def find_products(
    db: Database, job_id: str, text: str | None = None, limit: int = 24
) -> list[tuple[str, int]]:
    """(product number, image count) of a job's products in input order, optionally matching
    `text`; reads the product table only (no image aggregates), for pickers and buttons."""
    from sqlalchemy import select
    from sqlmodel import col

    from downloader.models import Product

    query = (
        select(col(Product.number), col(Product.image_count))
        .where(col(Product.job_id) == job_id)
        .order_by(col(Product.position))
        .limit(limit)
    )
    if text and text.strip():
        query = query.where(col(Product.number).ilike(f"%{text.strip()}%"))
    with db.read() as session:
        return [(str(number), int(count)) for number, count in session.execute(query).all()]
