"""Per-host request rates that learn from the host: Retry-After pauses the whole host, a
throttling answer (429, 503) cuts its rate, good answers raise it again slowly (AIMD, as TCP
congestion control does), and PER_HOST_QPS caps it.

A host starts unlimited (only MAX_PER_HOST_CONCURRENCY and the global limits hold it). Its
first throttling answer sets a rate of BETA times the good answers it gave in the last second;
each later one multiplies the rate by BETA, at most once per round (answers to requests sent
before the last cut say nothing new). Every good answer adds `RAISE / rate`, i.e. about RAISE
requests per second per second at full pace. Retry-After (capped at RETRY_AFTER_CAP; 1 s when
absent) pauses every request to the host, not only the one that got it.

Waiting here is never charged to an image's DOWNLOAD_DEADLINE (like waiting for a slot): a
throttled host's queue is the host's doing, not the image's. Asyncio-only, one per `Fetcher`.
The table keeps hosts with a learned rate or a pause, at most `max_hosts` (oldest use first
out), so it stays small over millions of hosts.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from dataclasses import dataclass

BETA = 0.7  # multiplicative decrease on a throttling answer
RAISE = 0.2  # additive increase: requests per second gained per second of good answers
MIN_RATE = 0.2  # requests per second: a learned rate never goes below it
DEFAULT_PAUSE = 1.0  # seconds a throttling answer without Retry-After pauses the host
THROTTLE_STATUSES = frozenset({429, 503})


@dataclass(slots=True)
class _Rate:
    rate: float = 0.0  # learned requests per second, 0 = none learned
    paused_until: float = 0.0
    cut_at: float = -math.inf  # when the rate was last cut (one cut per round)
    throttled_since: float | None = None  # first throttling answer since the last good one
    tat: float = 0.0  # send time reserved next (GCRA, burst 1)
    last_sent: float = -math.inf
    second: float = 0.0  # start of the second being counted
    good_now: int = 0  # good answers in that second
    good_before: int = 0  # ... and in the second before


@dataclass(frozen=True, slots=True)
class HostState:
    """What the job page shows about one slowed host."""

    host: str
    rate: float  # requests per second in use (0 = not limited)
    paused_for: float  # seconds left of its Retry-After pause
    throttled_for: float  # seconds since it started throttling (0 = it answers well)


_PUBLISHED: dict[str, list[HostState]] = {}


def publish_host_states(engine_id: str, states: list[HostState] | None) -> None:
    """Make an engine's slowed hosts readable by the job page of the same process (the app's
    embedded engine); None forgets the engine. Separate worker processes are not seen."""
    if states is None:
        _PUBLISHED.pop(engine_id, None)
    else:
        _PUBLISHED[engine_id] = states


def published_host_states() -> list[HostState]:
    """The slowed hosts of every engine of this process."""
    return [state for states in list(_PUBLISHED.values()) for state in states]


class HostRates:
    """The learned rate, pause and PER_HOST_QPS ceiling of every host; see the module doc."""

    MAX_HOSTS = 10_000

    def __init__(self, ceiling: float, pause_cap: float, max_hosts: int = MAX_HOSTS) -> None:
        self.ceiling = max(0.0, ceiling)
        self.pause_cap = max(0.0, pause_cap)
        self.max_hosts = max(1, max_hosts)
        self._hosts: OrderedDict[str, _Rate] = OrderedDict()

    def _get(self, host: str) -> _Rate:
        state = self._hosts.get(host)
        if state is None:
            state = self._hosts[host] = _Rate()
            while len(self._hosts) > self.max_hosts:
                self._hosts.popitem(last=False)
        else:
            self._hosts.move_to_end(host)
        return state

    def rate(self, host: str) -> float:
        """Requests per second allowed to `host` now (0 = no rate limit)."""
        state = self._hosts.get(host)
        learned = state.rate if state is not None else 0.0
        limits = [r for r in (learned, self.ceiling) if r > 0]
        return min(limits) if limits else 0.0

    async def wait_turn(self, host: str) -> None:
        """Wait out the host's pause, then until a send time at its rate is reserved for us.
        Called before taking a global slot, so a slow host holds none of them."""
        loop = asyncio.get_running_loop()
        while True:
            state = self._hosts.get(host)
            if state is None:
                if self.ceiling <= 0:
                    return
                state = self._get(host)
            now = loop.time()
            if now < state.paused_until:
                await asyncio.sleep(state.paused_until - now)
                continue
            rate = self.rate(host)
            if rate <= 0:
                return
            send_at = max(state.tat, now)
            state.tat = send_at + 1.0 / rate
            if send_at > now:
                await asyncio.sleep(send_at - now)
            if loop.time() >= state.paused_until:  # no new pause began while we slept
                return

    async def gate(self, host: str) -> float:
        """Just before sending: keep at least 1/rate since the host's last request (a reserved
        time may have slipped while the global slot was awaited). Returns the send time."""
        loop = asyncio.get_running_loop()
        state = self._hosts.get(host)
        rate = self.rate(host)
        if state is not None and rate > 0:
            wait = state.last_sent + 1.0 / rate - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            state.last_sent = loop.time()
        return loop.time()

    def answered(self, host: str, now: float) -> None:
        """A good answer (anything but a throttling one): count it, raise a learned rate."""
        state = self._get(host)  # counted for every host: a first cut starts from it
        if now - state.second >= 1.0:
            state.good_before = state.good_now if now - state.second < 2.0 else 0
            state.good_now, state.second = 0, now
        state.good_now += 1
        state.throttled_since = None
        if state.rate > 0:
            state.rate += RAISE / state.rate
            if self.ceiling and state.rate >= self.ceiling:
                state.rate = 0.0  # the ceiling holds it: learning starts over if throttled

    def throttled(self, host: str, retry_after: float | None, sent_at: float, now: float) -> float:
        """A throttling answer to a request sent at `sent_at`: pause the host, cut its rate
        (once per round). Returns how long this host has been throttling."""
        state = self._get(host)
        pause = DEFAULT_PAUSE if retry_after is None else retry_after
        state.paused_until = max(state.paused_until, now + min(pause, self.pause_cap))
        if state.throttled_since is None:
            state.throttled_since = now
        if sent_at >= state.cut_at:  # sent after the last cut: the cut was not enough
            # what the host let through over the last second; a learned rate that climbed
            # past it while the host was not busy is cut from there, not from its height
            fraction = min(1.0, max(0.0, now - state.second))
            base = state.good_now + state.good_before * (1.0 - fraction)
            if state.rate > 0:
                base = min(state.rate, max(base, MIN_RATE))
            if self.ceiling:
                base = min(base, self.ceiling)
            state.rate = max(MIN_RATE, base * BETA)
            state.cut_at = now
            state.tat = max(state.tat, state.paused_until)
        return now - state.throttled_since

    def states(self, now: float) -> list[HostState]:
        """Hosts with a learned rate, a pause, or throttling now (most recently used last)."""
        shown = []
        for host, state in self._hosts.items():
            paused = max(0.0, state.paused_until - now)
            since = state.throttled_since
            if state.rate > 0 or paused > 0 or since is not None:
                shown.append(
                    HostState(
                        host,
                        round(self.rate(host), 2),
                        round(paused, 1),
                        round(now - since, 1) if since is not None else 0.0,
                    )
                )
        return shown

    def __len__(self) -> int:
        return len(self._hosts)
