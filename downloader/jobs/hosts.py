"""Hosts the engines of this process are slowing down now, for the job page.

A thin service function so pages need not reach into the fetch layer: the learned per-host
rates live in `downloader.fetch.hostrate`, published by each engine once a second. Separate
worker processes keep theirs in their own memory (docs/scaling.md).
"""

from __future__ import annotations

from downloader.fetch.hostrate import HostState, published_host_states


def slowed_hosts() -> list[HostState]:
    """Throttled, rate-limited or paused (breaker open) hosts of this process's engines."""
    return published_host_states()
