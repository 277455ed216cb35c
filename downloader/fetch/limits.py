"""Politeness primitives: resizable FIFO slots, per-host slots, a QPS pacer, a circuit breaker,
and a bounded expiring cache.

All of them are asyncio-only and not thread-safe: one `Fetcher` lives on one event loop.
Every per-host table is bounded, so an engine that runs for months over millions of hosts keeps
a fixed footprint: `HostSlots` holds only hosts in use, `CircuitBreaker` at most `max_hosts`
hosts (open ones kept first), `ExpiringLRU` at most `maxsize` entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ExpiringLRU(Generic[K, V]):
    """A mapping of at most `maxsize` entries, each valid for `ttl` seconds after it was put.

    Reading an entry makes it the most recently used; putting one past `maxsize` drops the
    least recently used. Expired entries are dropped when read. Times are passed in (a
    monotonic clock), so the cache needs no clock of its own.
    """

    __slots__ = ("_entries", "maxsize", "ttl")

    def __init__(self, maxsize: int, ttl: float) -> None:
        self.maxsize = max(1, maxsize)
        self.ttl = ttl
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K, now: float) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: K, value: V, now: float) -> None:
        self._entries[key] = (now + self.ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries


class Slots:
    """A FIFO semaphore whose capacity can change while it is in use.

    Lowering the capacity never interrupts holders; new acquirers wait until the number of
    holders is below the new capacity.
    """

    __slots__ = ("_capacity", "_in_use", "_waiters")

    def __init__(self, capacity: int) -> None:
        self._capacity = max(1, capacity)
        self._in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def idle(self) -> bool:
        return self._in_use == 0 and not self._waiters

    def set_capacity(self, capacity: int) -> None:
        self._capacity = max(1, capacity)
        self._wake()

    async def acquire(self) -> None:
        if self._in_use < self._capacity and not self._waiters:
            self._in_use += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # the releaser hands its slot over (in_use already counts us)
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # handed a slot, then cancelled: give it back
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    def release(self) -> None:
        self._in_use -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._in_use < self._capacity:
            fut = self._waiters.popleft()
            if fut.done():
                continue
            self._in_use += 1
            fut.set_result(None)


class HostSlots:
    """Per-host `Slots`, created on demand and dropped when idle (a million hosts stay cheap)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = max(1, capacity)
        self._hosts: dict[str, Slots] = {}

    def set_capacity(self, capacity: int) -> None:
        self._capacity = max(1, capacity)
        for slots in self._hosts.values():
            slots.set_capacity(self._capacity)

    def in_use(self, host: str) -> int:
        slots = self._hosts.get(host)
        return slots.in_use if slots else 0

    async def acquire(self, host: str) -> None:
        slots = self._hosts.get(host)
        if slots is None:
            slots = self._hosts[host] = Slots(self._capacity)
        try:
            await slots.acquire()
        except asyncio.CancelledError:
            self._forget_if_idle(host, slots)
            raise

    def release(self, host: str) -> None:
        slots = self._hosts[host]
        slots.release()
        self._forget_if_idle(host, slots)

    def _forget_if_idle(self, host: str, slots: Slots) -> None:
        if slots.idle and self._hosts.get(host) is slots:
            del self._hosts[host]

    def __len__(self) -> int:
        return len(self._hosts)


class Pacer:
    """Global requests-per-second limit (GCRA, i.e. a token bucket of `burst` requests).

    `acquire` returns when the caller may send. Rate 0 disables pacing. Waiters take turns
    (FIFO) and a send time is granted only against the clock when the turn comes, never
    booked ahead: an event loop that stalled (a GC pause, a busy machine) wakes its waiters
    late, and booked times would then all be due at once, a burst at the server. A caller
    cancelled while waiting gives up its turn.
    """

    BURST_SECONDS = 0.05  # default bucket: 50 ms worth of requests, at least one

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self._rate = 0.0
        self._interval = 0.0
        self._tolerance = 0.0
        self._fixed_burst = burst
        self.burst = 1.0
        self._tat = 0.0  # theoretical arrival time of the next request
        self._waiting = 0  # callers in or queued for `_turn`
        self._turn = asyncio.Lock()  # FIFO: the waiter at its head watches the clock
        self.set_rate(rate)

    @property
    def rate(self) -> float:
        return self._rate

    def set_rate(self, rate: float) -> None:
        """Change the rate (0 = off); at low rates requests are evenly spaced, at high rates a
        small bucket absorbs event-loop timer lag instead of losing throughput to it."""
        self._rate = max(0.0, rate)
        if self._rate > 0:
            self._interval = 1.0 / self._rate
            wanted = self._fixed_burst or self._rate * self.BURST_SECONDS
            self.burst = max(1.0, float(int(wanted)))
            self._tolerance = (self.burst - 1.0) * self._interval

    def take(self, now: float) -> float:
        """Send now if the bucket allows it (returns 0 and counts the request), else return
        how long to wait before asking again (nothing is counted)."""
        if self._rate <= 0:
            return 0.0
        wait = self._tat - self._tolerance - now
        if wait > 1e-9:  # below that it is the rounding of the summed intervals
            return wait
        self._tat = max(self._tat, now) + self._interval
        return 0.0

    async def acquire(self) -> None:
        if self._rate <= 0:
            return
        loop = asyncio.get_running_loop()
        if not self._waiting and not self.take(loop.time()):
            return
        self._waiting += 1
        try:
            async with self._turn:
                while wait := self.take(loop.time()):
                    await asyncio.sleep(wait)
        finally:
            self._waiting -= 1


