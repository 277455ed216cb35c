"""Marketplace checks: warnings (never failures) about the file a ZIP holds for an image.

Per image, written with its result: the longest side under a minimum, more bytes than
allowed, a format not allowed, not square. They judge the output when the job converts (what
will be uploaded), the original otherwise. Across the job, read when exporting: the same
SHA-256 in PLACEHOLDER_PRODUCTS or more products is most likely a "no image" tile.
Each warning is "code: one short sentence"; the image's `warnings` column holds them as a
JSON list.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from sqlalchemy import func, select

from downloader.db import Database
from downloader.models import IMAGE, ImageStatus
from downloader.outputs.profile import CheckRules

PLACEHOLDER_PRODUCTS = 3  # one file in this many products: a probable placeholder
PLACEHOLDER_HASHES_MAX = 10_000  # bound the set read for one export
PLACEHOLDER = "placeholder: the same image is used by {count} products (a likely placeholder)."


def image_warnings(
    rules: CheckRules, *, fmt: str | None, size: int | None, width: int | None, height: int | None
) -> list[str]:
    """The rules this file breaks, one "code: sentence" each."""
    found: list[str] = []
    longest = max(width or 0, height or 0)
    if rules.min_side and width and height and longest < rules.min_side:
        found.append(f"min_side: the longest side is {longest} px, under {rules.min_side} px.")
    if rules.max_bytes and size is not None and size > rules.max_bytes:
        found.append(f"max_bytes: {size:,} bytes, more than {rules.max_bytes:,}.")
    if rules.formats and fmt and fmt not in rules.formats:
        found.append(f"format: {fmt} is not one of {', '.join(rules.formats)}.")
    if rules.square and width and height and width != height:
        found.append(f"square: {width}x{height} is not square.")
    return found


def warnings_json(found: list[str]) -> str | None:
    return json.dumps(found, ensure_ascii=False) if found else None


def stored_warnings(text: str | None) -> list[str]:
    """The warnings stored in an image's column (nothing for NULL or unreadable text)."""
    if not text:
        return []
    try:
        value = json.loads(text)
    except ValueError:
        return []
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def placeholder_hashes(db: Database, job_id: str) -> dict[str, int]:
    """SHA-256 -> product count of the files found in PLACEHOLDER_PRODUCTS or more products.

    Duplicates within a product count once (they are status duplicate, same hash)."""
    query = (
        select(IMAGE.c.sha256, func.count(IMAGE.c.product_id.distinct()))
        .where(
            IMAGE.c.job_id == job_id,
            IMAGE.c.status.in_((ImageStatus.DONE, ImageStatus.DUPLICATE)),
            IMAGE.c.sha256.is_not(None),
        )
        .group_by(IMAGE.c.sha256)
        .having(func.count(IMAGE.c.product_id.distinct()) >= PLACEHOLDER_PRODUCTS)
        .limit(PLACEHOLDER_HASHES_MAX)
    )
    with db.read() as session:
        return {sha: count for sha, count in session.execute(query).all()}


def all_warnings(stored: str | None, sha256: str | None, placeholders: dict[str, int]) -> list[str]:
    """An image's stored warnings plus the placeholder one when its file is one."""
    found = stored_warnings(stored)
    if sha256 and sha256 in placeholders:
        found.append(PLACEHOLDER.format(count=placeholders[sha256]))
    return found


def warning_counts(db: Database, job_id: str, limit: int = 100_000) -> dict[str, int]:
    """How many images have each kind of warning (at most `limit` images read), placeholder
    files counted per image."""
    counts: dict[str, int] = {}
    placeholders = placeholder_hashes(db, job_id)
    query = (
        select(IMAGE.c.warnings, IMAGE.c.sha256)
        .where(IMAGE.c.job_id == job_id, IMAGE.c.status == ImageStatus.DONE)
        .where(IMAGE.c.warnings.is_not(None) | IMAGE.c.sha256.in_(list(placeholders)))
        .limit(limit)
    )
    with db.read() as session:
        rows = session.execute(query).all()
    for text, sha in rows:
        for warning in all_warnings(text, sha, placeholders):
            code = warning.split(":", 1)[0]
            counts[code] = counts.get(code, 0) + 1
    return counts


def joined(found: Iterable[str]) -> str:
    """Warnings in one cell (manifest, report)."""
    return " | ".join(found)
