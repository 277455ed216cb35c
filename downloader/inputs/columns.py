"""Which row is the header and which columns hold the product number and the image URLs.

Header names are matched case-insensitively, ignoring spaces and punctuation, against the
synonyms below; wide layouts ("Image 1", "Image URL 2", ...) and the Shopify export
("Handle" + "Image Src" + "Variant Image") are recognised. Without a usable header the
columns are chosen by what their cells look like, and the choice is flagged as ambiguous so
that the UI can offer the two dropdowns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd

from .model import InputError

#: Header synonyms, normalised (lower case, letters and digits only), in order of preference.
PRODUCT_SYNONYMS = ("productnumber", "product", "productid", "sku", "handle")
IMAGE_SYNONYMS = ("imagesrc", "imageurl", "image", "variantimage")
URL_SYNONYMS = (*IMAGE_SYNONYMS, "url")
_WIDE = re.compile(r"^(imagesrc|imageurl|image|variantimage|url)(\d+)$")

#: Header names longer than this are cut (for the dropdowns).
MAX_NAME_CHARS = 100
#: Title rows a header may have above it.
MAX_TITLE_ROWS = 5
#: How many non-blank data rows the content-based detection looks at.
SAMPLE_ROWS = 1000
#: Share of a column's non-empty cells that must look like URLs (or product numbers).
MAJORITY = 0.5

URL_LIKE = r"(?i)^(?:[a-z][a-z0-9+.\-]*://|www\.|//)"
PRODUCT_LIKE = r"^[A-Za-z0-9_-]{1,64}$"


@dataclass
class Layout:
    """The detected (or overridden) reading of a raw table."""

    header_row: int | None
    """Row number of the header row, or None when the table has no header."""
    names: dict[int, str]
    """Display name of every non-empty column, by column position."""
    product: int
    url_positions: list[int]
    ambiguous: bool
    url_label: str = field(init=False)

    def __post_init__(self) -> None:
        self.url_label = url_label([self.names[pos] for pos in self.url_positions])

    @property
    def columns(self) -> list[str]:
        return list(self.names.values())

    @property
    def url_columns(self) -> list[str]:
        return [self.names[pos] for pos in self.url_positions]


def normalize(name: str) -> str:
    """Header text reduced for synonym matching: "Image URL 1" -> "imageurl1"."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def column_letter(position: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA (the sheet's own column letters)."""
    letters = ""
    position += 1
    while position:
        position, rest = divmod(position - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def url_label(names: list[str]) -> str:
    """One label for the URL column(s): "Image URL", "Image Src + Variant Image",
    "Image 1 … Image 5"."""
    if not names:
        return ""
    if len(names) == 1:
        return names[0]
    if len(names) == 2:
        return f"{names[0]} + {names[1]}"
    return f"{names[0]} … {names[-1]}"


def is_url_synonym(norm: str) -> bool:
    return norm in URL_SYNONYMS or _WIDE.match(norm) is not None


def _is_image_synonym(norm: str) -> bool:
    wide = _WIDE.match(norm)
    return norm in IMAGE_SYNONYMS or (wide is not None and wide.group(1) != "url")


def _share(cells: pd.Series, pattern: str) -> tuple[float, int]:
    """Share of non-empty cells matching ``pattern`` and the number of non-empty cells."""
    filled = cells[cells != ""]
    if filled.empty:
        return 0.0, 0
    return float(filled.str.contains(pattern, regex=True).mean()), len(filled)


def detect(sample: pd.DataFrame, positions: list[int]) -> Layout:
    """Detect the layout from the first non-blank rows (stripped cells).

    ``sample`` is indexed by row number, columns are positions; ``positions`` are the
    columns that hold anything at all in the whole table.
    """
    if sample.empty or not positions:
        raise InputError("The input is empty.")
    # The header is the first row naming a product or URL column; a report may put a title
    # row or two above it, so a later row counts too when it names both (and no URL came yet).
    for offset in range(min(MAX_TITLE_ROWS + 1, len(sample))):
        row = sample.iloc[offset]
        norms = {pos: normalize(str(row[pos])) for pos in positions}
        names_product = any(norm in PRODUCT_SYNONYMS for norm in norms.values())
        names_url = any(is_url_synonym(norm) for norm in norms.values() if norm)
        if (names_product or names_url) if offset == 0 else (names_product and names_url):
            header_row = int(sample.index[offset])
            return _from_header(header_row, row, norms, sample.iloc[offset + 1 :], positions)
        if any(re.match(URL_LIKE, str(row[pos])) for pos in positions):
            break
    first_row = int(sample.index[0])
    first = sample.iloc[0]
    rest = sample.iloc[1:]
    # No synonym: the first row is a header only if it has words where the data has URLs.
    content_urls = _url_columns_by_content(rest, positions)
    if content_urls and all(
        first[pos] != "" and not re.match(URL_LIKE, str(first[pos])) for pos in content_urls
    ):
        names = _header_names(first, positions)
        product, _ = _product_by_content(rest, positions, content_urls)
        return Layout(first_row, names, product, content_urls, ambiguous=True)
    url_positions = _url_columns_by_content(sample, positions)
    if not url_positions:
        raise _no_url_column()
    product, product_ambiguous = _product_by_content(sample, positions, url_positions)
    names = {pos: f"Column {column_letter(pos)}" for pos in positions}
    ambiguous = product_ambiguous or len(url_positions) > 1
    return Layout(None, names, product, url_positions, ambiguous=ambiguous)


def _from_header(
    first_row: int,
    first: pd.Series,
    norms: dict[int, str],
    rest: pd.DataFrame,
    positions: list[int],
) -> Layout:
    names = _header_names(first, positions)
    ambiguous = False
    named = [pos for pos in positions if norms[pos] and is_url_synonym(norms[pos])]
    if any(_is_image_synonym(norms[pos]) for pos in named):
        named = [pos for pos in named if _is_image_synonym(norms[pos])]
    shares = {pos: _share(rest[pos], URL_LIKE) for pos in named}
    if any(filled and share >= MAJORITY for share, filled in shares.values()):
        # Named columns holding URLs, plus those still empty in the sample (Shopify's
        # Variant Image); a named column of something else (file names) is left out.
        candidates = [
            pos for pos, (share, filled) in shares.items() if share >= MAJORITY or not filled
        ]
    else:
        # No named column holds URLs: look for the URLs elsewhere before giving up.
        candidates = _url_columns_by_content(rest, positions)
        ambiguous = bool(candidates)
        if not candidates:
            candidates = named  # all empty so far: the rows will say why
        if not candidates:
            raise _no_url_column()
    products = [
        pos
        for synonym in PRODUCT_SYNONYMS
        for pos in positions
        if norms[pos] == synonym and pos not in candidates
    ]
    if products:
        product = products[0]
        ambiguous = ambiguous or len(products) > 1
    else:
        product, _ = _product_by_content(rest, positions, candidates)
        ambiguous = True
    return Layout(first_row, names, product, candidates, ambiguous=ambiguous)


def _header_names(first: pd.Series, positions: list[int]) -> dict[int, str]:
    names: dict[int, str] = {}
    seen: dict[str, int] = {}
    for pos in positions:
        name = " ".join(str(first[pos]).split())[:MAX_NAME_CHARS] or f"Column {column_letter(pos)}"
        key = name.lower()
        if key in seen:
            seen[key] += 1
            name = f"{name} ({seen[key]})"
        else:
            seen[key] = 1
        names[pos] = name
    return names


def _url_columns_by_content(rows: pd.DataFrame, positions: list[int]) -> list[int]:
    found = []
    for pos in positions:
        share, filled = _share(rows[pos], URL_LIKE)
        if filled and share >= MAJORITY:
            found.append(pos)
    return found


def _product_by_content(
    rows: pd.DataFrame, positions: list[int], url_positions: list[int]
) -> tuple[int, bool]:
    """Leftmost column of product-like cells; ambiguous when several qualify or none does."""
    others = [pos for pos in positions if pos not in url_positions]
    scored = [(pos, *_share(rows[pos], PRODUCT_LIKE)) for pos in others]
    scored = [(pos, share, filled) for pos, share, filled in scored if filled]
    if not scored:
        raise InputError(
            "No product number column found: put the product numbers in a column next to "
            "the image URLs."
        )
    likely = [pos for pos, share, _ in scored if share >= MAJORITY]
    if likely:
        return likely[0], len(likely) > 1
    return scored[0][0], True


def _no_url_column() -> InputError:
    return InputError(
        "No image URL column found: name a column Image URL (or Image Src, URL) or make sure "
        "its cells start with http:// or https://."
    )


def apply_override(layout: Layout, product_column: str | None, url_column: str | None) -> Layout:
    """Use the caller's choice of columns (by name) instead of the detected one."""
    if product_column is None and url_column is None:
        return layout
    by_name = {name: pos for pos, name in layout.names.items()}
    by_lower = {name.lower(): pos for name, pos in reversed(list(by_name.items()))}

    def find(name: str) -> int | None:
        found = by_name.get(name)
        if found is None:
            found = by_lower.get(name.strip().lower())
        return found

    product = layout.product
    urls = list(layout.url_positions)
    if url_column is not None:
        pos = find(url_column)
        if pos is not None:
            urls = [pos]
        elif url_column.strip() != layout.url_label:
            raise _unknown_column(url_column, layout)
    if product_column is not None:
        pos = find(product_column)
        if pos is None:
            raise _unknown_column(product_column, layout)
        product = pos
        if url_column is None and product in urls and len(urls) > 1:
            urls.remove(product)
    if product in urls:
        raise InputError("The product column and the image URL column must be different.")
    ambiguous = layout.ambiguous and not (product_column is not None and url_column is not None)
    return Layout(layout.header_row, layout.names, product, urls, ambiguous=ambiguous)


def _unknown_column(name: str, layout: Layout) -> InputError:
    listed = ", ".join(layout.columns)
    return InputError(f"There is no column named {name!r}; the columns are: {listed}.")
