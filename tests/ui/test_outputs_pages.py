"""The new-job page's conversion and check controls, and the job page's Excel report and check
warnings (issue 23): AppTest over the real app and jobs service, a real engine, the loopback
image server."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable

import anyio
import openpyxl
from PIL import Image
from streamlit.testing.v1 import AppTest

from downloader import jobs
from downloader.engine import Engine
from downloader.export_names import job_options
from downloader.services import Services
from tests.support.imageserver import ImageServer

AppFactory = Callable[..., AppTest]


def _no_exception(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]


def test_output_controls_queue_a_converting_job_and_the_job_page_offers_its_report(
    services: Services, app: AppFactory, image_server: ImageServer
) -> None:
    s = image_server
    rows = "\n".join(
        [
            "Product Number\tImage URL\tColor",
            f"A1\t{s.url('/img/a1.png?w=640&h=480')}\tRed",
            f"A1\t{s.url('/img/a2.webp?w=500&h=500', host=1)}\t=1+2",
            f"B2\t{s.url('/same/x.jpg', host=2)}\tBlue",
            f"C3\t{s.url('/same/y.jpg', host=2)}\tBlue",
            f"D4\t{s.url('/same/z.jpg', host=2)}\tBlue",
        ]
    )
    at = app()
    at.segmented_control(key="source").set_value("Paste as text").run()
    at.text_area(key="paste_text").input(rows).run()
    at.selectbox(key="out_convert").set_value("jpeg").run()
    at.number_input(key="out_max_side").set_value(300).run()
    at.text_input(key="out_background").input("#000000").run()
    at.checkbox(key="out_pad_square").check().run()
    at.number_input(key="chk_min_side").set_value(1000).run()
    _no_exception(at)
    at.button(key="queue").click().run()
    _no_exception(at)
    job = jobs.list_jobs(services.db)[0].job
    options = job_options(services.db, job.id)
    assert (options.convert, options.max_side, options.background) == ("jpeg", 300, "#000000")
    assert options.pad_square and options.checks == {"min_side": 1000}

    engine = Engine(services.db, services.storage, services.settings, job_id=job.id, share=1.0)
    anyio.run(lambda: engine.run(until_idle=True))
    assert jobs.job_counts(services.db, job.id).done == 5
    archive = zipfile.ZipFile(
        io.BytesIO(b"".join(jobs.job_zip(services.db, services.storage, job.id)))
    )
    pictures = [name for name in archive.namelist() if name != "manifest.csv"]
    assert len(pictures) == 5 and all(name.endswith(".jpg") for name in pictures)
    for name in pictures:
        with Image.open(io.BytesIO(archive.read(name))) as picture:
            assert picture.format == "JPEG" and picture.width == picture.height <= 300

    page = app("pages/job.py", id=job.id)
    _no_exception(page)
    report = next(d for d in page.download_button if d.label == "Report (Excel)")
    assert not report.disabled
    warnings = " ".join(w.proto.body for w in page.warning)
    assert "min_side 5" in warnings and "placeholder 3" in warnings

    data = jobs.report_bytes(services.db, services.storage, job.id)
    with zipfile.ZipFile(io.BytesIO(data)) as package:
        assert package.read("xl/worksheets/sheet1.xml").count(b' vm="') == 5
    sheet = openpyxl.load_workbook(io.BytesIO(data), read_only=True)["Images"]
    values = [row for row in sheet.iter_rows(values_only=True)]
    assert values[0][-1] == "Color (input)"
    assert [row[-1] for row in values[1:]] == ["Red", "'=1+2", "Blue", "Blue", "Blue"]


def test_an_unusable_background_colour_is_shown_and_nothing_is_queued(
    services: Services, app: AppFactory
) -> None:
    at = app()
    at.segmented_control(key="source").set_value("Paste as text").run()
    at.text_area(key="paste_text").input("P1\thttp://127.0.0.2:9/a.jpg").run()
    at.selectbox(key="out_convert").set_value("webp").run()
    at.text_input(key="out_background").input("no such colour").run()
    _no_exception(at)
    assert any("Background colour" in e.proto.body for e in at.error)
    assert at.button(key="queue").disabled
