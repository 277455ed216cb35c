"""Every page through Streamlit's AppTest: renders without exceptions, and its controls work.

The paste grid is a custom component that AppTest cannot run; the grid's own path is covered
by the browser test. Here the same preview/queue logic is driven through the file uploader
and the "Paste as text" box.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import openpyxl
import pytest
from streamlit.testing.v1 import AppTest

from downloader import jobs
from downloader.services import Services

TSV = (
    "Product Number\tImage URL\r\n"
    "AB-1\thttps://img.example.invalid/a.jpg\r\n"
    "AB-1\thttps://img.example.invalid/b.jpg\r\n"
    "AB-1\thttps://img.example.invalid/a.jpg\r\n"  # duplicate URL within a product
    "CD_2\thttps://img.example.invalid/c.jpg\r\n"
    "bad\x07sku\thttps://img.example.invalid/d.jpg\r\n"  # a control character: rejected
    "EF-3\tftp://img.example.invalid/e.jpg\r\n"
)

AppFactory = Callable[..., AppTest]


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]


# ---------------------------------------------------------------- New job


def test_new_job_renders_with_the_grid_source_by_default(
    services: Services, app: AppFactory
) -> None:
    at = app()
    no_exception(at)
    assert at.title[0].value == "New job"
    assert at.segmented_control(key="source").value == "Paste into the grid"
    assert at.button(key="queue").disabled
    assert any("Nothing to queue yet" in i.value for i in at.info)
    assert [d.label for d in at.download_button] == ["Download sample CSV"]


def test_pasted_text_shows_a_preview_and_queues_a_job(services: Services, app: AppFactory) -> None:
    at = app()
    at.segmented_control(key="source").set_value("Paste as text").run()
    at.text_area(key="paste_text").input(TSV).run()
    no_exception(at)
    assert metrics(at) == {
        "Products": "2",
        "Images": "3",
        "Duplicates removed": "1",
        "Rejected rows": "2",
    }
    rejected = next(df.value for df in at.dataframe if "Reason" in df.value.columns)
    assert list(rejected.columns) == ["Row", "Reason", "Product", "URL"]
    assert rejected["Row"].tolist() == [6, 7]
    assert "Product number" in rejected["Reason"][0]
    assert "http" in rejected["Reason"][1]

    at.text_input(key="job_name").input("Summer shoes").run()
    at.button(key="queue").click().run()
    no_exception(at)
    listed = jobs.list_jobs(services.db)
    assert len(listed) == 1
    job = listed[0].job
    assert (job.name, job.images, job.products, job.rejected_rows, job.duplicates_removed) == (
        "Summer shoes",
        3,
        2,
        2,
        1,
    )
    assert job.source == "pasted text"
    # the app switched to the job's page, with its id in the URL
    assert at.query_params["id"] == job.id
    assert at.title[0].value == "Summer shoes"


def test_csv_upload_previews_and_queues(services: Services, app: AppFactory) -> None:
    at = app()
    at.segmented_control(key="source").set_value("Upload a file").run()
    csv = (
        "SKU;Image Src\nX-1;https://a.example.invalid/1.png\nX-2;https://a.example.invalid/2.png\n"
    )
    at.file_uploader(key="upload").upload("products.csv", csv.encode("cp1252"), "text/csv").run()
    no_exception(at)
    assert metrics(at)["Products"] == "2"
    assert metrics(at)["Images"] == "2"
    at.button(key="queue").click().run()
    job = jobs.list_jobs(services.db)[0].job
    assert job.source == "products.csv"
    assert job.name == "products.csv · 2 products"


def test_xlsx_upload_offers_the_sheet_and_ambiguous_columns_get_dropdowns(
    services: Services, app: AppFactory
) -> None:
    book = openpyxl.Workbook()
    first = book.active
    assert first is not None
    first.title = "Notes"
    first.append(["nothing to see"])
    data = book.create_sheet("Images")
    # no header: the columns are chosen by their content, flagged as ambiguous
    data.append(["K-1", "L-1", "https://a.example.invalid/1.jpg"])
    data.append(["K-2", "L-2", "https://a.example.invalid/2.jpg"])
    buffer = io.BytesIO()
    book.save(buffer)

    at = app()
    at.segmented_control(key="source").set_value("Upload a file").run()
    at.file_uploader(key="upload").upload("book.xlsx", buffer.getvalue()).run()
    no_exception(at)
    sheet = at.selectbox[0]
    assert sheet.label == "Sheet"
    assert sheet.options == ["Notes", "Images"]
    sheet.set_value("Images").run()
    no_exception(at)
    assert any("could not be told apart" in w.value for w in at.warning)
    product = next(s for s in at.selectbox if s.label == "Product number column")
    url = next(s for s in at.selectbox if s.label == "Image URL column")
    assert url.value == "Column C"
    assert product.value in ("Column A", "Column B")
    product.set_value("Column B").run()
    no_exception(at)
    at.button(key="queue").click().run()
    job_id = jobs.list_jobs(services.db)[0].job.id
    assert jobs.product_numbers(services.db, job_id) == ["L-1", "L-2"]


def test_unusable_input_shows_its_reason(services: Services, app: AppFactory) -> None:
    at = app()
    at.segmented_control(key="source").set_value("Paste as text").run()
    at.text_area(key="paste_text").input("Product Number\tImage URL\r\n").run()
    no_exception(at)
    assert at.error, "an input with no data rows is explained"
    assert at.button(key="queue").disabled


def test_the_job_rate_limit_applies_per_session(services: Services, app: AppFactory) -> None:
    services.settings.job_rate_limit_per_minute = 1
    at = app()
    at.segmented_control(key="source").set_value("Paste as text").run()
    at.text_area(key="paste_text").input(TSV).run()
    at.button(key="queue").click().run()
    assert len(jobs.list_jobs(services.db)) == 1
    at.switch_page("pages/new_job.py").run()
    at.segmented_control(key="source").set_value("Paste as text").run()
    at.text_area(key="paste_text").input(TSV).run()
    at.button(key="queue").click().run()
    no_exception(at)
    assert any("limit 1" in e.value for e in at.error)
    assert len(jobs.list_jobs(services.db)) == 1


def test_sample_csv_parses_into_a_preview(services: Services, app: AppFactory) -> None:
    from downloader.inputs import sample_csv

    at = app()
    at.segmented_control(key="source").set_value("Paste as text").run()
    at.text_area(key="paste_text").input(sample_csv()).run()
    assert metrics(at)["Images"] == "6"
    assert metrics(at)["Rejected rows"] == "0"


# ---------------------------------------------------------------- Jobs


def test_jobs_page_lists_and_filters(
    services: Services, finished_job: str, app: AppFactory
) -> None:
    at = app("pages/jobs.py")
    no_exception(at)
    table = at.dataframe[0].value
    assert table["name"].tolist() == ["Spring catalogue"]
    assert table["status"].tolist() == ["Completed"]
    assert table["open"].tolist() == [f"/job?id={finished_job}"]
    assert table["done"].tolist() == [3] and table["failed"].tolist() == [1]
    assert table["progress"].tolist() == [1.0]

    at.multiselect(key="jobs_status").set_value(["running"]).run()
    no_exception(at)
    assert any("No jobs match" in i.value for i in at.info)
    at.multiselect(key="jobs_status").set_value([]).run()
    at.text_input(key="jobs_text").input("spring").run()
    assert at.dataframe[0].value["id"].tolist() == [finished_job]
    at.text_input(key="jobs_text").input("winter").run()
    assert any("No jobs match" in i.value for i in at.info)


def test_jobs_page_with_no_jobs(services: Services, app: AppFactory) -> None:
    at = app("pages/jobs.py")
    no_exception(at)
    assert any("No jobs yet" in i.value for i in at.info)


# ---------------------------------------------------------------- Job detail


def test_job_page_shows_progress_products_failures_and_downloads(
    services: Services, finished_job: str, app: AppFactory
) -> None:
    at = app("pages/job.py", id=finished_job)
    no_exception(at)
    assert at.title[0].value == "Spring catalogue"
    assert metrics(at)["Done"] == "3"
    assert metrics(at)["Failed"] == "1"
    assert at.progress[0].value == 100
    products = at.dataframe[0].value
    assert products["product"].tolist() == ["AB-1", "CD_2"]
    assert products["failed"].tolist() == [0, 1]
    assert products["status"].tolist() == ["done", "has failures"]

    # per-product ZIPs: one button per product, labelled with the product number
    labels = [d.label for d in at.download_button]
    assert labels == ["Report (Excel)", "AB-1", "CD_2"]  # the report first (issue 23)

    # failures: reason summary, filter and table
    failed = next(df.value for df in at.dataframe if "error_code" in df.value.columns)
    assert failed["error_code"].tolist() == ["http_404"]
    at.text_input(key="fail_text").input("AB-1").run()
    failed = next(df.value for df in at.dataframe if "error_code" in df.value.columns)
    assert failed.empty

    # the streamed exports are links to the custom routes
    html = " ".join(h.proto.body for h in at.get("html"))
    assert f"/download/job/{finished_job}.zip" in html
    assert f"/download/job/{finished_job}/manifest.csv" in html
    assert f"/download/job/{finished_job}/failed.csv" in html

    # gallery: thumbnails of the chosen product's images
    assert at.selectbox(key="gal_product").value == "AB-1"
    assert len(at.image) == 2

    # input problems: the rejected row with its row number and reason
    rejected = next(df.value for df in at.dataframe if "Reason" in df.value.columns)
    assert rejected["Row"].tolist() == [6]
    assert f"/download/job/{finished_job}/rejected.csv" in html  # all of them, Excel-safe

    # finished: the failed image (a 404: permanent) can be retried; nothing to pause or cancel
    labels = [b.label for b in at.button]
    assert "Retry permanent failures (1)" in labels and "Retry failed (1)" not in labels
    assert "Pause" not in labels and "Cancel" not in labels


def test_job_page_filters_products(services: Services, finished_job: str, app: AppFactory) -> None:
    at = app("pages/job.py", id=finished_job)
    at.toggle(key="pp_problems").set_value(True).run()
    no_exception(at)
    assert at.dataframe[0].value["product"].tolist() == ["CD_2"]
    at.toggle(key="pp_problems").set_value(False).run()
    at.text_input(key="pp_text").input("AB").run()
    assert at.dataframe[0].value["product"].tolist() == ["AB-1"]


def test_job_controls_pause_resume_cancel_and_retry(
    services: Services, finished_job: str, app: AppFactory
) -> None:
    at = app("pages/job.py", id=finished_job)
    retry = next(b for b in at.button if b.label.startswith("Retry permanent failures"))
    retry.click().run()
    no_exception(at)
    summary = jobs.job_summary(services.db, finished_job)
    assert summary.job.status == "running"
    assert summary.counts.queued == 1
    labels = [b.label for b in at.button]
    assert "Pause" in labels and "Cancel" in labels

    next(b for b in at.button if b.label == "Pause").click().run()
    assert jobs.get_job(services.db, finished_job).status == "paused"
    assert "Resume" in [b.label for b in at.button]
    next(b for b in at.button if b.label == "Resume").click().run()
    assert jobs.get_job(services.db, finished_job).status == "running"
    next(b for b in at.button if b.label == "Cancel").click().run()
    no_exception(at)
    assert jobs.get_job(services.db, finished_job).status == "cancelled"
    assert jobs.job_counts(services.db, finished_job).skipped == 1


def test_job_page_without_an_id_offers_recent_jobs(
    services: Services, finished_job: str, app: AppFactory
) -> None:
    at = app("pages/job.py")
    no_exception(at)
    assert at.title[0].value == "Job detail"
    at.button[0].click().run()
    no_exception(at)
    assert at.query_params["id"] == finished_job
    assert at.title[0].value == "Spring catalogue"


def test_job_page_with_an_unknown_id(services: Services, app: AppFactory) -> None:
    at = app("pages/job.py", id="nope")
    no_exception(at)
    assert "no job with id" in at.error[0].value


def test_product_zip_is_built_by_the_jobs_service(services: Services, finished_job: str) -> None:
    # what the download button's callable returns when clicked
    import zipfile

    data = jobs.product_zip_bytes(services.db, services.storage, finished_job, "AB-1")
    names = sorted(zipfile.ZipFile(io.BytesIO(data)).namelist())
    assert names == ["AB-1_1.jpg", "AB-1_2.png", "manifest.csv"]


# ---------------------------------------------------------------- System check


def test_system_check_shows_checks_and_masked_settings(
    services: Services, app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    services.settings.aws_secret_access_key = "hunter2-very-secret"
    services.settings.embedded_worker = False
    at = app("pages/system.py")
    no_exception(at)
    assert at.title[0].value == "System check"
    text = " ".join(m.value for m in at.markdown)
    for name in ("Database", "Storage", "Free disk", "Engine"):
        assert name in text
    settings = at.dataframe[-1].value
    shown = dict(zip(settings["Setting"], settings["Value"], strict=True))
    assert shown["AWS_SECRET_ACCESS_KEY"] == "********"
    assert "hunter2" not in " ".join(settings["Value"])
    assert shown["MAX_UPLOAD_MB"] == "200"
    at.button[0].click().run()
    no_exception(at)


def test_every_page_renders_from_the_navigation(services: Services, app: AppFactory) -> None:
    at = app()
    for page in ("pages/jobs.py", "pages/job.py", "pages/system.py", "pages/new_job.py"):
        at.switch_page(page).run()
        no_exception(at)
        assert at.title
