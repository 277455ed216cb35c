"""Folder and file names derived from product numbers, safe to unpack on Windows, macOS and
Linux.

A product number is kept exactly as typed (manifest, pages); what reaches a file system is
`folder_name(product)`: one path segment with no separators or reserved characters, no
leading dot, no trailing dot or space (Windows drops those, merging `abc.` into `abc`), no
Windows device name (`CON`, `con.txt`, `COM1` … open the device instead of a file), at most
FOLDER_MAX_BYTES of UTF-8. Within one job the folders are also unique ignoring case, because
Windows and macOS file systems usually are: `unique_folder_names` numbers later twins in
product order (`abc`, `ABC` -> `abc`, `ABC-2`). The job stores the result on each product
when it is created, so the master ZIP, the product ZIPs and the manifest agree for good.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

# Room for `_{position}.{ext}` after the folder name within the common 255-byte limit of
# one file name, and short enough for Windows' 260-character paths under a download folder.
FOLDER_MAX_BYTES = 120
FALLBACK_FOLDER = "product"

# Windows device names, matched on the part before the first dot, ignoring case and
# trailing spaces. Superscript digits count too; COM0/LPT0 and the console names are
# reserved on some versions: refusing a few extra names costs nothing.
_DEVICE_NAMES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", "CLOCK$"}
    | {f"{port}{digit}" for port in ("COM", "LPT") for digit in "0123456789\u00b9\u00b2\u00b3"}
)
# Path separators, characters Windows refuses in names, and control characters.
_UNSAFE_CHARACTERS = re.compile(r'[/\\:*?"<>|\x00-\x1f\x7f-\x9f]')


def is_device_name(segment: str) -> bool:
    """True if Windows would take this path segment for a device (`CON`, `nul.txt`, `COM1 .x`)."""
    stem = segment.split(".", 1)[0].rstrip(" ")
    return stem.upper() in _DEVICE_NAMES


def safe_segment(text: str, fallback: str, max_bytes: int = FOLDER_MAX_BYTES) -> str:
    """`text` as one path segment that every common file system keeps as written."""
    name = _UNSAFE_CHARACTERS.sub("_", unicodedata.normalize("NFC", text)).strip(" .")
    name = _cut(name, max_bytes).rstrip(" .")
    if is_device_name(name):
        stem = name.split(".", 1)[0].rstrip(" ")
        name = _cut(f"{stem}_{name[len(stem) :]}", max_bytes).rstrip(" .")
    return name or fallback


def folder_name(product: str) -> str:
    """The folder (and file-name prefix) of a product, before uniqueness within its job."""
    return safe_segment(product, FALLBACK_FOLDER)


def case_key(name: str) -> str:
    """Names with the same key are one name on a case-insensitive file system."""
    return unicodedata.normalize("NFKC", name).casefold()


def unique_folder_names(products: Iterable[str]) -> list[str]:
    """`folder_name` of each product, in order, with later case twins numbered `-2`, `-3` …

    Deterministic for a given product order; a number already taken (a product literally
    named `abc-2`) is skipped. Each base name remembers its next number, so many twins of
    one name cost one step each.
    """
    taken: set[str] = set()
    next_number: dict[str, int] = {}
    names: list[str] = []
    for product in products:
        name = folder_name(product)
        key = case_key(name)
        if key in taken:
            number = next_number.get(key, 2)
            while True:
                suffix = f"-{number}"
                candidate = _cut(name, FOLDER_MAX_BYTES - len(suffix)).rstrip(" .") + suffix
                number += 1
                if case_key(candidate) not in taken:
                    break
            next_number[key] = number
            name = candidate
        taken.add(case_key(name))
        names.append(name)
    return names


def _cut(text: str, max_bytes: int) -> str:
    """At most `max_bytes` of UTF-8, cut between characters."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", errors="ignore")
