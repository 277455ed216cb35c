"""Per-host throttling in GET /metrics: what the engines of this process (the app's embedded
engine) know about the hosts they slow down (downloader.fetch.hostrate: a learned rate after
429/503 answers, a Retry-After pause, an open circuit breaker).

Separate worker processes (`python -m downloader worker`) keep this in their own memory and
are not seen here: a deployment with workers only exports the hosts of the app's engine.
The label set is bounded: the MAX_HOSTS most throttled hosts (breaker open first, then the
longest pause, the longest throttling, the lowest rate); `bid_hosts_slowed` counts them all.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

MAX_HOSTS = 50
HOST_LABEL_CHARS = 255  # a host name is at most 253 characters; a label never grows past this


def _published() -> list[Any]:
    """The slowed hosts of this process's engines, or [] when the engine cannot tell."""
    try:
        from downloader.fetch.hostrate import published_host_states
    except ImportError:  # an engine without adaptive per-host rates
        return []
    return list(published_host_states())


def _severity(state: Any) -> tuple[bool, float, float, float]:
    rate = float(state.rate)
    return (rate < 0, float(state.paused_for), float(state.throttled_for), -rate if rate else 0)


def most_throttled(states: list[Any], limit: int = MAX_HOSTS) -> list[Any]:
    """One state per host (the worst when several engines know it), the `limit` worst."""
    worst: dict[str, Any] = {}
    for state in states:
        seen = worst.get(state.host)
        if seen is None or _severity(state) > _severity(seen):
            worst[state.host] = state
    return sorted(worst.values(), key=_severity, reverse=True)[:limit]


class HostCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        states = _published()
        hosts = len({state.host for state in states})
        yield GaugeMetricFamily(
            "bid_hosts_slowed",
            "Hosts this process's engines slow down now (throttled, paused or breaker open)",
            value=hosts,
        )
        rate = GaugeMetricFamily(
            "bid_host_rate_per_second",
            "Requests per second in use for a slowed host (0: no rate learned)",
            labels=["host"],
        )
        paused = GaugeMetricFamily(
            "bid_host_paused_seconds",
            "Seconds left of a host's pause (Retry-After, or its open breaker)",
            labels=["host"],
        )
        throttled = GaugeMetricFamily(
            "bid_host_throttled_seconds",
            "Seconds since the host began answering 429/503 (0: it answers well)",
            labels=["host"],
        )
        breaker = GaugeMetricFamily(
            "bid_host_breaker_open", "1 while the host's circuit breaker is open", labels=["host"]
        )
        for state in most_throttled(states):
            label = [str(state.host)[:HOST_LABEL_CHARS]]
            is_open = float(state.rate) < 0
            rate.add_metric(label, 0.0 if is_open else float(state.rate))
            paused.add_metric(label, float(state.paused_for))
            throttled.add_metric(label, float(state.throttled_for))
            breaker.add_metric(label, 1.0 if is_open else 0.0)
        yield from (rate, paused, throttled, breaker)