@dataclass(slots=True)
class _HostHealth:
    failures: int = 0
    open_until: float = 0.0
    probing: bool = False


class CircuitBreaker:
    """Per-host breaker on consecutive connection failures, timeouts and server errors.

    closed -> (threshold consecutive failures) -> open for `cooldown` s: every request fails
    fast -> half-open: exactly one probe request is let through; its success closes the
    breaker, its failure opens it for another cooldown. Any success resets the count.

    Only hosts with failures are tracked, at most `max_hosts` of them: a new host then pushes
    out the host whose last failure is oldest among those not open and not probing (a host
    below the threshold loses its count, a host past its cooldown its half-open state). Open
    and probing hosts are kept; only when `EVICTION_SCAN` of the oldest are all open is the
    oldest of them forgotten, so the table never grows past `max_hosts`.
    """

    MAX_HOSTS = 10_000
    EVICTION_SCAN = 16  # oldest entries looked at for one that may go

    def __init__(self, threshold: int, cooldown: float, max_hosts: int = MAX_HOSTS) -> None:
        self.threshold = max(1, threshold)
        self.cooldown = max(0.0, cooldown)
        self.max_hosts = max(1, max_hosts)
        self._hosts: OrderedDict[str, _HostHealth] = OrderedDict()

    def __len__(self) -> int:
        return len(self._hosts)

    def _holds(self, health: _HostHealth, now: float) -> bool:
        """Open (inside its cooldown) or probing: forgetting it would let requests through."""
        return health.failures >= self.threshold and (now < health.open_until or health.probing)

    def _make_room(self, now: float) -> None:
        oldest_held: str | None = None
        for _ in range(min(self.EVICTION_SCAN, len(self._hosts))):
            host, health = next(iter(self._hosts.items()))
            if not self._holds(health, now):
                del self._hosts[host]
                return
            oldest_held = oldest_held or host
            self._hosts.move_to_end(host)  # kept: looked at again only after the others
        if oldest_held is not None:
            del self._hosts[oldest_held]

    def admit(self, host: str, now: float) -> tuple[bool, bool]:
        """(allowed, is_probe). A probe must be settled with success/failure/abandon."""
        health = self._hosts.get(host)
        if health is None or health.failures < self.threshold:
            return True, False
        if now < health.open_until or health.probing:
            return False, False
        health.probing = True
        return True, True

    def retry_in(self, host: str, now: float) -> float:
        health = self._hosts.get(host)
        if health is None:
            return 0.0
        return max(0.0, health.open_until - now)

    def is_open(self, host: str, now: float) -> bool:
        health = self._hosts.get(host)
        return (
            health is not None
            and health.failures >= self.threshold
            and (now < health.open_until or health.probing)
        )

    def open_hosts(self, now: float) -> list[tuple[str, float]]:
        """(host, seconds until its next probe) of every open or probing host."""
        return [
            (host, max(0.0, health.open_until - now))
            for host, health in self._hosts.items()
            if self._holds(health, now)
        ]

    def success(self, host: str) -> None:
        self._hosts.pop(host, None)

    def failure(self, host: str, now: float, probe: bool = False) -> None:
        health = self._hosts.get(host)
        if health is None:
            if len(self._hosts) >= self.max_hosts:
                self._make_room(now)
            health = self._hosts[host] = _HostHealth()
        else:
            self._hosts.move_to_end(host)
        health.failures += 1
        if probe:
            health.probing = False
        opens = health.failures >= self.threshold and (probe or not health.probing)
        if opens and now >= health.open_until:
            health.open_until = now + self.cooldown

    def abandon(self, host: str, probe: bool) -> None:
        """The request neither succeeded nor failed (cancelled, or an HTTP-level answer that
        says nothing about reachability was not reached); lets another probe through."""
        if probe:
            health = self._hosts.get(host)
            if health is not None:
                health.probing = False


def scaled(value: int, share: float) -> int:
    """floor(value * share), at least 1: N workers with share 1/N never exceed `value` together
    (unless value < N, where each still needs one slot)."""
    return max(1, math.floor(value * share + 1e-9))
