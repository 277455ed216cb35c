"""The public data types of the input parser: the error, a rejected row and the parsed result."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from downloader.errors import UserError

#: Longest product number, in characters (product.number is VARCHAR(128): migration 0007).
MAX_PRODUCT_CHARS = 128
#: Longest URL, in characters.
MAX_URL_CHARS = 2048
#: Raw cell text kept in a RejectedRow is cut to this many characters.
MAX_SHOWN_CHARS = 200
#: A cell longer than this makes the whole input unusable (Excel itself stops at 32,767).
MAX_CELL_CHARS = 100_000
#: The input's other columns carried to the job (image.extra), at most this many, each value
#: cut to MAX_EXTRA_CHARS characters.
MAX_EXTRA_COLUMNS = 50
MAX_EXTRA_CHARS = 1_000

#: Characters trimmed from cells and separating URLs within a cell: whitespace as Python sees
#: it (NBSP, ideographic space, ...) plus the zero-width space and BOM that web copies carry.
BLANKS = "".join(chr(code) for code in range(0x3001) if chr(code).isspace()) + "\u200b\ufeff"
#: A regex character class of BLANKS (literal characters: RE2 and Python read it alike).
BLANK_CLASS = "[" + BLANKS + "]"


class InputError(UserError, ValueError):
    """The input cannot be used at all; ``str(exc)`` is one readable line for a person."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


@dataclass(slots=True)
class RejectedRow:
    """One row (or one URL of a row) left out, with the reason a person can act on."""

    row: int
    """Source row number as the person sees it in their sheet (header row is 1)."""
    reason: str
    """Short human sentence, e.g. "Product number is empty"."""
    product: str
    """Raw product cell text, cut to 200 characters."""
    url: str
    """Raw URL text, cut to 200 characters."""


@dataclass
class ParsedInput:
    """A validated table of (product, URL) plus everything left out and how columns were chosen."""

    frame: pd.DataFrame
    """Valid rows only: product, url, position (1-based within the product), source_row."""
    rejected: list[RejectedRow] = field(default_factory=list)
    duplicates: list[RejectedRow] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    product_column: str | None = None
    url_column: str | None = None
    url_columns: list[str] = field(default_factory=list)
    ambiguous: bool = False
    source_rows: int = 0
    """Data rows read (not counting the header or blank rows)."""
    header: bool = False
    """Whether the first non-blank row was taken as a header row."""
    extra_columns: list[str] = field(default_factory=list)
    """The input's other columns (display names, input order), carried to each image."""
    extras: pd.DataFrame | None = None
    """Their stripped cell text, one column per name in extra_columns, indexed by source row."""

    @property
    def products(self) -> int:
        """Distinct product numbers among the valid rows."""
        if self.frame.empty:
            return 0
        return int(self.frame["product"].nunique())

    @property
    def images(self) -> int:
        """Valid image URLs (after duplicate removal)."""
        return len(self.frame)


def shown(text: object) -> str:
    """Cell text as kept in a RejectedRow: a string cut to MAX_SHOWN_CHARS."""
    if text is None:
        return ""
    return str(text)[:MAX_SHOWN_CHARS]
