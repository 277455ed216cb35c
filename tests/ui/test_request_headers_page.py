"""The new-job page's "Advanced: request headers" box, and the secrecy of what it holds on the
job page and the system page (issue 20). AppTest over the real app and jobs service, a real
engine and the loopback image server (a hotlink-protected route)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anyio
from streamlit.testing.v1 import AppTest

from downloader import jobs
from downloader.engine import Engine
from downloader.job_headers import load_job_headers
from downloader.jobs.headers import MASK
from downloader.services import Services
from tests.support.imageserver import ImageServer, Reply, Req

AppFactory = Callable[..., AppTest]
REFERER = "https://shop.example/"
SECRET = "S3CR3T-c00kie-4242"


def _everything_shown(at: AppTest) -> str:
    """Every element the script produced (labels, bodies, table data) as one text."""

    def walk(node: Any) -> Iterator[str]:
        proto = getattr(node, "proto", None)
        if proto is not None:
            yield str(proto)
        for child in getattr(node, "children", {}).values():
            yield from walk(child)

    return "\n".join(walk(at._tree))


def _no_exception(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]


def test_the_box_queues_a_job_whose_headers_work_and_its_values_are_never_shown(
    services: Services, app: AppFactory, image_server: ImageServer
) -> None:
    def hotlink(req: Req) -> Reply:
        if req.record.headers.get("referer") != REFERER:
            return Reply.text(403, "hotlinking is not allowed")
        return Reply.image(f"hotlink-{req.param('id')}", "jpg")

    image_server.add_route(r"^/hotlink/(?P<id>\w+)\.jpg$", hotlink)
    cookie_host = image_server.host(1)
    rows = "\n".join(f"P{i}\t{image_server.url(f'/hotlink/{i}.jpg', host=i % 3)}" for i in range(3))
    at = app()
    at.segmented_control(key="source").set_value("Paste as text").run()
    at.text_area(key="paste_text").input(rows).run()
    at.text_area(key="request_headers").input(
        f"# the shop's page\nReferer: {REFERER}\n{cookie_host} | Cookie: sid={SECRET}"
    ).run()
    at.checkbox(key="any_format").check().run()
    _no_exception(at)
    assert not at.button(key="queue").disabled
    at.button(key="queue").click().run()
    _no_exception(at)
    job = jobs.list_jobs(services.db)[0].job
    stored = load_job_headers(services.db, job.id)
    assert stored.common == (("Referer", REFERER),)
    assert stored.hosts == ((cookie_host, (("Cookie", f"sid={SECRET}"),)),)
    assert stored.any_format

    engine = Engine(services.db, services.storage, services.settings, job_id=job.id, share=1.0)
    anyio.run(lambda: engine.run(until_idle=True))
    assert jobs.job_counts(services.db, job.id).done == 3
    for record in image_server.requests:
        assert record.headers.get("referer") == REFERER
        expected = f"sid={SECRET}" if record.host == cookie_host else None
        assert record.headers.get("cookie") == expected

    # The job page (a job without an owner: whoever may open it) shows names and hosts only.
    page = app("pages/job.py", id=job.id)
    _no_exception(page)
    shown = _everything_shown(page)
    assert SECRET not in shown and REFERER not in shown
    table = next(df.value for df in page.dataframe if "Header" in df.value.columns)
    assert table.values.tolist() == [
        ["every host", "Referer", MASK],
        [cookie_host, "Cookie", MASK],
    ]
    # Nor is anything on the system page, and the job list shows no header at all.
    for other in (app("pages/system.py"), app("pages/jobs.py")):
        _no_exception(other)
        assert SECRET not in _everything_shown(other)


def test_a_job_owned_by_someone_else_shows_no_header_names(
    services: Services, app: AppFactory
) -> None:
    from sqlalchemy import update

    from downloader.inputs import parse_text
    from downloader.models import JOB

    headers = jobs.parse_header_text(f"Cookie: sid={SECRET}")
    job = jobs.create_job(
        services.db, parse_text("P1\thttp://127.0.0.2:9/a.jpg"), request_headers=headers
    )
    with services.db.write() as session:
        session.execute(update(JOB).where(JOB.c.id == job.id).values(owner="ann@example.com"))
    page = app("pages/job.py", id=job.id)
    _no_exception(page)
    shown = _everything_shown(page)
    assert SECRET not in shown and "Request headers" not in shown


def test_bad_lines_are_shown_with_their_numbers_and_nothing_is_queued(
    services: Services, app: AppFactory
) -> None:
    at = app()
    at.segmented_control(key="source").set_value("Paste as text").run()
    at.text_area(key="paste_text").input("P1\thttp://127.0.0.2:9/a.jpg").run()
    at.text_area(key="request_headers").input(
        f"Referer: {REFERER}\nHost: evil.example\nCookie: sid={SECRET}\x00\nshop.example/x | A: b"
    ).run()
    _no_exception(at)
    errors = [e.value for e in at.error]
    assert any("line 2" in e and "Host cannot be given" in e for e in errors), errors
    assert any("line 3" in e and "line break or NUL" in e for e in errors), errors
    assert any("line 4" in e and "is not a host" in e for e in errors), errors
    assert not any(SECRET in e for e in errors)
    assert at.button(key="queue").disabled
    assert not jobs.list_jobs(services.db)
