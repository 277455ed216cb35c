"""Hostile product numbers in ZIPs (Windows device names, case twins) and a retried old job's
place in the queue.

Real parts: a SQLite file, the local media folder, the engine in-process and the loopback
image server; the queue is read with the real claim function.
"""

from __future__ import annotations

import hashlib
import io
import time
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import text

from downloader import jobs, queue
from downloader.db import Database
from downloader.inputs import parse_text
from tests.support.imageserver import ImageServer
from tests.test_abuse import read_csv, run_engine
from tests.test_crash import in_process_services

# Written out here rather than imported, so the test does not trust the code's own list.
PORTS = {f"{port}{digit}" for port in ("COM", "LPT") for digit in "123456789"}
DEVICE_NAMES = {"CON", "PRN", "AUX", "NUL"} | PORTS
HOSTILE_PRODUCTS = ["CON", "nul", "Com1", "abc", "ABC"]


def is_device_name(segment: str) -> bool:
    """Windows treats `CON`, `con.txt`, `CON .`, `Com1.tar.gz` … as the device."""
    stem = segment.split(".", 1)[0].rstrip(" .")
    return stem.upper() in DEVICE_NAMES or segment.rstrip(" .").upper() in DEVICE_NAMES


def assert_safe_names(names: list[str], what: str) -> None:
    for name in names:
        for segment in name.split("/"):
            assert not is_device_name(segment), f"{what}: {name!r} has a Windows device name"
    folded: dict[str, str] = {}
    for name in names:
        other = folded.setdefault(name.casefold(), name)
        assert other == name, f"{what}: {other!r} and {name!r} are one file ignoring case"


def test_device_names_and_case_twins_get_safe_distinct_folders_in_every_zip(
    tmp_path: Path, image_server: ImageServer
) -> None:
    s = image_server
    lines = ["Product Number\tImage URL"]
    for index, product in enumerate(HOSTILE_PRODUCTS):
        lines.append(f"{product}\t{s.url(f'/img/{product}-{index}-a.jpg')}")
        lines.append(f"{product}\t{s.url(f'/img/{product}-{index}-b.png')}")
    services = in_process_services(tmp_path)
    job = jobs.create_job(services.db, parse_text("\n".join(lines)))
    assert job.products == len(HOSTILE_PRODUCTS)  # abc and ABC are two products
    run_engine(services, job.id)
    assert jobs.job_counts(services.db, job.id).done == 2 * len(HOSTILE_PRODUCTS)

    master = zipfile.ZipFile(
        io.BytesIO(b"".join(jobs.job_zip(services.db, services.storage, job.id)))
    )
    names = master.namelist()
    assert_safe_names(names, "master ZIP")
    assert len(names) == 2 * len(HOSTILE_PRODUCTS) + 1

    # The manifest keeps each product number as typed and names the file of every row: the
    # file sits in its product's folder, whose name is the file name's prefix.
    manifest = read_csv(master.read("manifest.csv"))
    header = manifest[0]
    rows = [dict(zip(header, line, strict=True)) for line in manifest[1:]]
    assert [row["product"] for row in rows] == [p for p in HOSTILE_PRODUCTS for _ in (1, 2)]
    folders: dict[str, str] = {}
    for row in rows:
        assert row["status"] == "done"
        folder = row["file"].rsplit("_", 1)[0]
        assert folders.setdefault(row["product"], folder) == folder
        data = master.read(f"{folder}/{row['file']}")
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
    assert len({folder.casefold() for folder in folders.values()}) == len(HOSTILE_PRODUCTS)
    assert folders["abc"] == "abc"  # an ordinary name is kept; its later twin is renamed

    # Product ZIPs: the same file names as in the master ZIP, and a safe download name.
    product_folders = jobs.product_folders(services.db, job.id, HOSTILE_PRODUCTS)
    assert product_folders == folders
    download_names = []
    for product in HOSTILE_PRODUCTS:
        archive = zipfile.ZipFile(
            io.BytesIO(jobs.product_zip_bytes(services.db, services.storage, job.id, product))
        )
        entries = archive.namelist()
        assert_safe_names(entries, f"product ZIP of {product}")
        own = read_csv(archive.read("manifest.csv"))
        files = sorted(line[header.index("file")] for line in own[1:])
        assert files == sorted(e for e in entries if e != "manifest.csv")
        assert files == sorted(r["file"] for r in rows if r["product"] == product)
        download_names.append(jobs.zip_file_name(job, product, folder=product_folders[product]))
        assert not is_device_name(jobs.zip_file_name(job, product))  # without the lookup too
    assert_safe_names(download_names, "product ZIP download names")
    assert download_names == [f"{folders[p]}.zip" for p in HOSTILE_PRODUCTS]

    # The job page's gallery names the same files.
    for product in HOSTILE_PRODUCTS:
        shown = {info.file for info in jobs.product_images(services.db, job.id, product)}
        assert shown == {r["file"] for r in rows if r["product"] == product}


