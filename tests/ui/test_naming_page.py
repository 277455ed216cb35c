"""The new-job page's "Output" section (issue 23): naming template and ZIP layout, through
Streamlit's AppTest with the real jobs service and a SQLite file."""

from __future__ import annotations

from collections.abc import Callable

from streamlit.testing.v1 import AppTest

from downloader import jobs
from downloader.export_names import job_options
from downloader.services import Services

TSV = (
    "SKU\tImage URL\tColor\r\n"
    "AB/12.5\thttps://img.example.invalid/a.jpg\tRed\r\n"
    "ab/12.5\thttps://img.example.invalid/b.jpg\tBlue\r\n"
    "CON\thttps://img.example.invalid/c.jpg\tGreen\r\n"
    "Größe 42\thttps://img.example.invalid/d.jpg\tBlack\r\n"
)

AppFactory = Callable[..., AppTest]


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]


def pasted(app: AppFactory) -> AppTest:
    at = app()
    at.segmented_control(key="source").set_value("Paste as text").run()
    at.text_area(key="paste_text").input(TSV).run()
    no_exception(at)
    return at


def test_preview_shows_the_folder_name_when_it_differs(services: Services, app: AppFactory) -> None:
    at = pasted(app)
    table = next(df.value for df in at.dataframe if "Folder" in df.value.columns)
    assert table["Product"].tolist() == ["AB/12.5", "ab/12.5", "CON", "Größe 42"]
    assert table["Folder"].tolist() == ["AB_12.5", "ab_12.5-2", "CON_", ""]


def test_output_section_queues_a_job_with_the_template_and_layout(
    services: Services, app: AppFactory
) -> None:
    at = pasted(app)
    assert at.text_input(key="naming").value == "{product}_{position}"
    assert any("{color}" in c.value for c in at.caption)  # the input's own column, as a field
    at.text_input(key="naming").input("{product}-{color}-{position}").run()
    at.radio(key="layout").set_value("flat").run()
    no_exception(at)
    at.button(key="queue").click().run()
    no_exception(at)
    listed = jobs.list_jobs(services.db)
    assert len(listed) == 1
    options = job_options(services.db, listed[0].job.id)
    assert (options.naming, options.layout, options.extra_columns) == (
        "{product}-{color}-{position}",
        "flat",
        ["Color"],
    )


def test_an_unknown_field_is_shown_and_nothing_can_be_queued(
    services: Services, app: AppFactory
) -> None:
    at = pasted(app)
    at.text_input(key="naming").input("{product}-{colour}").run()
    no_exception(at)
    assert any("Unknown field" in e.value and "colour" in e.value for e in at.error), [
        e.value for e in at.error
    ]
    assert at.button(key="queue").disabled
    assert jobs.list_jobs(services.db) == []
