"""Cells that are safe to open in Excel / LibreOffice / Google Sheets.

A cell starting with `= + - @`, a tab or a carriage return can be run as a formula
("CSV injection"). Such cells get a leading single quote, which spreadsheets show as text.
Every CSV the app exports goes through `excel_safe`.
"""

from __future__ import annotations

UNSAFE_FIRST_CHARACTERS = frozenset("=+-@\t\r")


def excel_safe(value: object) -> str:
    """The text of one CSV cell: None -> "", risky leading characters neutralised."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    if text and text[0] in UNSAFE_FIRST_CHARACTERS:
        return "'" + text
    return text
