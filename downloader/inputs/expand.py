"""One row per URL: wide layouts are stacked and cells holding several URLs are split.

Works on whole columns; Python only touches the (few) cells that hold a separator.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .model import BLANK_CLASS, BLANKS

#: Cells holding any of these may hold several URLs.
_MAYBE_SEVERAL = "[" + BLANKS + ",;|]"
#: Whitespace always separates; "," ";" "|" only when the next thing starts a new URL (a comma
#: inside one URL, as in ".../w_100,h_100/...", is kept).
_SEPARATOR = BLANK_CLASS + "+|[,;|]+(?=" + BLANK_CLASS + r"*(?:[A-Za-z][A-Za-z0-9+.\-]*://|www\.))"
_EDGE = BLANKS + ",;|"


def stack_urls(data: pd.DataFrame, url_columns: list[str]) -> pd.DataFrame:
    """Long table ``source_row, at, product, url`` in reading order (row, column, place in
    cell); ``at`` is the 0-based position of the row in ``data``.

    ``data`` has a ``product`` column, the URL columns (stripped text) and the source row
    numbers as its index. Empty URL cells give no row. In the common case (one URL column,
    one URL per cell, none empty) the result shares ``data``'s arrays: nothing is copied.
    """
    rows = data.index.to_numpy(dtype=np.int64)
    at = np.arange(len(data), dtype=np.int64)
    products = data["product"].array
    if len(url_columns) == 1:
        long = pd.DataFrame(
            {"source_row": rows, "at": at, "product": products, "url": data[url_columns[0]].array},
            copy=False,
        )
    else:
        width = len(url_columns)
        order = at * width
        parts = []
        for offset, column in enumerate(url_columns):
            filled = (data[column] != "").to_numpy(dtype=bool)
            part = pd.DataFrame(
                {"source_row": rows, "at": at, "product": products, "url": data[column].array},
                index=order + offset,
                copy=False,
            )
            parts.append(part[filled])
        long = pd.concat(parts).sort_index(kind="stable").reset_index(drop=True)
    filled = (long["url"] != "").to_numpy(dtype=bool)
    if not filled.all():
        long = long[filled]
    several = long["url"].str.contains(_MAYBE_SEVERAL, regex=True)
    if several.any():
        long = _split_cells(long, several)
    return long.reset_index(drop=True)


def _split_cells(long: pd.DataFrame, several: pd.Series) -> pd.DataFrame:
    split = long[several]
    pieces = split["url"].str.split(_SEPARATOR, regex=True).explode().dropna()
    pieces = pieces.astype(str).str.strip(_EDGE)
    pieces = pieces[pieces != ""]
    expanded = split.drop(columns="url").loc[pieces.index]
    expanded["url"] = pieces.to_numpy()
    merged = pd.concat([long[~several], expanded])
    return merged.sort_index(kind="stable")
