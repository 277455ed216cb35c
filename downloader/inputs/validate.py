"""Validation of product numbers and URLs, duplicate removal and positions, column-wise.

Each rule is one regular expression run by pyarrow (RE2, in C++) over the whole column; only
the rows that fail are looked at one by one, to say why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .expand import stack_urls
from .model import MAX_PRODUCT_CHARS, MAX_URL_CHARS, RejectedRow, shown

PRODUCT_EMPTY = "Product number is empty"
PRODUCT_TOO_LONG = f"Product number is longer than {MAX_PRODUCT_CHARS} characters"
PRODUCT_BAD_CHARS = "Product number contains control characters (tabs, line breaks …)"
NO_URL = "No image URL for this product"
URL_TOO_LONG = f"URL is longer than {MAX_URL_CHARS} characters"
URL_BAD_SCHEME = "URL must start with http:// or https://"
URL_NO_HOST = "URL has no valid host name"
URL_BAD_CHARS = "URL contains spaces or control characters"

# Written for RE2 as well as Python's re (no \s, no $, no lookaround), so that pandas hands
# them to pyarrow. str.match anchors at the start; \Z is the end of the text.
# Any text but control characters (C0, DEL, C1, line/paragraph separators): a product number
# is kept exactly as typed; file and folder names are derived from it (downloader.naming).
_PRODUCT_OK = r"[^\x00-\x1f\x7f-\x9f" + "\u2028\u2029" + rf"]{{1,{MAX_PRODUCT_CHARS}}}\Z"
_SCHEME = r"[Hh][Tt][Tt][Pp][Ss]?://"
_AUTHORITY = (
    _SCHEME
    + r"(?:[^/?#@\x00-\x20\x7f]*@)?"  # user info
    + r"(?:\[[0-9A-Fa-f:.]+\]|[^/?#@:\[\]\\<>\"{}|^`\x00-\x20\x7f]+)"  # [IPv6] or host name
    + r"(?::[0-9]{0,5})?"  # port
)
_URL_OK = _AUTHORITY + r"(?:[/?#][^\x00-\x20\x7f]*)?\Z"
_HOST_RE = re.compile(_AUTHORITY + r"(?:[/?#]|\Z)")
_SCHEME_RE = re.compile(_SCHEME)


@dataclass
class Checked:
    frame: pd.DataFrame
    rejected: list[RejectedRow]
    duplicates: list[RejectedRow]


def product_ok(products: pd.Series) -> np.ndarray:
    """Mask of usable product numbers (1 to MAX_PRODUCT_CHARS characters, no control characters)."""
    return products.str.match(_PRODUCT_OK).to_numpy(dtype=bool)


def product_reason(product: str) -> str:
    """Why one product number is unusable."""
    if not product:
        return PRODUCT_EMPTY
    if len(product) > MAX_PRODUCT_CHARS:
        return PRODUCT_TOO_LONG
    return PRODUCT_BAD_CHARS


def url_ok(urls: pd.Series) -> np.ndarray:
    """Mask of usable URLs (absolute http/https with a host, at most 2048 characters)."""
    fits = (urls.str.len() <= MAX_URL_CHARS).to_numpy(dtype=bool)
    return fits & urls.str.match(_URL_OK).to_numpy(dtype=bool)


def url_reason(url: str) -> str:
    """Why one URL is unusable."""
    if len(url) > MAX_URL_CHARS:
        return URL_TOO_LONG
    if not _SCHEME_RE.match(url):
        return URL_BAD_SCHEME
    if not _HOST_RE.match(url):
        return URL_NO_HOST
    return URL_BAD_CHARS


def check(data: pd.DataFrame, url_columns: list[str]) -> Checked:
    """Validate the used columns of the non-blank data rows.

    ``data`` holds ``product`` and the URL columns (stripped text), indexed by source row.
    Rows are never filtered one step at a time: masks are combined and the valid rows are
    copied once, into the result.
    """
    rejected: list[tuple[int, int, RejectedRow]] = []  # (row, order, entry) for sorting

    good_product = product_ok(data["product"])
    if not good_product.all():
        bad = data[~good_product]
        joined = _joined_urls(bad, url_columns)
        for row, product, url in zip(
            bad.index.tolist(), bad["product"].tolist(), joined, strict=True
        ):
            entry = RejectedRow(row, product_reason(product), shown(product), shown(url))
            rejected.append((row, 0, entry))

    long = stack_urls(data, url_columns)
    at = long["at"].to_numpy()
    long_product_ok = good_product[at]

    # Rows with a product and no URL: normal for Shopify variant rows and wide layouts as long
    # as the product has images elsewhere; otherwise the product's first row says so.
    has_url = np.zeros(len(data), dtype=bool)
    has_url[at] = True
    bare_mask = good_product & ~has_url
    if bare_mask.any():
        bare = data[bare_mask]
        bare = bare[~bare["product"].isin(long["product"][long_product_ok].unique())]
        bare = bare[~bare["product"].duplicated()]
        for row, product in zip(bare.index.tolist(), bare["product"].tolist(), strict=True):
            rejected.append((row, 0, RejectedRow(row, NO_URL, shown(product), "")))

    valid = long_product_ok & url_ok(long["url"])
    bad_url = long_product_ok & ~valid
    if bad_url.any():
        bad = long[bad_url]
        for order, (row, product, url) in enumerate(
            zip(
                bad["source_row"].tolist(),
                bad["product"].tolist(),
                bad["url"].tolist(),
                strict=True,
            ),
            start=1,
        ):
            entry = RejectedRow(row, url_reason(url), shown(product), shown(url))
            rejected.append((row, order, entry))

    frame, duplicates = _deduplicate(long, valid)
    rejected.sort(key=lambda item: (item[0], item[1]))
    return Checked(frame, [entry for _, _, entry in rejected], duplicates)


def _joined_urls(rows: pd.DataFrame, url_columns: list[str]) -> list[str]:
    if len(url_columns) == 1:
        return [str(cell) for cell in rows[url_columns[0]].tolist()]
    cells = rows[url_columns].astype(str).to_numpy().tolist()
    return [" ".join(cell for cell in row if cell) for row in cells]


def _product_codes(products: pd.Series, valid: np.ndarray) -> tuple[np.ndarray, bool]:
    """Codes numbering the valid rows' products by first appearance (-1 for invalid rows),
    and whether each product's rows come together already (then no sort is needed).

    The usual input lists each product's rows together; then the codes come from where the
    product changes, without hashing every row.
    """
    count = len(products)
    codes = np.full(count, -1, dtype=np.int64)
    if not valid.any():
        return codes, True
    values = products.array
    where = np.flatnonzero(valid)
    changed = np.ones(len(where), dtype=bool)
    if valid.all():
        changed[1:] = np.asarray(values[1:] != values[:-1], dtype=bool)
    else:
        kept = values[where]
        changed[1:] = np.asarray(kept[1:] != kept[:-1], dtype=bool)
    heads = pd.Series(values[where[changed]])
    if not heads.duplicated().any():
        codes[where] = np.cumsum(changed, dtype=np.int64) - 1
        return codes, True
    found, _ = pd.factorize(values[where], sort=False)
    codes[where] = found
    return codes, False


def _deduplicate(long: pd.DataFrame, valid: np.ndarray) -> tuple[pd.DataFrame, list[RejectedRow]]:
    """Among the valid rows: drop repeated URLs within a product, number the rest 1..n
    within their product, order by product (first appearance) then position."""
    product_codes, grouped = _product_codes(long["product"], valid)
    url_codes, url_uniques = pd.factorize(long["url"], sort=False)
    keep = valid.copy()
    duplicates: list[RejectedRow] = []
    # Invalid rows' URLs are among url_uniques too: with any of them, count no shortcut.
    if not valid.all() or len(url_uniques) < int(valid.sum()):  # some URL appears twice
        key = product_codes * max(len(url_uniques), 1) + url_codes
        key[~valid] = -1 - np.flatnonzero(~valid)  # invalid rows never match anything
        repeated = pd.Series(key).duplicated().to_numpy() & valid
        if repeated.any():
            rows = long["source_row"].to_numpy()
            first_row = pd.Series(rows).groupby(key).transform("first").to_numpy()
            dup = long[repeated]
            for row, first, product, url in zip(
                dup["source_row"].tolist(),
                first_row[repeated].tolist(),
                dup["product"].tolist(),
                dup["url"].tolist(),
                strict=True,
            ):
                where = "earlier in the same row" if first == row else f"in row {first}"
                reason = f"Duplicate URL (same as {where})"
                duplicates.append(RejectedRow(row, reason, shown(product), shown(url)))
            keep &= ~repeated
    chosen = np.flatnonzero(keep)
    if not grouped:
        chosen = chosen[np.argsort(product_codes[chosen], kind="stable")]
    codes = product_codes[chosen]
    # Codes are in order now: a product's run starts where the code changes.
    if len(codes):
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        run_start = np.repeat(starts, np.diff(np.r_[starts, len(codes)]))
    else:
        run_start = codes
    position = np.arange(len(codes), dtype=np.int64) - run_start + 1
    picked = long if grouped and len(chosen) == len(long) else long.iloc[chosen]
    frame = pd.DataFrame(
        {
            "product": picked["product"].astype(str).array,
            "url": picked["url"].astype(str).array,
            "position": position,
            "source_row": picked["source_row"].to_numpy(dtype=np.int64),
        },
        copy=False,
    )
    return frame, duplicates
