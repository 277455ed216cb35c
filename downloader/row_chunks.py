"""Read an export's rows a chunk at a time, each chunk in its own short read session.

An export stream (a ZIP, the manifest, the failed or rejected rows) lives as long as its
client takes to read it, and a client that stops reading keeps it alive until the server
gives up on it. A stream that held one session for its whole life held a pooled connection
(and an open read transaction) all that time: fifteen stalled clients took every connection
of the pool, and every page, download and the embedded engine then waited on it. Here each
chunk is fetched in a session that is closed before any of its rows is handed on, and the
next chunk continues after the last row's key (keyset pagination, never OFFSET, which
would rescan everything before it).

Rows that change between chunks (a live job) are read as they are when their chunk is
fetched; each row is still read whole, once, and the key order never skips or repeats one,
because the keys (positions, ids) never change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import Row, Select, and_, or_
from sqlalchemy.orm import Session

from downloader.db import Database
from downloader.models import IMAGE, PRODUCT

CHUNK_ROWS = 2000  # rows per short read session (a few hundred KB of manifest rows)

Key = TypeVar("Key")
Item = TypeVar("Item")


def keyset_chunks(
    db: Database,
    fetch: Callable[[Session, Key | None, int], Sequence[Item]],
    key: Callable[[Item], Key],
    *,
    chunk: int | None = None,
    start: Key | None = None,
) -> Iterator[Item]:
    """Every row `fetch` yields, chunk by chunk: `fetch(session, after, limit)` returns the
    first `limit` rows after key `after` (`start` first; None: from the very beginning), a
    full chunk whenever more rows exist. The session is closed before the chunk's rows are
    yielded."""
    chunk = chunk or CHUNK_ROWS
    after: Key | None = start
    while True:
        with db.read() as session:
            rows = fetch(session, after, chunk)
        yield from rows
        if len(rows) < chunk:
            return
        after = key(rows[-1])


_ImageKey = tuple[int, int, int]  # (product position, product id, image position)
_KEY_COLUMNS = 3


def image_rows_in_order(
    db: Database, query: Select[Any], *, chunk: int | None = None
) -> Iterator[tuple[Any, ...]]:
    """The rows of `query` (images joined to their products, one job, any filters) in product
    then image position order, chunk by chunk.

    A chunk is the rest of the last product seen (the (product_id, position) index), then the
    products after it (the (job_id, position) index of products, each product's images by
    the same image index), so every chunk costs about its own size, even for one product
    with a million images. `query` must not have an ORDER BY or LIMIT of its own.
    """
    keyed = query.add_columns(PRODUCT.c.position, IMAGE.c.product_id, IMAGE.c.position)

    def fetch(session: Session, after: _ImageKey | None, limit: int) -> list[Row[Any]]:
        rows: list[Row[Any]] = []
        following = keyed
        if after is not None:
            product_position, product_id, image_position = after
            rows = list(
                session.execute(
                    keyed.where(IMAGE.c.product_id == product_id, IMAGE.c.position > image_position)
                    .order_by(IMAGE.c.position)
                    .limit(limit)
                ).all()
            )
            following = keyed.where(PRODUCT.c.position > product_position)
        if len(rows) < limit:
            rows += session.execute(
                following.order_by(PRODUCT.c.position, IMAGE.c.position).limit(limit - len(rows))
            ).all()
        return rows

    def key(row: Row[Any]) -> _ImageKey:
        values = tuple(row)
        return (values[-3], values[-2], values[-1])

    # Positions start at 1: the first chunk is "the products after position 0", found
    # through the same indexes as every other chunk (no sort of the whole job up front).
    for row in keyset_chunks(db, fetch, key, chunk=chunk, start=(0, 0, 0)):
        yield tuple(row)[:-_KEY_COLUMNS]


def rows_in_key_order(
    db: Database,
    query: Select[Any],
    order: Any,
    unique: Any,
    *,
    chunk: int | None = None,
) -> Iterator[tuple[Any, ...]]:
    """The rows of `query` ordered by (`order`, `unique`) (two columns of its table, `unique`
    a unique one such as the id), chunk by chunk."""
    keyed = query.add_columns(order, unique).order_by(order, unique)

    def fetch(session: Session, after: tuple[Any, Any] | None, limit: int) -> list[Row[Any]]:
        page = keyed
        if after is not None:
            first, second = after
            page = page.where(or_(order > first, and_(order == first, unique > second)))
        return list(session.execute(page.limit(limit)).all())

    def key(row: Row[Any]) -> tuple[Any, Any]:
        values = tuple(row)
        return (values[-2], values[-1])

    for row in keyset_chunks(db, fetch, key, chunk=chunk):
        yield tuple(row)[:-2]
