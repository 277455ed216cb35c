"""Output profiles and marketplace-check rules: what a job asks for, validated once.

Both live in the job's options (downloader.job_options.JobOptions: `convert`, `max_side`,
`pad_square`, `background`, `strip_metadata`, `quality`, `checks`). `validate_output_options`
is called when a job is created (CLI, pages), so a bad value is an input error shown before
anything is queued; the engine then reads the stored options with `OutputProfile.from_options`
and `CheckRules.from_options`, which never raise (a stored value that no longer parses is
taken as its default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import ImageColor

from downloader.errors import UserError
from downloader.job_options import JobOptions

CONVERT_CHOICES = ("original", "jpeg", "png", "webp")
# file extension of each output format (the stored formats use extensions too: jpg, png...)
OUTPUT_EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}
FORMAT_ALIASES = {
    "jpeg": "jpg",
    "jpg": "jpg",
    "png": "png",
    "webp": "webp",
    "avif": "avif",
    "gif": "gif",
}
MAX_SIDE_LIMIT = 20_000  # px: no marketplace asks for more; beyond it is a typo
DEFAULT_QUALITY = {"jpeg": 85, "webp": 80}  # Pillow's own default (75) shows JPEG blocks


class OptionError(UserError, ValueError):
    """An output option or check rule that cannot be used; the message names it."""


def parse_color(text: str) -> tuple[int, int, int]:
    """An RGB triple from a CSS colour name or #hex (`white`, `#f0f0f0`, `rgb(1,2,3)`)."""
    try:
        rgb = ImageColor.getrgb(text.strip())
    except (ValueError, AttributeError):
        raise OptionError(
            f"Background colour {text[:40]!r} is not a colour name or #RRGGBB."
        ) from None
    return (rgb[0], rgb[1], rgb[2])


@dataclass(frozen=True)
class OutputProfile:
    """A conversion: output format, downscale-only longest side, square padding, the colour
    transparency is flattened onto (JPEG) and squares are padded with, metadata, quality."""

    format: str  # jpeg | png | webp
    max_side: int | None = None
    pad_square: bool = False
    background: tuple[int, int, int] = (255, 255, 255)
    strip_metadata: bool = False
    quality: int | None = None

    @property
    def extension(self) -> str:
        return OUTPUT_EXTENSIONS[self.format]

    @classmethod
    def from_options(cls, options: JobOptions) -> OutputProfile | None:
        """The job's conversion, or None when it keeps the original bytes."""
        if options.convert not in OUTPUT_EXTENSIONS:
            return None
        try:
            background = parse_color(options.background or "white")
        except OptionError:
            background = (255, 255, 255)
        return cls(
            format=options.convert,
            max_side=_positive(options.max_side),
            pad_square=bool(options.pad_square),
            background=background,
            strip_metadata=bool(options.strip_metadata),
            quality=options.quality if _is_quality(options.quality) else None,
        )


@dataclass(frozen=True)
class CheckRules:
    """Marketplace checks (warnings, never failures). Formats are stored extensions."""

    min_side: int | None = None  # the longest side must reach it (Amazon: 1,000 for zoom)
    max_bytes: int | None = None
    formats: tuple[str, ...] = ()
    square: bool = False

    @property
    def any(self) -> bool:
        return bool(self.min_side or self.max_bytes or self.formats or self.square)

    @classmethod
    def from_options(cls, options: JobOptions) -> CheckRules:
        checks: dict[str, Any] = options.checks if isinstance(options.checks, dict) else {}
        formats = checks.get("formats") or ()
        return cls(
            min_side=_positive(checks.get("min_side")),
            max_bytes=_positive(checks.get("max_bytes")),
            formats=tuple(
                FORMAT_ALIASES[f] for f in formats if isinstance(f, str) and f in FORMAT_ALIASES
            ),
            square=bool(checks.get("square")),
        )


def checks_dict(
    *,
    min_side: int | None = None,
    max_bytes: int | None = None,
    formats: str | list[str] | None = None,
    square: bool = False,
) -> dict[str, Any]:
    """The `checks` option from its parts, validated (OptionError names the bad one)."""
    checks: dict[str, Any] = {}
    if min_side is not None:
        checks["min_side"] = _checked_int("Minimum side", min_side, 1, MAX_SIDE_LIMIT)
    if max_bytes is not None:
        checks["max_bytes"] = _checked_int("Maximum bytes", max_bytes, 1, 1 << 40)
    if formats:
        names = formats.split(",") if isinstance(formats, str) else formats
        wanted = [name.strip().lower() for name in names if name.strip()]
        unknown = [name for name in wanted if name not in FORMAT_ALIASES]
        if unknown:
            raise OptionError(
                f"Allowed formats: {unknown[0][:20]!r} is not one of jpeg, png, webp, avif, gif."
            )
        checks["formats"] = list(dict.fromkeys(FORMAT_ALIASES[name] for name in wanted))
    if square:
        checks["square"] = True
    return checks


def validate_output_options(options: JobOptions) -> None:
    """Raise OptionError with one short sentence when an output option cannot be used."""
    if options.convert not in CONVERT_CHOICES:
        raise OptionError(f"Convert must be one of {', '.join(CONVERT_CHOICES)}.")
    if options.max_side is not None:
        _checked_int("Maximum side", options.max_side, 1, MAX_SIDE_LIMIT)
    if options.quality is not None:
        _checked_int("Quality", options.quality, 1, 100)
    parse_color(options.background or "white")
    if not isinstance(options.checks, dict):
        raise OptionError("Checks must be a set of rules.")
    checks_dict(**{k: v for k, v in options.checks.items() if k in _CHECK_KEYS})


_CHECK_KEYS = ("min_side", "max_bytes", "formats", "square")


def _checked_int(what: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise OptionError(f"{what} must be a whole number from {low:,} to {high:,}.")
    return value


def _positive(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def _is_quality(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 100
