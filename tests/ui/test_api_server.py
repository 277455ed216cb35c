"""Issue 25: the HTTP API on the real server (`streamlit run app.py`), over real HTTP.

A script with only httpx creates jobs from JSON and from a CSV upload, follows one over
server-sent events to its end, downloads its ZIPs and CSVs, and verifies the signed webhook
a loopback receiver got; another person's token sees nothing; a revoked token is refused at
once; a retried POST with one Idempotency-Key makes one job.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.ui.api_support import (
    ADMIN,
    BOUND,
    ApiServer,
    api_server,
    signed,
    sse_events,
)

pytestmark = pytest.mark.slow
ODD_PRODUCT = "Größe/7 #1?"  # a SKU that needs URL-encoding in a path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with api_server(tmp_path_factory.mktemp("api")) as running:
        yield running


@pytest.fixture(scope="module")
def ann(server: ApiServer) -> str:
    return server.token("ann@example.com", "--name", "ann's script")


def test_openapi_document_needs_no_sign_in_and_lists_every_endpoint(server: ApiServer) -> None:
    answer = httpx.get(f"{server.base}/api/v1/openapi.json", timeout=BOUND)
    assert answer.status_code == 200
    doc = answer.json()
    assert doc["openapi"].startswith("3.")
    assert doc["servers"] == [{"url": "/api"}]
    for path in (
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/products",
        "/v1/jobs/{job_id}/failed",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/zip",
        "/v1/jobs/{job_id}/products/{product}/zip",
        "/v1/jobs/{job_id}/manifest.csv",
        "/v1/jobs/{job_id}/failed.csv",
        "/v1/jobs/{job_id}/pause",
        "/v1/tokens/{token_id}",
    ):
        assert path in doc["paths"], path
    body = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert "JobRequest" in doc["components"]["schemas"]
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    # the app's own page still answers next to the API
    assert httpx.get(server.base, timeout=BOUND).status_code == 200


def test_missing_unknown_and_expired_tokens_get_401_with_www_authenticate(
    server: ApiServer,
) -> None:
    expiring = server.cli("token", "create", "--owner", "eve@example.com", "--expires-days", "1")
    server.sql("UPDATE api_token SET expires_at = 1 WHERE id = ?", expiring["id"])
    for token in (None, "bid_not-a-real-token", "garbage", expiring["token"]):
        with server.client(token) as client:
            answer = client.get("/jobs")
        assert answer.status_code == 401, token
        assert answer.headers["www-authenticate"] == "Bearer"
        assert answer.json()["error"] == "unauthorized"
    # the database keeps only the SHA-256 of a secret, never the secret
    stored = server.sql("SELECT token_hash FROM api_token WHERE id = ?", expiring["id"])[0][0]
    assert expiring["token"] not in stored and len(stored) == 64


def test_a_json_job_end_to_end_events_zips_csvs_and_a_signed_webhook(
    server: ApiServer, ann: str
) -> None:
    s = server.images
    rows = [
        {"product": "A-1", "url": s.url("/img/a1.jpg"), "colour": "red"},
        {"product": "A-1", "url": s.url("/img/a2.png", host=1)},
        {"product": ODD_PRODUCT, "url": s.url("/img/odd.webp")},
        {"product": ODD_PRODUCT, "url": s.url("/status/404")},
        {"product": "", "url": s.url("/img/nobody.jpg")},
        {"product": "B-2", "url": "ftp://example.invalid/x.jpg"},
    ]
    with server.client(ann) as client:
        created = client.post(
            "/jobs",
            json={
                "name": "catalogue",
                "rows": rows,
                "callback_url": server.hooks.url("/ok"),
                "options": {"headers": ["Referer: https://shop.example/"]},
            },
        )
        assert created.status_code == 201, created.text
        job = created.json()
        assert created.headers["location"] == f"/api/v1/jobs/{job['id']}"
        assert (job["products"], job["images"], job["status"]) == (2, 4, "queued")
        assert sorted((r["row"], r["reason"]) for r in job["rejected"]) == [
            (5, "Product number is empty"),
            (6, "URL must start with http:// or https://"),
        ]

        # follow it to its end over server-sent events
        events = []
        with client.stream("GET", f"/jobs/{job['id']}/events") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            events = list(sse_events(stream))
        names = [name for name, _ in events]
        assert names[-1] == "end" and names.count("end") == 1
        assert set(names[:-1]) <= {"progress"}
        end = events[-1][1]
        assert (end["status"], end["done"], end["failed"], end["pending"]) == (
            "completed",
            3,
            1,
            0,
        )
        # a job that has already ended gets its end event at once
        with client.stream("GET", f"/jobs/{job['id']}/events") as again:
            assert [name for name, _ in sse_events(again)] == ["end"]

        detail = client.get(f"/jobs/{job['id']}").json()
        assert (detail["name"], detail["owner"], detail["done"]) == (
            "catalogue",
            "ann@example.com",
            3,
        )
        assert detail["webhook"]["callback_url"] == server.hooks.url("/ok")
        products = client.get(f"/jobs/{job['id']}/products", params={"limit": 1}).json()
        assert [p["product"] for p in products["items"]] == ["A-1"]
        assert products["next_offset"] == 1
        second = client.get(f"/jobs/{job['id']}/products", params={"offset": 1}).json()
        assert [(p["product"], p["done"], p["failed"]) for p in second["items"]] == [
            (ODD_PRODUCT, 1, 1)
        ]
        failed = client.get(f"/jobs/{job['id']}/failed").json()
        assert [(f["product"], f["error_code"], f["http_status"]) for f in failed] == [
            (ODD_PRODUCT, "http_404", 404)
        ]

        master = client.get(f"/jobs/{job['id']}/zip")
        assert master.status_code == 200
        assert master.headers["content-length"] == str(len(master.content))
        names_in_zip = sorted(zipfile.ZipFile(io.BytesIO(master.content)).namelist())
        assert len([n for n in names_in_zip if n.startswith("A-1/")]) == 2
        assert "manifest.csv" in names_in_zip
        one = client.get(f"/jobs/{job['id']}/products/{quote(ODD_PRODUCT, safe='')}/zip")
        assert one.status_code == 200, one.text
        inside = zipfile.ZipFile(io.BytesIO(one.content)).namelist()
        assert len([n for n in inside if n.endswith(".webp")]) == 1
        manifest = client.get(f"/jobs/{job['id']}/manifest.csv")
        assert manifest.content.decode("utf-8-sig").startswith("product,position,source_url")
        assert b"colour" in manifest.content.splitlines()[0]
        failed_csv = client.get(f"/jobs/{job['id']}/failed.csv").content.decode("utf-8-sig")
        assert "http_404" in failed_csv and failed_csv.count("\n") == 2

    # the signed webhook, once
    hook = server.hooks.wait_for("/ok")[0]
    assert hook.headers["x-signature-256"] == signed(hook.body)
    payload = json.loads(hook.body)
    assert payload == {
        "id": job["id"],
        "name": "catalogue",
        "status": "completed",
        "products": 2,
        "images": 4,
        "done": 3,
        "duplicate": 0,
        "failed": 1,
        "finished_at": payload["finished_at"],
    }
    assert isinstance(payload["finished_at"], float)
    with server.client(ann) as client:
        state = client.get(f"/jobs/{job['id']}").json()["webhook"]
    assert (state["status"], state["attempts"], state["error"]) == ("sent", 1, None)
    assert len(server.hooks.wait_for("/ok")) == 1


def test_a_csv_upload_makes_a_job_with_the_upload_widgets_reader(
    server: ApiServer, ann: str
) -> None:
    s = server.images
    text = (
        "SKU;Image Src;Notes\r\n"
        f"C-1;{s.url('/img/c1.jpg')} {s.url('/img/c2.jpg')};first\r\n"
        f"C-2;{s.url('/img/c3.gif', host=1)};second\r\n"
        "C-3;notaurl;third\r\n"
    ).encode("cp1252")
    with server.client(ann) as client:
        created = client.post(
            "/jobs",
            files={"file": ("catalogue.csv", text, "text/csv")},
            data={"name": "upload"},
        )
        assert created.status_code == 201, created.text
        job = created.json()
        assert (job["products"], job["images"]) == (2, 3)
        assert [(r["row"], r["product"]) for r in job["rejected"]] == [(4, "C-3")]
        done = server.wait_ended(client, job["id"])
        assert (done["done"], done["status"]) == (3, "completed")
        listed = client.get("/jobs", params={"status": "completed"}).json()["items"]
        assert job["id"] in [item["id"] for item in listed]
        assert all(item["owner"] == "ann@example.com" for item in listed)
        archive = zipfile.ZipFile(io.BytesIO(client.get(f"/jobs/{job['id']}/zip").content))
        assert len([n for n in archive.namelist() if n.startswith("C-1/")]) == 2


def test_another_persons_token_sees_nothing_and_an_admin_sees_everything(
    server: ApiServer, ann: str
) -> None:
    bob = server.token("bob@example.com")
    boss = server.token(ADMIN)
    with server.client(ann) as client:
        job = client.post(
            "/jobs", json={"rows": [{"product": "P", "url": server.images.url("/img/p.jpg")}]}
        ).json()
        server.wait_ended(client, job["id"])
    guessed = "0123456789ab"
    with server.client(bob) as client:
        assert job["id"] not in [j["id"] for j in client.get("/jobs").json()["items"]]
        for method, path in (
            ("GET", ""),
            ("GET", "/products"),
            ("GET", "/failed"),
            ("GET", "/events"),
            ("GET", "/zip"),
            ("GET", "/products/P/zip"),
            ("GET", "/manifest.csv"),
            ("GET", "/failed.csv"),
            ("POST", "/pause"),
            ("POST", "/resume"),
            ("POST", "/cancel"),
            ("POST", "/retry"),
            ("DELETE", ""),
        ):
            theirs = client.request(method, f"/jobs/{job['id']}{path}")
            missing = client.request(method, f"/jobs/{guessed}{path}")
            assert theirs.status_code == missing.status_code == 404, (method, path)
            assert theirs.json() == {
                "error": "not_found",
                "message": f"No job with id {job['id']!r}.",
            }
            assert missing.json()["message"] == f"No job with id {guessed!r}."
    with server.client(boss) as client:
        assert client.get(f"/jobs/{job['id']}").json()["owner"] == "ann@example.com"
        assert job["id"] in [j["id"] for j in client.get("/jobs").json()["items"]]
    with server.client(ann) as client:  # ann's job survived bob's DELETE
        assert client.get(f"/jobs/{job['id']}").status_code == 200


def test_a_revoked_token_is_refused_from_the_next_request(server: ApiServer) -> None:
    made = server.cli("token", "create", "--owner", "carl@example.com", "--name", "laptop")
    other = server.token("carl@example.com")
    with server.client(made["token"]) as client:
        mine = client.get("/tokens").json()
        assert {t["id"] for t in mine} >= {made["id"]}
        assert all(
            set(t) == {"id", "name", "created_at", "last_used_at", "expires_at"} for t in mine
        )
        assert client.delete(f"/tokens/{made['id']}").json() == {"id": made["id"], "revoked": True}
        refused = client.get("/jobs")
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    with server.client(other) as client:  # the person's other token still works
        assert client.get("/jobs").status_code == 200
        assert made["id"] not in [t["id"] for t in client.get("/tokens").json()]
    # the CLI revokes too
    assert server.cli("token", "revoke", "nope") == {"id": "nope", "revoked": False}
    theirs = server.cli("token", "create", "--owner", "dora@example.com")
    with server.client(other) as client:  # someone else's token id: not carl's to revoke
        assert client.delete(f"/tokens/{theirs['id']}").status_code == 404
    assert server.cli("token", "revoke", theirs["id"])["revoked"] is True
    with server.client(theirs["token"]) as client:
        assert client.get("/jobs").status_code == 401


def test_a_retried_post_with_one_idempotency_key_makes_one_job(server: ApiServer) -> None:
    token = server.token("ida@example.com")
    other = server.token("otto@example.com")
    body = {"name": "nightly", "rows": [{"product": "I", "url": server.images.url("/img/i.jpg")}]}

    def post(key: str, who: str = token) -> httpx.Response:
        with server.client(who) as client:
            return client.post("/jobs", json=body, headers={"Idempotency-Key": key})

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(post, ["sync-2026-12-08"] * 6))
    assert {a.status_code for a in answers} == {201}
    assert len({a.json()["id"] for a in answers}) == 1
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 5
    assert server.sql("SELECT count(*) FROM job WHERE owner = 'ida@example.com'") == [(1,)]
    # another key, or another person with the same key: a new job
    assert post("sync-2026-12-09").json()["id"] != answers[0].json()["id"]
    assert post("sync-2026-12-08", other).json()["id"] != answers[0].json()["id"]
    # after 24 hours the key is free again
    server.sql("UPDATE idempotency_key SET created_at = created_at - 86401")
    assert post("sync-2026-12-08").json()["id"] != answers[0].json()["id"]


def test_controls_answer_the_new_state_or_409(server: ApiServer) -> None:
    token = server.token("cora@example.com")
    slow = [{"product": "S", "url": server.images.url(f"/slow/2/s{i}", host=2)} for i in range(8)]
    with server.client(token) as client:
        job = client.post("/jobs", json={"rows": slow}).json()
        jid = job["id"]
        assert client.post(f"/jobs/{jid}/pause").json()["status"] == "paused"
        again = client.post(f"/jobs/{jid}/pause")
        assert again.status_code == 409 and again.json()["status"] == "paused"
        assert client.post(f"/jobs/{jid}/resume").json()["status"] == "running"
        busy = client.delete(f"/jobs/{jid}")
        assert busy.status_code == 409 and "pause or cancel" in busy.json()["message"]
        assert client.post(f"/jobs/{jid}/cancel").json()["status"] == "cancelled"
        assert client.post(f"/jobs/{jid}/cancel").status_code == 409
        assert client.post(f"/jobs/{jid}/resume").status_code == 409
        with client.stream("GET", f"/jobs/{jid}/events") as stream:
            assert [name for name, _ in sse_events(stream)] == ["end"]
        retried = client.post(f"/jobs/{jid}/retry").json()
        assert retried["status"] == "running" and retried["retried"] >= 1
        client.post(f"/jobs/{jid}/cancel")
        assert client.delete(f"/jobs/{jid}").json() == {"id": jid, "deleted": True}
        assert client.get(f"/jobs/{jid}").status_code == 404


def test_webhooks_retry_with_backoff_and_never_follow_redirects(server: ApiServer) -> None:
    token = server.token("wes@example.com")
    row = [{"product": "W", "url": server.images.url("/img/w.jpg")}]
    with server.client(token) as client:
        flaky = client.post("/jobs", json={"rows": row, "callback_url": server.hooks.url("/flaky")})
        moved = client.post(
            "/jobs", json={"rows": row, "callback_url": server.hooks.url("/redirect")}
        )
        hooks = server.hooks.wait_for("/flaky", 2)
        assert hooks[0].body == hooks[1].body
        assert hooks[1].headers["x-signature-256"] == signed(hooks[1].body)
        server.hooks.wait_for("/redirect")
        deadline_state = None
        for _ in range(100):
            states = {
                jid: client.get(f"/jobs/{jid}").json()["webhook"]
                for jid in (flaky.json()["id"], moved.json()["id"])
            }
            if all(s["status"] in ("sent", "failed") for s in states.values()):
                deadline_state = states
                break
            import time

            time.sleep(0.2)
        assert deadline_state is not None
        sent = deadline_state[flaky.json()["id"]]
        assert (sent["status"], sent["attempts"]) == ("sent", 2)
        refused = deadline_state[moved.json()["id"]]
        assert refused["status"] == "failed" and "redirect" in refused["error"]
    assert [h.path for h in server.hooks.hooks].count("/redirect") == 1
    assert not [
        h
        for h in server.hooks.hooks
        if h.body and json.loads(h.body)["id"] == moved.json()["id"] and h.path == "/ok"
    ]


def test_the_per_person_limit_of_active_jobs_answers_429(server: ApiServer) -> None:
    token = server.token("busy@example.com")
    hanging = [
        {"product": "H", "url": server.images.url(f"/slow/3/h{i}", host=2)} for i in range(4)
    ]
    with server.client(token) as client:
        made = [client.post("/jobs", json={"rows": hanging}) for _ in range(3)]
        assert [m.status_code for m in made] == [201, 201, 201]
        over = client.post("/jobs", json={"rows": hanging})
        assert over.status_code == 429
        assert over.headers["retry-after"].isdigit()
        assert "limit 3 per person" in over.json()["message"]
        for m in made:
            client.post(f"/jobs/{m.json()['id']}/cancel")


def test_metrics_in_prometheus_format(server: ApiServer, ann: str) -> None:
    with server.client(ann) as client:
        client.get("/jobs")
    text = httpx.get(f"{server.base}/metrics", timeout=BOUND).text
    assert "# TYPE bid_jobs gauge" in text
    assert 'bid_images{error_code="",state="done"}' in text
    assert 'bid_api_requests_total{status="200"}' in text
    assert "bid_queue_depth " in text


def test_metrics_are_off_unless_enabled(tmp_path: Path) -> None:
    with api_server(tmp_path, METRICS_ENABLED="false") as off:
        assert httpx.get(f"{off.base}/metrics", timeout=BOUND).status_code == 404
