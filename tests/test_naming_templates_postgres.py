"""Any product number and the input's other columns on PostgreSQL (issue 23)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from downloader import jobs
from downloader.db import Database
from downloader.export_names import job_options
from downloader.inputs import parse_text
from downloader.inputs.model import MAX_PRODUCT_CHARS
from downloader.job_options import JobOptions
from downloader.models import IMAGE, PRODUCT

pytestmark = pytest.mark.postgres


def test_products_as_typed_and_extra_columns_are_stored(pg_db: Database) -> None:
    longest = "Ä" * MAX_PRODUCT_CHARS  # multi-byte letters up to the limit
    text = (
        "SKU\tImage URL\tVariant Color\r\n"
        "AB/12.5\thttps://img.example.invalid/a.jpg\tRed\r\n"
        "Größe 42\thttps://img.example.invalid/b.jpg\t\r\n"
        f"{longest}\thttps://img.example.invalid/c.jpg\tBlue\r\n"
    )
    job = jobs.create_job(
        pg_db, parse_text(text), options=JobOptions(naming="{product}-{variant_color}")
    )
    with pg_db.read() as session:
        products = session.execute(
            select(PRODUCT.c.number, PRODUCT.c.folder).order_by(PRODUCT.c.position)
        ).all()
        extras = session.execute(select(IMAGE.c.extra).order_by(IMAGE.c.id)).scalars().all()
    assert [p for p, _ in products] == ["AB/12.5", "Größe 42", longest]
    assert [f for _, f in products][:2] == ["AB_12.5", "Größe 42"]
    assert [json.loads(e) if e else None for e in extras] == [
        {"Variant Color": "Red"},
        None,
        {"Variant Color": "Blue"},
    ]
    options = job_options(pg_db, job.id)
    assert (options.naming, options.extra_columns) == (
        "{product}-{variant_color}",
        ["Variant Color"],
    )
