"""Issue 25: HTTP Range on a finished job's master ZIP, on the real server (`streamlit run`).

A download cut in the middle resumes with `Range: bytes=N-` (and If-Range) and the two parts
make exactly the whole ZIP; a suffix range gives the last bytes; a range outside the ZIP
answers 416; several ranges, or an If-Range of another version, get the whole ZIP (200); a
running job's ZIP is sent whole without Accept-Ranges. The app's own download route answers
ranges the same way.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterator

import httpx
import pytest

from tests.ui.api_support import BOUND, ApiServer, api_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with api_server(tmp_path_factory.mktemp("ranges")) as running:
        yield running


@pytest.fixture(scope="module")
def finished(server: ApiServer) -> tuple[str, str, bytes]:
    """(token, job id, the whole ZIP) of a finished job of several images."""
    token = server.token("rae@example.com")
    rows = [
        {"product": f"R-{i % 3}", "url": server.images.url(f"/img/range{i}.png?w=320&h=240")}
        for i in range(8)
    ]
    with server.client(token) as client:
        created = client.post("/jobs", json={"rows": rows})
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        assert server.wait_ended(client, job_id)["status"] == "completed"
        whole = client.get(f"/jobs/{job_id}/zip")
    assert whole.status_code == 200
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["etag"].startswith('"')
    assert int(whole.headers["content-length"]) == len(whole.content)
    assert len(zipfile.ZipFile(io.BytesIO(whole.content)).namelist()) == 9  # 8 + manifest
    return token, job_id, whole.content


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_resumed_download_concatenates_to_exactly_the_whole_zip(
    server: ApiServer, finished: tuple[str, str, bytes]
) -> None:
    token, job_id, whole = finished
    size, half = len(whole), len(whole) // 2
    with server.client(token) as client:
        first = client.get(f"/jobs/{job_id}/zip", headers={"Range": f"bytes=0-{half - 1}"})
        assert first.status_code == 206
        assert first.headers["content-range"] == f"bytes 0-{half - 1}/{size}"
        assert int(first.headers["content-length"]) == half == len(first.content)
        etag = first.headers["etag"]
        rest = client.get(
            f"/jobs/{job_id}/zip", headers={"Range": f"bytes={half}-", "If-Range": etag}
        )
        assert rest.status_code == 206
        assert rest.headers["content-range"] == f"bytes {half}-{size - 1}/{size}"
    assert sha(first.content + rest.content) == sha(whole)


def test_suffix_middle_and_overlong_ranges(
    server: ApiServer, finished: tuple[str, str, bytes]
) -> None:
    token, job_id, whole = finished
    size = len(whole)
    with server.client(token) as client:
        for spec, expected in (
            ("bytes=-100", whole[-100:]),
            (f"bytes=-{size + 50}", whole),  # a suffix longer than the file: all of it
            ("bytes=1000-5000", whole[1000:5001]),  # across entries
            (f"bytes=10-{size * 10}", whole[10:]),  # a last byte past the end: up to the end
            (f"bytes={size - 1}-{size - 1}", whole[-1:]),
        ):
            part = client.get(f"/jobs/{job_id}/zip", headers={"Range": spec})
            assert part.status_code == 206, spec
            assert part.content == expected, spec
            assert part.headers["content-length"] == str(len(expected)), spec


def test_unsatisfiable_ranges_answer_416(
    server: ApiServer, finished: tuple[str, str, bytes]
) -> None:
    token, job_id, whole = finished
    size = len(whole)
    with server.client(token) as client:
        for spec in (f"bytes={size}-", f"bytes={size + 7}-{size + 9}", "bytes=9-3", "bytes=-0"):
            refused = client.get(f"/jobs/{job_id}/zip", headers={"Range": spec})
            assert refused.status_code == 416, spec
            assert refused.headers["content-range"] == f"bytes */{size}"
            assert refused.json()["error"] == "range_not_satisfiable"


def test_several_ranges_another_unit_or_a_stale_if_range_get_the_whole_zip(
    server: ApiServer, finished: tuple[str, str, bytes]
) -> None:
    token, job_id, whole = finished
    with server.client(token) as client:
        for headers in (
            {"Range": "bytes=0-9,20-29"},
            {"Range": "items=0-3"},
            {"Range": "bytes=abc"},
            {"Range": "bytes=10-", "If-Range": '"an-older-version"'},
            {"Range": "bytes=10-", "If-Range": "Tue, 08 Dec 2026 01:00:00 GMT"},
        ):
            answer = client.get(f"/jobs/{job_id}/zip", headers=headers)
            assert answer.status_code == 200, headers
            assert sha(answer.content) == sha(whole), headers


def test_the_apps_own_download_route_answers_ranges_too(
    server: ApiServer, finished: tuple[str, str, bytes]
) -> None:
    _token, job_id, whole = finished
    url = f"{server.base}/download/job/{job_id}.zip"
    with httpx.Client(timeout=BOUND) as client:
        assert client.get(url).content == whole
        tail = client.get(url, headers={"Range": "bytes=-333"})
        assert tail.status_code == 206
        assert tail.content == whole[-333:]
        size = len(whole)
        assert tail.headers["content-range"] == f"bytes {size - 333}-{size - 1}/{size}"
        outside = client.get(url, headers={"Range": f"bytes={len(whole)}-"})
        assert outside.status_code == 416


def test_a_running_jobs_zip_is_sent_whole_without_accept_ranges(server: ApiServer) -> None:
    token = server.token("run@example.com")
    rows = [{"product": "S", "url": server.images.url(f"/slow/20/s{i}", host=2)} for i in range(2)]
    with server.client(token) as client:
        job_id = client.post("/jobs", json={"rows": rows}).json()["id"]
        try:
            answer = client.get(f"/jobs/{job_id}/zip", headers={"Range": "bytes=0-9"})
            assert answer.status_code == 200
            assert "accept-ranges" not in answer.headers
            assert zipfile.ZipFile(io.BytesIO(answer.content)).namelist() == ["manifest.csv"]
        finally:
            client.post(f"/jobs/{job_id}/cancel")
