"""The output-profile and marketplace-check options of `run` and `submit`."""

from __future__ import annotations

import argparse
from dataclasses import replace

from downloader.job_options import JobOptions
from downloader.outputs.profile import CONVERT_CHOICES, checks_dict, validate_output_options


def conversion_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--convert",
        choices=CONVERT_CHOICES,
        help="output format in the ZIPs (default original: the bytes as downloaded)",
    )
    p.add_argument("--max-side", type=int, metavar="N", help="downscale to this longest side")
    p.add_argument("--pad-square", action="store_true", help="pad to a square canvas")
    p.add_argument(
        "--background",
        metavar="COLOR",
        help="colour transparency is flattened onto in JPEG, and squares are padded with "
        "(default white; a name or #RRGGBB)",
    )
    p.add_argument("--strip-metadata", action="store_true", help="drop EXIF and ICC profiles")
    p.add_argument("--quality", type=int, metavar="N", help="JPEG/WebP quality 1-100")
    p.add_argument(
        "--min-side", type=int, metavar="N", help="check: warn when the longest side is under N"
    )
    p.add_argument("--max-bytes", type=int, metavar="N", help="check: warn above N bytes")
    p.add_argument(
        "--formats", metavar="LIST", help="check: warn for other formats (e.g. jpeg,png)"
    )
    p.add_argument("--square", action="store_true", help="check: warn when not square")


def with_conversion(options: JobOptions, args: argparse.Namespace) -> JobOptions:
    """`options` with the command line's conversion and checks, validated (OptionError)."""
    convert = getattr(args, "convert", None) or "original"
    changed = replace(
        options,
        convert=convert,
        max_side=getattr(args, "max_side", None),
        pad_square=bool(getattr(args, "pad_square", False)),
        background=getattr(args, "background", None) or "white",
        strip_metadata=bool(getattr(args, "strip_metadata", False)),
        quality=getattr(args, "quality", None),
        checks=checks_dict(
            min_side=getattr(args, "min_side", None),
            max_bytes=getattr(args, "max_bytes", None),
            formats=getattr(args, "formats", None),
            square=bool(getattr(args, "square", False)),
        ),
    )
    validate_output_options(changed)
    return changed
