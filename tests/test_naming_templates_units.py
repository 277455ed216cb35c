"""Naming templates, product-number folders and the job's options, piece by piece (issue 23).

The end-to-end path (CLI, loopback image server, ZIPs) is in test_naming_templates.py.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from downloader.export_names import name_rows
from downloader.job_options import JobOptions
from downloader.manifest import ManifestRow, manifest_header
from downloader.settings import load_settings
from downloader.storage import make_storage
from downloader.templates import (
    Namer,
    TemplateError,
    check_syntax,
    check_template,
    column_field,
    original_name,
)
from tests.archive_support import build, done_row


def name(namer: Namer, folder: str = "P", position: int = 1, **kwargs: object) -> str:
    fields: dict[str, object] = {
        "url": "https://img.example.invalid/x/Front%20View.JPG?w=1",
        "ext": "jpg",
        "sha256": "0123456789abcdef",
    }
    fields.update(kwargs)
    return namer.name(folder=folder, position=position, **fields)  # type: ignore[arg-type]


def test_default_template_is_the_old_file_name() -> None:
    namer = Namer()
    assert [name(namer, "AB_12.5", p) for p in (1, 2)] == ["AB_12.5_1.jpg", "AB_12.5_2.jpg"]


def test_every_standard_field() -> None:
    namer = Namer("{product}|{position}|{original_name}|{ext}|{sha8}|{{x}}")
    # "|" is not allowed on Windows: made safe like every other reserved character
    assert name(namer) == "P_1_Front View_jpg_01234567_{x}.jpg"


def test_input_columns_by_their_field_names() -> None:
    assert column_field("Variant Color") == "variant_color"
    assert column_field("Größe (EU)") == "gr__e__eu_"
    namer = Namer("{variant_color}-{missing_is_empty}")
    extra = {"Variant Color": "Navy/Blue", "Other": "x"}
    assert name(namer, extra=extra) == "Navy_Blue-.jpg"


def test_collisions_get_numbers_ignoring_case_per_product_or_per_job() -> None:
    namer = Namer("{color}")
    names = [
        name(namer, extra={"Color": "red"}),
        name(namer, extra={"Color": "RED"}),
        name(namer, extra={"Color": "red"}),
        name(namer, extra={"Color": "red"}, ext="png"),
    ]
    assert names == ["red.jpg", "RED-2.jpg", "red-3.jpg", "red.png"]
    namer.new_product()  # per product: a new folder, the names start over
    assert name(namer, extra={"Color": "red"}) == "red.jpg"
    flat = Namer("{color}", "flat")
    assert name(flat, extra={"Color": "red"}) == "red.jpg"
    flat.new_product()  # flat: one folder for the whole job
    assert name(flat, extra={"Color": "Red"}) == "Red-2.jpg"


def test_a_name_taken_literally_is_skipped() -> None:
    namer = Namer("{color}")
    assert name(namer, extra={"Color": "a-2"}) == "a-2.jpg"
    assert name(namer, extra={"Color": "a"}) == "a.jpg"
    assert name(namer, extra={"Color": "a"}) == "a-3.jpg"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("CON", "CON_.jpg"),  # a Windows device name
        ("../../etc", "_.._etc.jpg"),  # no separators, no leading dots
        ("", "P_1.jpg"),  # nothing left: the default name
        ("x" * 500, "x" * 200 + ".jpg"),  # length-capped
    ],
)
def test_names_are_one_safe_segment(value: str, expected: str) -> None:
    assert name(Namer("{color}"), extra={"Color": value}) == expected


def test_original_name() -> None:
    assert original_name("https://h.invalid/a/b/photo.large.jpg?x=1") == "photo.large"
    assert original_name("https://h.invalid/a/b/") == ""
    assert original_name("https://h.invalid/.hidden") == ".hidden"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{product}-{colour}", "Unknown field {colour}"),
        ("{product", "not valid"),
        ("{product!r}", "format or conversion"),
        ("{position:03}", "format or conversion"),
        ("{}", "empty field"),
        ("  ", "empty"),
        ("x" * 201, "longer than 200"),
    ],
)
def test_unusable_templates_are_input_errors(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message.replace("{", r"\{").replace("}", r"\}")):
        check_template(template, ["Color"])


def test_the_layout_is_checked_and_known_fields_pass() -> None:
    check_template("{product}-{color}-{position}-{original_name}-{sha8}.{ext}", ["Color"])
    with pytest.raises(TemplateError, match="layout"):
        check_syntax("{product}", "tree")


def test_job_options_round_trip_and_defaults() -> None:
    options = JobOptions(naming="{color}", layout="flat", extra_columns=["Color"])
    assert JobOptions.from_json(options.to_json()) == options
    assert JobOptions.from_json(None) == JobOptions()
    assert JobOptions.from_json("not json") == JobOptions()
    assert JobOptions.from_json('{"naming": "{sha8}", "newer_key": 1}').naming == "{sha8}"


def test_manifest_header_keeps_input_names_after_the_standard_columns() -> None:
    header = manifest_header(["Color", "status"])
    assert header[-2:] == ["Color", "status (input)"]


def test_a_duplicate_names_its_original_even_when_the_original_comes_later() -> None:
    def row(position: int, status: str) -> ManifestRow:
        return ManifestRow("P", position, f"https://h.invalid/{position}.jpg", status, folder="P")

    raw = [
        (row(1, "duplicate"), None, '{"Color": "red"}', 2),
        (row(2, "done"), "jpg", '{"Color": "red"}', None),
    ]
    options = JobOptions(naming="{color}", extra_columns=["Color"])
    named = list(name_rows(raw, options))
    assert [(r.position, r.file, r.duplicate_of, r.extra) for r in named] == [
        (1, None, "red.jpg", ("red",)),
        (2, "red.jpg", None, ("red",)),
    ]


def test_folders_with_letters_of_any_language_stay_apart_in_the_zip(tmp_path: Path) -> None:
    """Failed before issue 23: the ZIP writer turned every non-ASCII letter into `_`, so the
    folders of `Größe` and `Grüße` became one `Gr__e`."""
    storage = make_storage(load_settings(media_root=str(tmp_path)))
    rows = [
        done_row(storage, "Größe", 1, b"a", folder="Größe", file="Größe_1.jpg"),
        done_row(storage, "Grüße", 1, b"b", folder="Grüße", file="Grüße_1.jpg"),
    ]
    archive = zipfile.ZipFile(io.BytesIO(build(storage, rows, folder_per_product=True)))
    assert archive.namelist() == ["Größe/Größe_1.jpg", "Grüße/Grüße_1.jpg", "manifest.csv"]
