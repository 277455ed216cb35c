"""Turn pasted text or an uploaded CSV/TSV/XLSX into a validated (product, image URL) table.

Import from here; the submodules are implementation:

- decoding: file kind and text encoding; tabular: text to a raw table; workbook: XLSX to a
  raw table; columns: header, synonyms, wide layouts, overrides; expand: one row per URL;
  validate: product/URL rules, duplicates, positions; api: the entry points below.
"""

from .api import parse_bytes, parse_path, parse_text, sample_csv, sheet_names
from .model import InputError, ParsedInput, RejectedRow

__all__ = [
    "InputError",
    "ParsedInput",
    "RejectedRow",
    "parse_bytes",
    "parse_path",
    "parse_text",
    "sample_csv",
    "sheet_names",
]
