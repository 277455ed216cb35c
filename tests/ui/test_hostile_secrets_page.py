"""The job page shows URLs with their credentials and tokens redacted; the exports keep them.

A real job runs on the loopback image server: one image URL carries a `?token=` and one a
`user:password@`, and both fail (404). The failed-images table and the rejected-rows table show
them redacted; manifest.csv and the failed-rows CSV keep the URLs as given (the user's data).
"""

from __future__ import annotations

from collections.abc import Callable

from streamlit.testing.v1 import AppTest

from downloader import jobs
from downloader.services import Services
from tests.support.imageserver import ImageServer
from tests.ui.conftest import run_job

AppFactory = Callable[..., AppTest]

TOKEN = "abcdef0123456789ABCDEFtok"
PASSWORD = "hunter2pw"


def test_failed_and_rejected_urls_are_redacted_on_the_job_page_but_kept_in_exports(
    services: Services, image_server: ImageServer, app: AppFactory
) -> None:
    s = image_server
    with_token = s.url(f"/status/404?w=800&token={TOKEN}")
    with_password = s.url("/status/404").replace("http://", f"http://alice:{PASSWORD}@")
    rejected = f"ftp://bob:{PASSWORD}x@127.0.0.9/a.jpg?token={TOKEN}x"
    rows = [
        "Product Number\tImage URL",
        f"AB-1\t{with_token}",
        f"AB-1\t{with_password}",
        f"CD-2\t{rejected}",
    ]
    job_id = run_job(services, "\r\n".join(rows), name="tokens")
    assert jobs.job_counts(services.db, job_id).failed == 2

    at = app("pages/job.py", id=job_id)
    assert not at.exception, [e.message for e in at.exception]
    failed = next(df.value for df in at.dataframe if "error_code" in df.value.columns)
    shown = " ".join(str(value) for value in failed.to_numpy().ravel())
    assert TOKEN not in shown and PASSWORD not in shown, shown
    assert set(failed["url"]) == {
        with_token.replace(TOKEN, "***"),
        with_password.replace(PASSWORD, "***"),
    }
    problems = next(df.value for df in at.dataframe if "Kind" in df.value.columns)
    shown = " ".join(str(value) for value in problems.to_numpy().ravel())
    assert TOKEN not in shown and PASSWORD not in shown, shown
    assert "ftp://bob:***@127.0.0.9/a.jpg?token=***" in shown

    manifest = b"".join(jobs.manifest_csv(services.db, job_id)).decode("utf-8-sig")
    assert with_token in manifest and with_password in manifest
    failed_csv = b"".join(jobs.failed_csv(services.db, job_id)).decode("utf-8-sig")
    assert with_token in failed_csv and with_password in failed_csv


def test_the_new_job_preview_shows_urls_redacted(services: Services, app: AppFactory) -> None:
    url = f"https://alice:{PASSWORD}@img.example.invalid/a.jpg?X-Amz-Signature={TOKEN}"
    at = app()
    at.segmented_control(key="source").set_value("Paste as text").run()
    at.text_area(key="paste_text").input(f"Product Number\tImage URL\r\nAB-1\t{url}\r\n").run()
    assert not at.exception, [e.message for e in at.exception]
    preview = next(df.value for df in at.dataframe if "Image URL" in df.value.columns)
    assert preview["Image URL"].tolist() == [
        "https://alice:***@img.example.invalid/a.jpg?X-Amz-Signature=***"
    ]
