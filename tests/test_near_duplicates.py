"""Near-duplicates within a product (issue 26): with VERIFY_IMAGES=full every image is decoded
and hashed (dHash), and when its product settles the smaller copy of a picture the product
already holds at a larger size is marked `duplicate` of it, so the ZIP holds it once.

Served by a loopback image server and downloaded by the real engine into a real SQLite file.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from sqlalchemy import select

from downloader import jobs
from downloader.engine import Engine
from downloader.inputs import parse_text
from downloader.models import IMAGE
from downloader.near_duplicates import (
    MAX_DISTANCE,
    Candidate,
    distance,
    find,
    signed64,
    unsigned64,
)
from downloader.services import build_services
from downloader.settings import load_settings
from tests.support.image_samples import encode, picture
from tests.support.imageserver import ImageServer, Reply, image_server  # noqa: F401

BIG_PNG = encode(picture((480, 360)), "PNG")
SMALL_JPEG = encode(picture((120, 90)), "JPEG", quality=85)
OTHER_PNG = encode(picture((480, 360)).rotate(90), "PNG")


def serving(body: bytes) -> Callable[[object], Reply]:
    return lambda req: Reply(body=body)


def run_product(
    image_server: ImageServer,  # noqa: F811
    tmp_path: Path,
    verify: str,
    bodies: list[bytes],
) -> tuple[list[tuple[int, str, int | None, str | None]], list[str], dict[int, str | None]]:
    """One product P1 with `bodies` at positions 1, 2, ... through the engine: each image's
    (position, status, duplicate_of position, error), the ZIP's entries, the storage keys."""
    for index, body in enumerate(bodies, start=1):
        image_server.add_route(rf"/{verify}/{index}", serving(body))
    services = build_services(
        load_settings(
            database_url=f"sqlite:///{tmp_path / 'app.db'}",
            media_root=str(tmp_path / "media"),
            allowed_private_networks=["127.0.0.0/8"],
            download_qps=0,
            verify_images=verify,
        )
    )
    text = "Product\tURL\n" + "\n".join(
        f"P1\t{image_server.url(f'{verify}/{index}')}" for index in range(1, len(bodies) + 1)
    )
    job = jobs.create_job(services.db, parse_text(text))
    engine = Engine(services.db, services.storage, services.settings, job_id=job.id, share=1.0)

    async def run() -> None:
        with anyio.fail_after(60):  # a generous bound on a hang, not a speed assertion
            await engine.run(until_idle=True)

    anyio.run(run)
    with services.db.read() as session:
        rows = session.execute(
            select(
                IMAGE.c.id,
                IMAGE.c.position,
                IMAGE.c.status,
                IMAGE.c.duplicate_of_id,
                IMAGE.c.error,
                IMAGE.c.storage_key,
            )
            .where(IMAGE.c.job_id == job.id)
            .order_by(IMAGE.c.position)
        ).all()
    position_of = {row.id: row.position for row in rows}
    images = [
        (row.position, row.status, position_of.get(row.duplicate_of_id), row.error) for row in rows
    ]
    zipped = b"".join(jobs.job_zip(services.db, services.storage, job.id))
    with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
        names = sorted(name for name in archive.namelist() if name != "manifest.csv")
    return images, names, {row.position: row.storage_key for row in rows}


def test_the_smaller_copy_of_a_picture_is_a_near_duplicate_of_the_larger(
    image_server: ImageServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    # the small JPEG comes first: the larger copy is kept whatever the input order
    images, names, _ = run_product(image_server, tmp_path, "full", [SMALL_JPEG, BIG_PNG, OTHER_PNG])
    assert images == [
        (
            1,
            "duplicate",
            2,
            "The same picture as position 2 at a smaller size (near-duplicate).",
        ),
        (2, "done", None, None),
        (3, "done", None, None),
    ]
    assert names == ["P1/P1_2.png", "P1/P1_3.png"]


def test_the_near_duplicates_file_is_deleted_from_storage(
    image_server: ImageServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    images, _, keys = run_product(image_server, tmp_path, "full", [BIG_PNG, SMALL_JPEG])
    assert [status for _, status, _, _ in images] == ["done", "duplicate"]
    assert keys[2] is None  # like an exact duplicate: no file of its own
    assert keys[1] is not None
    media = [p for p in (tmp_path / "media").rglob("*") if p.is_file()]
    assert len(media) == 1, media


def test_without_decoding_nothing_is_marked(
    image_server: ImageServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    images, names, _ = run_product(
        image_server, tmp_path, "structure", [BIG_PNG, SMALL_JPEG, OTHER_PNG]
    )
    assert images == [(1, "done", None, None), (2, "done", None, None), (3, "done", None, None)]
    assert len(names) == 3


@pytest.mark.parametrize("value", [0, 1, 2**63 - 1, 2**63, 2**64 - 1])
def test_hashes_fit_a_signed_bigint_and_keep_their_bits(value: int) -> None:
    stored = signed64(value)
    assert -(2**63) <= stored < 2**63
    assert unsigned64(stored) == value
    assert distance(stored, signed64(value ^ 0b101)) == 2
    assert MAX_DISTANCE == 6


def test_on_a_tie_in_pixels_the_later_position_is_the_duplicate_and_shapes_must_agree() -> None:
    same = 0x0123_4567_89AB_CDEF
    images = [
        Candidate(10, 1, 200, 100, signed64(same)),
        Candidate(11, 2, 200, 100, signed64(same ^ 0b111)),  # same size, 3 bits apart
        Candidate(12, 3, 100, 100, signed64(same)),  # same hash, another shape: kept
    ]
    assert find(images) == [
        (11, 10, "The same picture as position 1 at the same size (near-duplicate)."),
    ]
    assert find([images[0], Candidate(13, 2, 100, 50, signed64(same ^ 0b1111111))]) == []
