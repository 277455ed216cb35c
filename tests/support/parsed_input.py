"""Helpers shared by the pasted-text input tests: a fake image host and views of a parse."""

from __future__ import annotations

from downloader.inputs import ParsedInput, RejectedRow

# .invalid never resolves, so nothing in these tests can reach a real host
IMG = "https://images.example.invalid"


def rows(parsed: ParsedInput) -> list[tuple[str, str, int, int]]:
    """The valid rows as (product, url, position, source_row) tuples, in frame order."""
    return list(parsed.frame.itertuples(index=False, name=None))


def reasons(entries: list[RejectedRow]) -> list[tuple[int, str]]:
    """(row number, reason) of each rejected or duplicate entry."""
    return [(entry.row, entry.reason) for entry in entries]
