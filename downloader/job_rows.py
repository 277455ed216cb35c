"""`JobRows`: a job as plain values, between the parser's side and the database's side."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace


@dataclass
class JobRows:
    """Everything a job is made of, as plain values: what `insert_job` writes, without pandas.

    `inputs.to_rows.job_rows` makes it from a parsed input. Builtins only (neither pandas nor
    SQLAlchemy is needed to load it): `run` has a small input made into JobRows in a forked
    process while it loads its database and engine code, and gets it pickled (cli_run.py)."""

    fingerprint: str
    products: list[tuple[str, int]]  # (product number, image count), in input order
    images: int
    # (product number, position, url, host, source row, extra), in chunks
    # (inputs.to_rows.ROWS_CHUNK); extra: the row's other columns as JSON, or None
    image_chunks: Iterable[list[tuple[str, int, str, str, int, str | None]]]
    # (row, reason, product, url) of each row left out, and of each duplicate
    rejected: list[tuple[int, str, str, str]] = field(default_factory=list)
    duplicates: list[tuple[int, str, str, str]] = field(default_factory=list)
    # the input's other columns (display names, input order): image.extra's keys
    extra_columns: list[str] = field(default_factory=list)

    def materialized(self) -> JobRows:
        """The same rows with every chunk made now (to send them to another process)."""
        return replace(self, image_chunks=list(self.image_chunks))
