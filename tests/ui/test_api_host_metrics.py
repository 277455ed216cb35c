"""Per-host throttling in GET /metrics (issue 25 with issue 22), on the real server: a host
that answers 429 with Retry-After is paused by the app's embedded engine, and the scrape
shows it (its pause, its throttling) while a host that answers well is not listed. The label
set is bounded: the 50 most throttled hosts, worst first, one series per host."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest

from downloader.api.host_metrics import MAX_HOSTS, most_throttled
from downloader.fetch.hostrate import HostState
from tests.ui.api_support import BOUND, ApiServer, api_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with api_server(tmp_path_factory.mktemp("hostmetrics"), RETRY_AFTER_CAP="60") as running:
        yield running


def _gauge(text: str, name: str, host: str) -> float | None:
    found = re.search(rf'^{name}{{host="{re.escape(host)}(?::\d+)?"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else None


@pytest.mark.slow
def test_a_throttling_host_shows_in_metrics_and_a_good_one_does_not(server: ApiServer) -> None:
    images = server.images
    slow_host, good_host = images.host(1), images.host(0)
    token = server.token("tia@example.com")
    rows = [
        {"product": "T", "url": images.url(f"/ratelimit/m{i}?fails=100&after=30", host=1)}
        for i in range(3)
    ] + [{"product": "G", "url": images.url("/img/good.jpg")}]
    with server.client(token) as client:
        created = client.post("/jobs", json={"rows": rows})
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        try:
            deadline, text = time.monotonic() + BOUND, ""
            while time.monotonic() < deadline:
                text = httpx.get(f"{server.base}/metrics", timeout=BOUND).text
                if (_gauge(text, "bid_host_paused_seconds", slow_host) or 0) > 0:
                    break
                time.sleep(0.3)
            else:
                raise AssertionError("the paused host never showed:\n" + text[-3000:])
        finally:
            client.post(f"/jobs/{job_id}/cancel")
    assert "# TYPE bid_host_paused_seconds gauge" in text
    assert 0 < (_gauge(text, "bid_host_paused_seconds", slow_host) or 0) <= 60
    assert _gauge(text, "bid_host_breaker_open", slow_host) == 0
    assert _gauge(text, "bid_host_throttled_seconds", slow_host) is not None
    slowed = re.search(r"^bid_hosts_slowed (\S+)$", text, re.M)
    assert slowed is not None and float(slowed.group(1)) >= 1
    assert _gauge(text, "bid_host_paused_seconds", good_host) is None


def test_the_label_set_is_the_50_most_throttled_hosts_one_series_each() -> None:
    states = [HostState(f"h{i}.example", 1.0 + i, 0.0, 0.0) for i in range(200)]
    states += [
        HostState("open.example", -1.0, 5.0, 0.0),  # breaker open: first
        HostState("paused.example", 0.0, 30.0, 2.0),  # a long pause: next
        HostState("paused.example", 0.5, 1.0, 1.0),  # another engine's milder view: dropped
        HostState("throttled.example", 0.2, 0.0, 40.0),
    ]
    chosen = most_throttled(states)
    assert len(chosen) == MAX_HOSTS == 50
    assert [s.host for s in chosen[:3]] == ["open.example", "paused.example", "throttled.example"]
    assert chosen[1].paused_for == 30.0
    assert len({s.host for s in chosen}) == 50
    # among hosts only rate-limited, the lowest rates are the most throttled
    assert chosen[3].host == "h0.example"
