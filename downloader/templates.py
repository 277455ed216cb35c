"""Naming templates: each image's file name in the exports (issue 23).

A template such as ``{product}-{color}-{position}`` names a file; ``.{ext}`` is always
appended. Fields: ``{product}`` (the product's safe folder name, downloader.naming),
``{position}``, ``{original_name}`` (the URL path's last segment without its extension),
``{ext}``, ``{sha8}`` (first 8 hex of the SHA-256) and every other input column as
``{column}``: its header lower-cased, other characters than letters and digits as ``_``
("Variant Color" -> ``{variant_color}``). ``{{`` and ``}}`` stand for braces.

A template is checked against the input's columns before a job is queued (an unknown field is
an input error). Names are made from the stored rows when an export is built
(downloader.exports), by one `Namer` walking the rows in product then position order, so the
master ZIP, the product ZIPs and the manifest agree: the result is one safe path segment
(downloader.naming.safe_segment), and a name already taken in its scope (the product's folder,
or the whole job in the flat layout), ignoring case, gets ``-2``, ``-3`` …
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from urllib.parse import unquote, urlsplit

from downloader.errors import UserError
from downloader.naming import case_key, safe_segment

DEFAULT_TEMPLATE = "{product}_{position}"
LAYOUTS = ("per-product", "flat")
STANDARD_FIELDS = ("product", "position", "original_name", "ext", "sha8")
MAX_TEMPLATE_CHARS = 200
# A name (before ".{ext}") within the common 255-byte limit of one file name, with room for
# the extension and a collision suffix.
NAME_MAX_BYTES = 200
FIELD_MAX_CHARS = 200  # one field's value is cut to this before the name is made

_NOT_WORD = re.compile(r"[^0-9a-z]")


class TemplateError(UserError, ValueError):
    """The naming template or layout cannot be used; the message says why."""


def column_field(header: str) -> str:
    """The template field of an input column: "Variant Color" -> "variant_color"."""
    return _NOT_WORD.sub("_", header.lower())


def _parts(template: str) -> list[tuple[str, str | None]]:
    """(literal text, field name or None) pieces; TemplateError for a malformed template."""
    try:
        pieces = list(string.Formatter().parse(template))
    except ValueError as exc:  # a lone "{" or "}"
        raise TemplateError(
            f"The naming template {template!r} is not valid: {exc} (write {{{{ or }}}} for a "
            "brace)."
        ) from None
    parts: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in pieces:
        if name is not None and (spec or conversion):
            raise TemplateError(
                f"The naming template field {{{name}}} may not have a format or conversion "
                "(write the field name only)."
            )
        if name == "":
            raise TemplateError("The naming template has an empty field {}.")
        parts.append((literal, name))
    return parts


def check_template(
    template: str, extra_columns: Sequence[str], layout: str = "per-product"
) -> None:
    """Raise TemplateError unless `template` and `layout` can name this input's images."""
    check_syntax(template, layout)
    known = set(STANDARD_FIELDS) | {column_field(name) for name in extra_columns}
    unknown = [name for _, name in _parts(template) if name is not None and name not in known]
    if unknown:
        columns = sorted(known - set(STANDARD_FIELDS))
        available = ", ".join(f"{{{name}}}" for name in (*STANDARD_FIELDS, *columns))
        raise TemplateError(
            f"Unknown field {{{unknown[0]}}} in the naming template; available: {available}."
        )


def check_syntax(template: str, layout: str = "per-product") -> None:
    """The checks that need no input: layout, length, braces (before an input is read)."""
    if layout not in LAYOUTS:
        raise TemplateError(f"The layout must be one of {', '.join(LAYOUTS)}, not {layout!r}.")
    if not template.strip():
        raise TemplateError("The naming template is empty.")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"The naming template is longer than {MAX_TEMPLATE_CHARS} characters.")
    _parts(template)


def original_name(url: str) -> str:
    """The URL path's last segment without its extension, percent-decoded."""
    segment = urlsplit(url).path.rsplit("/", 1)[-1]
    segment = unquote(segment, errors="replace")
    stem = segment.rsplit(".", 1)[0] if "." in segment.lstrip(".") else segment
    return stem


class Namer:
    """Names the files of one export: call `name` for each row with a file, in product then
    position order; `new_product` before each product's rows (per-product layout: names are
    unique within the product's folder; flat: within the whole job)."""

    def __init__(self, template: str = DEFAULT_TEMPLATE, layout: str = "per-product") -> None:
        self._parts = _parts(template)
        self._flat = layout == "flat"
        self._taken: set[str] = set()
        self._next: dict[str, int] = {}

    def new_product(self) -> None:
        if not self._flat:
            self._taken.clear()
            self._next.clear()

    def name(
        self,
        *,
        folder: str,
        position: int,
        url: str,
        ext: str,
        sha256: str | None,
        extra: Mapping[str, str] | None = None,
    ) -> str:
        """The file name (with ".{ext}") of one image, unique in its scope ignoring case."""
        values = {
            "product": folder,
            "position": str(position),
            "original_name": original_name(url),
            "ext": ext,
            "sha8": (sha256 or "")[:8],
        }
        columns = {column_field(key): value for key, value in (extra or {}).items()}
        text = "".join(
            literal
            + (
                ""
                if field is None
                else str(values[field] if field in values else columns.get(field, ""))[
                    :FIELD_MAX_CHARS
                ]
            )
            for literal, field in self._parts
        )
        base = safe_segment(text, f"{folder}_{position}", NAME_MAX_BYTES)
        safe_ext = safe_segment(ext, "bin", 16)
        name = f"{base}.{safe_ext}"
        key = case_key(name)
        if key in self._taken:
            number = self._next.get(key, 2)
            while True:
                suffix = f"-{number}"
                stem = safe_segment(base, "image", NAME_MAX_BYTES - len(suffix))
                candidate = f"{stem}{suffix}.{safe_ext}"
                number += 1
                if case_key(candidate) not in self._taken:
                    break
            self._next[key] = number
            name = candidate
        self._taken.add(case_key(name))
        return name
