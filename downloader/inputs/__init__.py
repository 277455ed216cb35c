"""Turn pasted text or an uploaded CSV/TSV/XLSX into a validated (product, image URL) table.

Import from here; the submodules are implementation:

- model: InputError, RejectedRow, ParsedInput and the limits;
- decoding: file kind (XLSX by its bytes) and text encoding (BOM, UTF-8, UTF-16, cp1252);
- tabular: delimited text to a raw table of strings (pyarrow, pandas' C parser as fallback);
- workbook: XLSX to the same raw table (python-calamine when installed, else openpyxl);
- columns: header row, synonyms, wide layouts, content-based guessing, caller overrides;
- expand: one row per URL (wide layouts stacked, multi-URL cells split);
- validate: product and URL rules, duplicate URLs within a product, positions;
- api: the entry points below.

Row numbers are the ones the person sees in their sheet: the header is row 1, a quoted cell
spanning lines is one row, blank rows keep their number.
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
