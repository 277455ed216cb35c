"""The new-job page's conversion and marketplace-check controls (issue 23), drawn inside its
"Output" section beside the naming template. Widgets only: the values are validated by the
jobs service (downloader.outputs.profile) and stored in the job's options."""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from downloader import jobs
from downloader.job_options import JobOptions
from pages import _common as common

CONVERT_LABELS = {
    "original": "Original files (as downloaded)",
    "jpeg": "JPEG",
    "png": "PNG",
    "webp": "WebP",
}
FORMAT_CHOICES = ["jpeg", "png", "webp", "avif", "gif"]


def conversion_controls(options: JobOptions) -> JobOptions | None:
    """`options` with the chosen conversion and checks; None (the reason shown) when a value
    cannot be used."""
    convert = st.selectbox(
        "Images in the ZIPs",
        list(CONVERT_LABELS),
        format_func=CONVERT_LABELS.__getitem__,
        key="out_convert",
        help="Converted images keep the downloaded original as the verified source (its "
        "SHA-256 in the manifest); the ZIPs hold the converted files.",
    )
    converting = convert != "original"
    left, right = st.columns(2)
    max_side = left.number_input(
        "Longest side at most (px)",
        min_value=1,
        max_value=20_000,
        value=None,
        step=100,
        key="out_max_side",
        disabled=not converting,
        help="Larger images are scaled down, keeping their proportions; smaller ones stay.",
    )
    quality = right.number_input(
        "Quality (JPEG, WebP)",
        min_value=1,
        max_value=100,
        value=None,
        key="out_quality",
        disabled=not converting,
        help="Empty: 85 for JPEG, 80 for WebP.",
    )
    background = left.text_input(
        "Background colour",
        value="white",
        key="out_background",
        disabled=not converting,
        help="Transparency is flattened onto it in JPEG, and square padding uses it: a colour "
        "name or #RRGGBB.",
    )
    pad_square = right.checkbox("Pad to a square", key="out_pad_square", disabled=not converting)
    strip = right.checkbox("Remove metadata (EXIF, ICC)", key="out_strip", disabled=not converting)
    st.markdown("**Marketplace checks** (warnings in the manifest and the report, never failures)")
    first, second = st.columns(2)
    min_side = first.number_input(
        "Longest side at least (px)", min_value=1, value=None, step=100, key="chk_min_side"
    )
    max_kb = second.number_input(
        "File size at most (KB)", min_value=1, value=None, step=100, key="chk_max_kb"
    )
    formats = first.multiselect("Allowed formats", FORMAT_CHOICES, key="chk_formats")
    square = second.checkbox("Must be square", key="chk_square")
    try:
        chosen = replace(
            options,
            convert=convert,
            max_side=int(max_side) if converting and max_side else None,
            quality=int(quality) if converting and quality else None,
            background=(background or "white").strip() if converting else "white",
            pad_square=bool(pad_square and converting),
            strip_metadata=bool(strip and converting),
            checks=jobs.checks_dict(
                min_side=int(min_side) if min_side else None,
                max_bytes=int(max_kb) * 1024 if max_kb else None,
                formats=list(formats),
                square=bool(square),
            ),
        )
        jobs.validate_output_options(chosen)
    except jobs.OptionError as exc:
        st.error(common.md_text(str(exc), 300), icon=":material/error:")
        return None
    return chosen
