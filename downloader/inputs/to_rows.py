"""A parsed input as the rows of the job it makes (`JobRows`, plain values for
`jobs.insert_job`).

The pandas side of creating a job (counting products, the hosts of the URLs, the input's
fingerprint), apart from the database side, so that a process can make the rows without
loading SQLAlchemy and another insert them without loading pandas (cli_run.py forks a parser
beside `run`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pandas as pd

from downloader.job_rows import JobRows

from .model import ParsedInput, RejectedRow

ROWS_CHUNK = 20_000  # image rows made at a time


def job_rows(parsed: ParsedInput, fingerprint: str | None = None) -> JobRows:
    """The job `parsed` makes (`fingerprint`: its input_fingerprint, when the caller has it
    already). The image rows are made chunk by chunk as `insert_job` reads them: at a
    million rows a whole list of them would hold ~200 MB."""
    frame = parsed.frame
    counts = frame.groupby("product", sort=False).size()
    products = list(zip(counts.index.tolist(), counts.astype("int64").tolist(), strict=True))
    return JobRows(
        fingerprint=fingerprint or input_fingerprint(parsed),
        products=products,
        images=len(frame),
        image_chunks=_image_chunks(frame, parsed.extras),
        rejected=[_as_tuple(r) for r in parsed.rejected],
        duplicates=[_as_tuple(r) for r in parsed.duplicates],
        extra_columns=list(parsed.extra_columns),
    )


def _as_tuple(row: RejectedRow) -> tuple[int, str, str, str]:
    return (row.row, row.reason, row.product, row.url)


def input_fingerprint(parsed: ParsedInput) -> str:
    """A stable hash of the rows to queue, so `run` on the same input resumes its job."""
    frame = parsed.frame
    digest = hashlib.sha256()
    # Row hashes don't depend on other rows, so hashing in slices gives the same digest
    # without a whole-table copy of the strings (tens of MB at 100,000 rows).
    for first in range(0, len(frame), ROWS_CHUNK):
        part = frame.iloc[first : first + ROWS_CHUNK][["product", "url"]]
        digest.update(pd.util.hash_pandas_object(part, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def _image_chunks(
    frame: pd.DataFrame, extras: pd.DataFrame | None
) -> Iterator[list[tuple[str, int, str, str, int, str | None]]]:
    for first in range(0, len(frame), ROWS_CHUNK):
        chunk = frame.iloc[first : first + ROWS_CHUNK]
        rows = chunk["source_row"].astype("int64").tolist()
        yield list(
            zip(
                chunk["product"].tolist(),
                chunk["position"].astype("int64").tolist(),
                chunk["url"].tolist(),
                _hosts(chunk["url"]),
                rows,
                _extras(extras, rows),
                strict=True,
            )
        )


def _extras(extras: pd.DataFrame | None, rows: list[int]) -> list[str | None]:
    """Each source row's other columns as a JSON object (blank cells left out), or None."""
    if extras is None:
        return [None] * len(rows)
    names = list(extras.columns)
    found: list[str | None] = []
    for values in extras.loc[rows].itertuples(index=False, name=None):
        cells = {name: value for name, value in zip(names, values, strict=True) if value}
        found.append(json.dumps(cells, ensure_ascii=False) if cells else None)
    return found


def _hosts(urls: pd.Series) -> list[str]:
    """The lower-cased host[:port] of each URL, by pyarrow's vectorised RE2 (no row loop)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    found = pc.extract_regex(
        pa.array(urls.astype(str).tolist(), type=pa.string()),
        r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(?P<host>[^/?#]*)",
    )
    hosts = pc.utf8_lower(pc.struct_field(found, "host")).fill_null("")
    return [host[:300] for host in hosts.to_pylist()]
