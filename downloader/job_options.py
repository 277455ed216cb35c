"""A job's output options, stored as JSON in ``job.options`` (issue 23).

One dataclass holds every option so the naming/layout part and the conversion/checks part agree
on one shape: naming template and folder layout (``downloader.templates``); output profile
(convert, max_side, pad_square, background, strip_metadata, quality); marketplace checks.
Unknown keys in stored JSON are ignored (a newer writer, an older reader); missing keys take
their defaults, so a job created before the column existed (``options`` NULL) reads as defaults.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

DEFAULT_NAMING = "{product}_{position}"
LAYOUTS = ("per-product", "flat")


@dataclass(frozen=True)
class JobOptions:
    # Naming template for each image's file name (".{ext}" is always appended).
    naming: str = DEFAULT_NAMING
    # "per-product": {folder}/{name}; "flat": every file at the ZIP root.
    layout: str = "per-product"
    # The input's other columns (original header text, in input order): each image keeps its
    # row's values in image.extra; the manifest and the report add them as columns.
    extra_columns: list[str] = field(default_factory=list)
    # Output profile: "original" keeps the bytes as downloaded; else jpeg|png|webp.
    convert: str = "original"
    max_side: int | None = None
    pad_square: bool = False
    background: str = "white"
    strip_metadata: bool = False
    quality: int | None = None
    # Marketplace checks (warnings, not failures); shape owned by the checks part.
    checks: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | None) -> JobOptions:
        """The options stored in ``job.options``; defaults for NULL, empty or unreadable text."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
        except ValueError:
            return cls()
        if not isinstance(data, dict):
            return cls()
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    @property
    def is_default(self) -> bool:
        return self == JobOptions()