@pytest.mark.parametrize(
    ("product", "expected"),
    [
        ("CON", "CON_"),
        ("con.txt", "con_.txt"),
        ("Com1.tar.gz", "Com1_.tar.gz"),
        ("LPT9", "LPT9_"),
        ("CON .", "CON_"),
        ("nul...", "nul_"),
        ("AUX  ", "AUX_"),
        ("COM\u00b9", "COM\u00b9_"),  # Windows counts superscript digits too
        ("CONIN$", "CONIN$_"),
        ("COM10", "COM10"),  # not a device
        ("CONSOLE", "CONSOLE"),
        ('a/b\\c:d*e?f"g<h>i|j', "a_b_c_d_e_f_g_h_i_j"),
        ("..", "product"),
        ("", "product"),
        (".hidden", "hidden"),
        ("tab\there", "tab_here"),
        ("Größe", "Größe"),  # letters of any language are kept
        ("x" * 300, "x" * 120),
    ],
)
def test_folder_name_is_one_safe_path_segment(product: str, expected: str) -> None:
    from downloader.naming import folder_name

    assert folder_name(product) == expected


def test_folder_names_are_unique_ignoring_case_in_product_order() -> None:
    from downloader.naming import unique_folder_names

    assert unique_folder_names(["abc", "ABC", "abc-2", "Abc", "CON", "con"]) == [
        "abc",
        "ABC-2",
        "abc-2-2",
        "Abc-3",
        "CON_",
        "con_-2",
    ]
    # many twins of one name: each gets the next number (no quadratic search)
    twins = unique_folder_names(["ab"] * 5000)
    assert twins[:3] == ["ab", "ab-2", "ab-3"] and len({t.casefold() for t in twins}) == 5000
    # a suffix never makes a name longer than the limit
    long = unique_folder_names(["y" * 200, "Y" * 200])
    assert long[1] == "Y" * 118 + "-2" and len(long[1].encode()) <= 120


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_database_from_before_gets_folders_and_queue_times_on_upgrade(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """Products and jobs written at revision 0002 are given their folder names (in product
    order, unique ignoring case) and their place in the queue (their creation time)."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    db = Database(url)
    try:
        db._upgrade_with_alembic("0002")
        with db.write_engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO job (id, name, source, status, created_at, products, images,"
                    " rejected_rows, duplicates_removed, created_by, input_sha256)"
                    " VALUES ('j1', '', '', 'completed', 1000.5, 3, 0, 0, 0, '', '')"
                )
            )
            for position, number in enumerate(["abc", "CON", "ABC"], start=1):
                conn.execute(
                    text(
                        "INSERT INTO product (job_id, number, position, image_count)"
                        " VALUES ('j1', :number, :position, 0)"
                    ),
                    {"number": number, "position": position},
                )
        db._upgrade_with_alembic("head")
        with db.engine.connect() as conn:
            folders = conn.execute(
                text("SELECT number, folder FROM product ORDER BY position")
            ).all()
            queued_at = conn.execute(text("SELECT queued_at FROM job")).scalar_one()
    finally:
        db.dispose()
    assert [tuple(row) for row in folders] == [("abc", "abc"), ("CON", "CON_"), ("ABC", "ABC-2")]
    assert queued_at == 1000.5


# ---------------------------------------------------------------- retry and the queue


def test_retrying_an_old_job_puts_it_behind_the_jobs_queued_since(
    tmp_path: Path, image_server: ImageServer
) -> None:
    s = image_server
    services = in_process_services(tmp_path)
    db = services.db
    old = jobs.create_job(
        db,
        parse_text(
            f"Product\tURL\nA1\t{s.url('/img/a1.jpg')}\n"
            f"A1\t{s.url('/status/404')}\nA2\t{s.url('/status/410')}"
        ),
    )
    run_engine(services, old.id)
    counts = jobs.job_counts(db, old.id)
    assert (counts.done, counts.failed) == (1, 2)

    time.sleep(0.01)  # a later creation time, whatever the clock's resolution
    new = jobs.create_job(
        db, parse_text(f"Product\tURL\nB1\t{s.url('/img/b1.jpg')}\nB2\t{s.url('/img/b2.jpg')}")
    )
    assert jobs.retry_failed(db, old.id) == 2

    # The job queued before the retry takes the first turn, then the retried images theirs
    # (fair share: turns alternate between active jobs, in claim order).
    first = queue.claim(db, "test-worker", 1, 30)
    assert {c.job_id for c in first} == {new.id}, "the retried old job jumped the queue"
    second = queue.claim(db, "test-worker", 10, 30)
    assert sorted(c.job_id for c in second) == sorted([old.id, old.id, new.id])

    # The job list still shows when the old job was created.
    assert jobs.get_job(db, old.id).created_at == old.created_at
