"""Issue 18, item 4 at the level of the jobs service: export streams read their rows in short
chunks, so a stream whose reader stalls holds no database connection.

The end-to-end case (fifty stalled clients against `streamlit run app.py`) is in
tests/ui/test_hostile_slow_readers.py.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
from sqlalchemy import select
from sqlalchemy.pool import QueuePool

from downloader import jobs, manifest, queue, row_chunks
from downloader.engine import Engine
from downloader.inputs import parse_text
from downloader.jobs import details
from downloader.models import IMAGE, PRODUCT, ImageStatus
from downloader.services import Services, build_services
from downloader.settings import load_settings
from tests.support.imageserver import ImageServer, image_server  # noqa: F401

CHUNK = 4  # rows per short read in these tests: every export spans many chunks


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    built = build_services(
        load_settings(
            database_url=f"sqlite:///{tmp_path / 'app.db'}",
            media_root=str(tmp_path / "media"),
            allowed_private_networks=["127.0.0.0/8"],
            download_qps=0,
            backoff_base=0.05,
            max_retries=0,
        )
    )
    yield built
    built.db.dispose()


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(row_chunks, "CHUNK_ROWS", CHUNK)
    monkeypatch.setattr(details, "STREAM_BATCH", CHUNK)
    monkeypatch.setattr(manifest, "CSV_CHUNK_SIZE", 64)  # CSVs come out in small pieces


def finished_job(services: Services, server: ImageServer) -> str:
    """24 images of ~40 KB in products of 1 to 9 images, 3 failed (404), 60 rejected rows."""
    lines = ["Product Number\tImage URL"]
    sizes = [9, 1, 1, 5, 2, 6]
    for p, size in enumerate(sizes):
        lines += [
            f"P{p}\t{server.url(f'/img/p{p}-{i}.jpg?w=160&h=120', host=i % 3)}" for i in range(size)
        ]
    lines += [f"P{p}\t{server.url(f'/status/404?p={p}')}" for p in (0, 3, 5)]
    lines += [f"BAD {i}\tftp://127.0.0.2/x/{i}.jpg" for i in range(60)]  # refused: not http(s)
    job = jobs.create_job(services.db, parse_text("\r\n".join(lines), max_rows=200))
    engine = Engine(services.db, services.storage, services.settings, job_id=job.id, share=1.0)
    anyio.run(lambda: engine.run(until_idle=True))
    assert jobs.get_job(services.db, job.id).status == "completed"
    return job.id


def exports(
    services: Services, job_id: str
) -> dict[str, Callable[[], Iterator[bytes | memoryview]]]:
    db, storage = services.db, services.storage
    return {
        "master zip": lambda: jobs.job_zip(db, storage, job_id),
        "product zip": lambda: jobs.product_zip(db, storage, job_id, "P0"),
        "manifest csv": lambda: jobs.manifest_csv(db, job_id),
        "failed csv": lambda: jobs.failed_csv(db, job_id),
        "rejected csv": lambda: jobs.rejected_csv(db, job_id),
    }


@pytest.mark.usefixtures("small_chunks")
def test_an_export_whose_reader_stalls_holds_no_database_connection(
    services: Services,
    image_server: ImageServer,  # noqa: F811
) -> None:
    """Each export is started and read one piece (a client that then stops reading): no
    connection of the pool is checked out while it waits, and it still ends complete."""
    job_id = finished_job(services, image_server)
    pool = services.db.engine.pool
    assert isinstance(pool, QueuePool)
    for name, start in exports(services, job_id).items():
        stream = start()
        first = next(stream)
        assert pool.checkedout() == 0, f"the paused {name} holds a database connection"
        rest = list(stream)
        assert rest, f"{name}: the first piece should not be the whole export"
        body = b"".join(bytes(piece) for piece in [first, *rest])
        if name.endswith("zip"):
            assert zipfile.ZipFile(io.BytesIO(body)).testzip() is None
        assert pool.checkedout() == 0


@pytest.mark.usefixtures("small_chunks")
def test_more_paused_streams_than_the_pool_has_connections_do_not_block_other_reads(
    services: Services,
    image_server: ImageServer,  # noqa: F811
) -> None:
    """Twenty streams (the pool holds 5 + 10 overflow) each read one piece and wait; a
    twenty-first reader gets its answer at once, and every stream then finishes."""
    job_id = finished_job(services, image_server)
    starts = list(exports(services, job_id).values())
    streams = [starts[i % len(starts)]() for i in range(20)]
    for stream in streams:
        next(stream)
    assert jobs.get_job(services.db, job_id).images == 27
    assert jobs.job_counts(services.db, job_id).failed == 3
    for stream in streams:
        assert list(stream)


@pytest.mark.usefixtures("small_chunks")
def test_chunked_rows_come_out_once_in_product_then_position_order(
    services: Services,
) -> None:
    """Keyset chunks of 4 across products of 1 to 11 images: the same rows, in the same
    order, as one ordered query; rows that change between chunks are read as they are when
    their chunk is read, none skipped or repeated."""
    lines = []
    sizes = {"A": 11, "B": 1, "C": 4, "D": 1, "E": 7}
    for product, size in sizes.items():
        lines += [f"{product}\thttp://127.0.0.2/{product}/{i}.jpg" for i in range(size)]
    # the input interleaves products: image ids are not in manifest order
    lines = lines[::2] + lines[1::2]
    job = jobs.create_job(services.db, parse_text("\n".join(lines)))
    with services.db.read() as session:
        expected = [
            tuple(row)
            for row in session.execute(
                select(PRODUCT.c.number, IMAGE.c.position)
                .join(PRODUCT, PRODUCT.c.id == IMAGE.c.product_id)
                .where(IMAGE.c.job_id == job.id)
                .order_by(PRODUCT.c.position, IMAGE.c.position)
            )
        ]
    assert len(expected) == sum(sizes.values())

    rows = jobs.manifest_rows(services.db, job.id)
    seen = [next(rows) for _ in range(6)]  # one chunk and a half
    # every image still queued fails now, between two chunks of the stream
    claims = queue.claim(services.db, "test-worker", 100, 30, job_id=job.id)
    queue.record_results(
        services.db,
        "test-worker",
        [
            queue.Result(image_id=c.image_id, status=ImageStatus.FAILED, attempts=1, error_code="x")
            for c in claims
        ],
    )
    seen += list(rows)
    assert [(r.product, r.position) for r in seen] == expected
    # the first two chunks were read before the change, every later one after it
    assert [r.status for r in seen[: CHUNK * 2]] == ["queued"] * CHUNK * 2
    assert {r.status for r in seen[CHUNK * 2 :]} == {"failed"}

    only_e = list(jobs.manifest_rows(services.db, job.id, product="E"))
    assert [r.position for r in only_e] == list(range(1, 8))
    failed = details.failed_csv(services.db, job.id)
    assert b"".join(failed).count(b"\r\n") == 1 + len(expected)
