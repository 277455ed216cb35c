"""File names and the input's own columns on an export's manifest rows (issue 23).

`name_rows` walks a job's rows in product then position order (as downloader.exports reads
them) and gives each row with a file its name from the job's naming template
(downloader.templates.Namer), each duplicate the name of its original, and each row the
values of the input's other columns. Every export (master ZIP, product ZIPs, manifest.csv)
goes through here, so they agree.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import select

from downloader.db import Database
from downloader.job_options import JobOptions
from downloader.manifest import ManifestRow
from downloader.models import JOB
from downloader.naming import folder_name
from downloader.templates import Namer

# (manifest row without file/duplicate_of/extra, the file's extension or None, the image's
# extra JSON, the original's position when the row is a duplicate)
RawRow = tuple[ManifestRow, str | None, str | None, int | None]


def job_options(db: Database, job_id: str) -> JobOptions:
    """The job's output options (defaults for a job stored without any)."""
    with db.read() as session:
        text = session.execute(select(JOB.c.options).where(JOB.c.id == job_id)).scalar()
    return JobOptions.from_json(text)


def _extra_values(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def name_rows(
    rows: Iterable[RawRow], options: JobOptions, *, only_product: str | None = None
) -> Iterator[ManifestRow]:
    """The rows with their file names, duplicate_of and extra values filled in.

    `only_product`: yield only that product's rows (the flat layout names across the whole
    job, so a product ZIP walks every row to name its own the same way as the master ZIP).
    A duplicate whose original comes later in its product is held back until the original
    is named (at most that product's rows), so the order stays product then position.
    """
    namer = Namer(options.naming, options.layout)
    columns = options.extra_columns
    current: str | None = None
    names: dict[int, str] = {}
    pending: deque[tuple[ManifestRow, int | None]] = deque()

    def ready(final: bool) -> Iterator[ManifestRow]:
        while pending:
            row, original = pending[0]
            if original is not None and original not in names and not final:
                return
            pending.popleft()
            if original is not None:
                row.duplicate_of = names.get(original)
            if only_product is None or row.product == only_product:
                yield row

    for row, ext, extra_text, original in rows:
        if row.product != current:
            yield from ready(final=True)
            namer.new_product()
            names.clear()
            current = row.product
        extra = _extra_values(extra_text)
        if columns:
            row.extra = tuple(str(extra.get(name, "")) for name in columns)
        if row.file is None and row.status == "done" and ext:
            row.file = namer.name(
                folder=row.folder or folder_name(row.product),
                position=row.position,
                url=row.source_url,
                ext=ext,
                sha256=row.sha256,
                extra=extra,
            )
            names[row.position] = row.file
        pending.append((row, original))
        yield from ready(final=False)
    yield from ready(final=True)
