"""Issue 25, hostile clients of the HTTP API on the real server (`streamlit run app.py`):
malformed and oversized bodies, wrong content types, guessed ids, refused callback targets,
and fifty event streams whose clients never read while the app goes on serving."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.ui.api_support import BOUND, ApiServer, api_server, sse_events

pytestmark = pytest.mark.slow
STREAMS = 50


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with api_server(
        tmp_path_factory.mktemp("hostile-api"),
        MAX_UPLOAD_MB="1",
        MAX_ROWS_PER_JOB="50",
        MAX_ACTIVE_JOBS_PER_USER="0",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def token(server: ApiServer) -> str:
    return server.token("mallory@example.com")


def jobs_count(server: ApiServer) -> int:
    return int(server.sql("SELECT count(*) FROM job")[0][0])


def test_malformed_bodies_and_wrong_content_types_make_no_job(
    server: ApiServer, token: str
) -> None:
    before = jobs_count(server)
    good_row = {"product": "X", "url": server.images.url("/img/x.jpg")}
    cases: list[tuple[dict[str, object], int, str]] = [
        (
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            "bad_request",
        ),
        (
            {"content": b"\xff\xfe\x00garbage", "headers": {"content-type": "application/json"}},
            400,
            "bad_request",
        ),
        ({"json": ["a", "list"]}, 400, "bad_request"),
        ({"json": {"rows": "not a list"}}, 400, "bad_request"),
        ({"json": {"rows": [good_row], "surprise": 1}}, 400, "bad_request"),
        (
            {"json": {"rows": [{"product": "X", "url": "https://e.example/a", "n": {"a": 1}}]}},
            400,
            "bad_request",
        ),
        (
            {
                "content": b"product,url\nX,https://e.example/a.jpg",
                "headers": {"content-type": "text/csv"},
            },
            415,
            "unsupported_media_type",
        ),
        (
            {
                "content": b"rows=1",
                "headers": {"content-type": "application/x-www-form-urlencoded"},
            },
            415,
            "unsupported_media_type",
        ),
        ({"content": b"", "headers": {}}, 415, "unsupported_media_type"),
        (
            {
                "content": b"--x\r\nbroken",
                "headers": {"content-type": "multipart/form-data; boundary=x"},
            },
            400,
            "bad_request",
        ),
        ({"data": {"name": "no file"}, "files": {"other": ("a.csv", b"x")}}, 400, "bad_request"),
        (
            {"json": {"rows": [good_row], "options": {"headers": ["X-Evil: a\r\nInjected: 1"]}}},
            422,
            "bad_options",
        ),
        (
            {"json": {"rows": [good_row], "options": {"headers": ["Host: elsewhere.example"]}}},
            422,
            "bad_options",
        ),
        ({"json": {"rows": [good_row], "options": {"naming": "{nope}"}}}, 422, "bad_options"),
    ]
    with server.client(token) as client:
        for kwargs, status, code in cases:
            answer = client.post("/jobs", **kwargs)  # type: ignore[arg-type]
            assert answer.status_code == status, (kwargs, answer.text)
            assert answer.json()["error"] == code, (kwargs, answer.text)
    assert jobs_count(server) == before


def test_oversized_bodies_answer_413_without_a_job(server: ApiServer, token: str) -> None:
    before = jobs_count(server)
    big = [
        {"product": f"P{i}", "url": f"https://e.example/{'x' * 1000}/{i}.jpg"} for i in range(1200)
    ]
    too_many = [{"product": f"P{i}", "url": f"https://e.example/{i}.jpg"} for i in range(51)]
    with server.client(token) as client:
        answer = client.post("/jobs", json={"rows": big})  # > MAX_UPLOAD_MB (1 MB)
        assert answer.status_code == 413 and answer.json()["error"] == "too_large"
        upload = client.post(
            "/jobs", files={"file": ("big.csv", b"product,url\n" + b"x" * (2 << 20))}
        )
        assert upload.status_code == 413
        answer = client.post("/jobs", json={"rows": too_many})  # > MAX_ROWS_PER_JOB (50)
        assert answer.status_code == 413 and "at most 50" in answer.json()["message"]
        rows = "".join(f"P{i},https://e.example/{i}.jpg\n" for i in range(60))
        upload = client.post("/jobs", files={"file": ("many.csv", "product,url\n" + rows)})
        assert upload.status_code == 413 and "smaller jobs" in upload.json()["message"]

        # a body that never ends (chunked, no Content-Length) is cut at the limit
        def endless() -> Iterator[bytes]:
            yield b'{"rows": ['
            for _ in range(4096):
                yield b'{"product": "P", "url": "https://e.example/' + b"y" * 1000 + b'"},'

        answer = client.post(
            "/jobs", content=endless(), headers={"content-type": "application/json"}
        )
        assert answer.status_code == 413
    assert jobs_count(server) == before


def test_nothing_valid_is_422_with_every_rows_reason_and_no_job(
    server: ApiServer, token: str
) -> None:
    before = jobs_count(server)
    rows = [
        {"product": "", "url": "https://e.example/a.jpg"},
        {"product": "B", "url": "javascript:alert(1)"},
        {"product": "C" * 200, "url": "https://e.example/c.jpg"},
        {"product": "D", "url": "https://e.example/" + "d" * 2100},
    ]
    with server.client(token) as client:
        answer = client.post("/jobs", json={"rows": rows})
        assert answer.status_code == 422
        body = answer.json()
        assert body["error"] == "no_valid_rows"
        assert [r["row"] for r in body["rejected"]] == [1, 2, 3, 4]
        assert all(r["reason"] for r in body["rejected"])
        empty = client.post("/jobs", json={"rows": []})
        assert empty.status_code == 422 and empty.json()["rejected"] == []
        header_only = client.post("/jobs", files={"file": ("h.csv", b"Product Number,Image URL\n")})
        assert header_only.status_code == 422
    assert jobs_count(server) == before


def test_callback_targets_pass_the_guard(server: ApiServer, token: str) -> None:
    before = jobs_count(server)
    row = [{"product": "X", "url": server.images.url("/img/x.jpg")}]
    with server.client(token) as client:
        for target in (
            "http://127.0.0.9:8080/hook",  # loopback, not on WEBHOOK_ALLOWLIST
            "http://169.254.169.254/latest/meta-data/",  # cloud metadata
            "http://[::1]/hook",
            "http://localhost/hook",
            "ftp://example.com/hook",
            "http://" + "a" * 2100 + ".example/",
        ):
            answer = client.post("/jobs", json={"rows": row, "callback_url": target})
            assert answer.status_code in (400, 422), target
            assert answer.json()["error"] in ("bad_callback_url", "bad_request"), target
    assert jobs_count(server) == before


def test_guessed_ids_and_bad_parameters(server: ApiServer, token: str) -> None:
    with server.client(token) as client:
        for guess in ("000000000000", "../../etc/passwd", "' OR 1=1 --", "x" * 5000):
            answer = client.get(f"/jobs/{guess}")
            assert answer.status_code == 404, guess
            assert answer.json()["error"] == "not_found"
        # an encoded dot-dot segment is refused by the server in front of the API
        assert client.get("/jobs/%2e%2e").status_code in (400, 404)
        assert client.delete("/tokens/nope").status_code == 404
        for params in ({"limit": 0}, {"limit": 100000}, {"offset": -1}, {"status": "bogus"}):
            answer = client.get("/jobs", params=params)
            assert answer.status_code == 400 and answer.json()["error"] == "bad_request"
        bad_key = client.post("/jobs", json={"rows": []}, headers={"Idempotency-Key": "a b"})
        assert bad_key.status_code == 400 and bad_key.json()["error"] == "bad_idempotency_key"
        wrong_method = client.put("/jobs")
        assert wrong_method.status_code == 405


def _stalled_stream(server: ApiServer, token: str, job_id: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(
        f"GET /api/v1/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    return sock


def _read_to_close(sock: socket.socket, deadline: float) -> bytes:
    data = b""
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.1))
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not piece:
            return data
        data += piece
        if time.monotonic() > deadline:
            raise TimeoutError("the event stream stayed open")


def test_fifty_unread_event_streams_do_not_stop_the_app(server: ApiServer, token: str) -> None:
    s = server.images
    with server.client(token) as client:
        waiting = client.post(
            "/jobs", json={"rows": [{"product": "W", "url": s.url("/img/w.jpg")}]}
        )
        wid = waiting.json()["id"]
        client.post(f"/jobs/{wid}/pause")
        streams = [_stalled_stream(server, token, wid) for _ in range(STREAMS)]
        try:
            time.sleep(2)  # every stream is open and looking at the job
            # the app's page, the API and a whole other job go on meanwhile
            assert httpx.get(server.base, timeout=BOUND).status_code == 200
            assert client.get("/jobs").status_code == 200
            other = client.post(
                "/jobs", json={"rows": [{"product": "O", "url": s.url("/img/o.jpg")}]}
            ).json()
            with client.stream("GET", f"/jobs/{other['id']}/events") as stream:
                events = list(sse_events(stream))
            assert events[-1][0] == "end" and events[-1][1]["done"] == 1
            # the paused job ends: every stalled stream gets its end event and is closed
            assert client.post(f"/jobs/{wid}/cancel").json()["status"] == "cancelled"
            deadline = time.monotonic() + BOUND
            for sock in streams:
                seen = _read_to_close(sock, deadline)
                assert b"event: progress" in seen
                assert b"event: end" in seen
                end = (
                    seen.split(b"event: end\r\ndata: ")[-1]
                    if b"\r\ndata" in seen
                    else seen.split(b"event: end\ndata: ")[-1]
                )
                assert json.loads(end.split(b"\n")[0])["status"] == "cancelled"
        finally:
            for sock in streams:
                sock.close()
