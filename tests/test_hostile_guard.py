"""Issue 18, guard and host keys: IPv6 wrappers that were not unwrapped, cloud metadata
addresses that were missing, per-host keys taken from the host as spelled, per-host tables that
grew without bound, and allow/deny globs that let IP patterns match names.

The per-host limit and the breaker are checked from the server side (a real loopback server on
127.0.0.x); the table bounds are checked on the structures themselves.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
import pytest

from downloader.fetch.client import DNS_CACHE_SIZE, ConnectResolver
from downloader.fetch.fetcher import _host_key
from downloader.fetch.limits import CircuitBreaker, ExpiringLRU, HostSlots
from downloader.guard import Guard, ResolveResult
from downloader.settings import SettingsError, load_settings
from tests.support.fetching import fetch_all, make_settings
from tests.support.imageserver import ImageServer, closed_port


def guard(**overrides: object) -> Guard:
    return Guard(load_settings(**overrides))


EVERYTHING = ["0.0.0.0/0", "::/0"]

# -- 1. IPv6 wrappers and metadata addresses ---------------------------------------------------

# IPv4-compatible (::a.b.c.d, RFC 4291 2.5.5.1) and IPv4-translated (::ffff:0:a.b.c.d, RFC 2765)
WRAPPED = [
    ("[::169.254.169.254]", "metadata"),
    ("[::a9fe:a9fe]", "metadata"),
    ("[::ffff:0:169.254.169.254]", "metadata"),
    ("[::ffff:0:a9fe:a9fe]", "metadata"),
    ("[::127.0.0.1]", "wrapping 127.0.0.1, a loopback"),
    ("[::ffff:0:127.0.0.1]", "wrapping 127.0.0.1, a loopback"),
    ("[::ffff:0:10.0.0.1]", "wrapping 10.0.0.1, a private"),
]


@pytest.mark.parametrize(("host", "words"), WRAPPED)
def test_ipv4_compatible_and_translated_forms_are_unwrapped(host: str, words: str) -> None:
    # Exempting all of IPv6 must not exempt the IPv4 address a wrapper carries.
    reason = guard(allowed_private_networks=["::/0"]).check_host(host)
    assert reason is not None and words in reason, (host, reason)
    reason = guard().check_host(host)
    assert reason is not None and words in reason, (host, reason)


@pytest.mark.parametrize(
    "host", ["[::ffff:127.0.0.1]", "[64:ff9b::7f00:1]", "[2002:7f00:1::]", "[::127.0.0.1]"]
)
def test_a_wrapper_is_exempt_only_when_the_address_it_carries_is(host: str) -> None:
    assert guard(allowed_private_networks=["::/0"]).check_host(host) is not None
    assert guard(allowed_private_networks=["127.0.0.0/8"]).check_host("[::ffff:127.0.0.1]") is None


def test_public_addresses_in_the_deprecated_wrappers_stay_refused() -> None:
    # ::/96 and ::ffff:0:0/96 are reserved ranges: refused unless IPv6 itself is exempted.
    for host in ("[::8.8.8.8]", "[::ffff:0:8.8.8.8]"):
        assert "reserved" in (guard().check_host(host) or ""), host
        assert guard(allowed_private_networks=["::/0"]).check_host(host) is None, host


NEW_METADATA = [
    "169.254.170.2",  # AWS ECS task metadata
    "169.254.170.23",  # EKS pod identity agent (same /23)
    "169.254.171.255",
    "169.254.42.42",  # Scaleway
    "168.63.129.16",  # Azure wireserver (a public address)
    "[::ffff:168.63.129.16]",
    "[::168.63.129.16]",
    "[::ffff:0:169.254.42.42]",
    "[64:ff9b::a83f:8110]",  # NAT64 of 168.63.129.16
    "[2002:a83f:8110::]",  # 6to4 of 168.63.129.16
    "[::ffff:169.254.170.2]",
    "2822734096",  # 168.63.129.16 as one decimal number
]


@pytest.mark.parametrize("host", NEW_METADATA)
def test_more_metadata_addresses_are_never_exempt(host: str) -> None:
    assert "metadata" in (guard(allowed_private_networks=EVERYTHING).check_host(host) or "")
    assert "metadata" in (guard().check_host(host) or "")


def test_neighbours_of_the_metadata_addresses_follow_the_normal_rules() -> None:
    g = guard(allowed_private_networks=EVERYTHING)
    assert g.check_host("169.254.172.1") is None  # outside 169.254.170.0/23, exempted
    assert g.check_host("168.63.129.17") is None
    assert guard().check_host("168.63.129.17") is None  # public


# -- 2. one key per host -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spellings", "key"),
    [
        (
            [
                "http://Example.com./a",
                "http://example.com/a",
                "http://EXAMPLE.COM:80/a",
                "http://example.com.:80/",
            ],
            "example.com:80",
        ),
        (["https://bücher.de/", "https://XN--BCHER-KVA.DE./", "https://BÜCHER.de:443/"], None),
        (
            [
                "http://127.0.0.2/",
                "http://127.0.0.2./",
                "http://2130706434/",
                "http://0x7f.0.0.2/",
                "http://0X7F.2/",
                "http://127.2/",
                "http://[::ffff:127.0.0.2]/",
                "http://[::FFFF:7F00:2]:80/",
            ],
            "127.0.0.2:80",
        ),
        (["http://[::1]/", "http://[0:0:0:0:0:0:0:1]/", "http://[0::0:1]:80/"], "[::1]:80"),
        (
            ["https://[2001:DB8::1]/", "https://[2001:db8:0:0:0:0:0:1]:443/"],
            "[2001:db8::1]:443",
        ),
    ],
)
def test_host_key_is_one_spelling_per_host(spellings: list[str], key: str | None) -> None:
    keys = {_host_key(httpx.URL(url)) for url in spellings}
    assert len(keys) == 1, keys
    if key is not None:
        assert keys == {key}
    else:
        assert keys == {"xn--bcher-kva.de:443"}


def test_host_key_keeps_ports_and_hosts_apart() -> None:
    keys = {
        _host_key(httpx.URL(u))
        for u in ("http://example.com/", "http://example.com:8080/", "https://example.com/")
    }
    assert keys == {"example.com:80", "example.com:8080", "example.com:443"}
    assert _host_key(httpx.URL("http://127.0.0.2/")) != _host_key(httpx.URL("http://127.0.0.3/"))


def test_per_host_limit_holds_across_spellings_of_one_host(tmp_path: Path) -> None:
    """MAX_PER_HOST_CONCURRENCY=1 and slow images on 127.0.0.2 asked for under eight
    spellings: the server never sees two requests at once."""
    with ImageServer(["127.0.0.2"]) as server:
        port = server.host(0).split(":")[1]
        spellings = [
            "127.0.0.2",
            "127.0.0.2.",
            "2130706434",
            "0x7f.0.0.2",
            "0X7F.2",
            "127.2",
            "[::ffff:127.0.0.2]",
            "[::ffff:7f00:2]",
        ]
        urls = [
            f"http://{h}:{port}/slow/0.15/s{i}-{n}"
            for n in range(2)
            for i, h in enumerate(spellings)
        ]
        settings = make_settings(max_per_host_concurrency=1, max_global_concurrency=32)
        outcomes = fetch_all(settings, tmp_path, urls)
        assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
        assert server.count() == len(urls)
        assert server.peak_concurrency(0) == 1


def test_breaker_opened_under_one_spelling_holds_for_the_others(tmp_path: Path) -> None:
    port = closed_port("127.0.0.9")  # 127.0.0.9 = 2130706441 = 0x7f.9
    settings = make_settings(max_retries=0, circuit_breaker_failures=2)
    first = [f"http://127.0.0.9:{port}/a{i}.jpg" for i in range(2)]
    others = [f"http://2130706441:{port}/b.jpg", f"http://0x7f.9.:{port}/c.jpg"]

    async def main() -> list[str | None]:
        from downloader.fetch import Fetcher

        async with Fetcher(settings, tmp_path) as fetcher:
            for url in first:
                assert (await fetcher.fetch(url)).error_code == "connection_error"
            return [(await fetcher.fetch(url)).error_code for url in others]

    assert asyncio.run(main()) == ["circuit_open", "circuit_open"]


# -- 3. bounded per-host tables ----------------------------------------------------------------

MANY = 100_000


def test_breaker_table_stays_bounded_and_keeps_open_hosts() -> None:
    breaker = CircuitBreaker(threshold=3, cooldown=60, max_hosts=1000)
    for _ in range(3):
        breaker.failure("dead.test:80", 0.0)
    assert breaker.is_open("dead.test:80", 1.0)
    for i in range(MANY):
        breaker.failure(f"h{i}.test:80", 1.0)  # one failure each: below the threshold
        assert len(breaker) <= 1000
    assert breaker.is_open("dead.test:80", 2.0)  # an open breaker is not forgotten while open
    assert breaker.admit("dead.test:80", 2.0) == (False, False)
    # recent hosts keep their count: two more failures open h99999
    breaker.failure(f"h{MANY - 1}.test:80", 2.0)
    breaker.failure(f"h{MANY - 1}.test:80", 2.0)
    assert breaker.is_open(f"h{MANY - 1}.test:80", 2.0)
    # a probing host (a request in flight) is not forgotten either
    assert breaker.admit("dead.test:80", 61.0) == (True, True)
    for i in range(MANY):
        breaker.failure(f"k{i}.test:80", 61.0)
    assert breaker.admit("dead.test:80", 62.0) == (False, False)  # still one probe at a time
    breaker.success("dead.test:80")
    assert breaker.admit("dead.test:80", 62.0) == (True, False)


def test_host_slots_hold_only_hosts_in_use() -> None:
    async def main() -> None:
        slots = HostSlots(1)
        await slots.acquire("held.test:80")
        for i in range(MANY):
            await slots.acquire(f"h{i}.test:80")
            slots.release(f"h{i}.test:80")
            assert len(slots) <= 2
        assert slots.in_use("held.test:80") == 1  # a held host is not dropped
        waiter = asyncio.create_task(slots.acquire("held.test:80"))
        await asyncio.sleep(0)
        assert not waiter.done()
        slots.release("held.test:80")
        await asyncio.wait_for(waiter, 5)
        slots.release("held.test:80")
        assert len(slots) == 0

    asyncio.run(main())


def test_expiring_lru_is_bounded_and_expires() -> None:
    cache: ExpiringLRU[str, int] = ExpiringLRU(maxsize=100, ttl=30)
    cache.put("kept", 1, now=0.0)
    for i in range(MANY):
        cache.put(f"k{i}", i, now=0.0)
        if i % 10 == 0:
            assert cache.get("kept", now=1.0) == 1  # used often: stays
        assert len(cache) <= 100
    assert cache.get(f"k{MANY - 1}", now=1.0) == MANY - 1
    assert cache.get("k0", now=1.0) is None  # evicted long ago
    assert cache.get("kept", now=31.0) is None  # expired
    assert "kept" not in cache


class EveryNameResolver:
    """A DNS where every name is 127.0.0.2 (what the transport caches is under test)."""

    def __init__(self) -> None:
        self.asked = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked += 1
        return [
            ResolveResult(
                hostname=host,
                host="127.0.0.2",
                port=port,
                family=socket.AF_INET,
                proto=socket.IPPROTO_TCP,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        return None


def test_dns_cache_of_the_transport_stays_bounded() -> None:
    g = guard(allowed_private_networks=["127.0.0.0/8"])
    inner = EveryNameResolver()

    async def main() -> None:
        resolver = ConnectResolver(g, set(), inner)  # the connector's resolver
        for i in range(MANY):
            addresses = await resolver.resolve(f"h{i}.test", 80)
            assert addresses[0]["host"] == "127.0.0.2"
        assert len(resolver._cache) <= DNS_CACHE_SIZE
        asked = inner.asked
        await resolver.resolve(f"h{MANY - 1}.test", 80)  # recent: from the cache
        assert inner.asked == asked
        await resolver.resolve("h0.test", 80)  # evicted: asked again
        assert inner.asked == asked + 1
        await resolver.close()

    asyncio.run(main())
    assert inner.asked == MANY + 1


# -- 4. allow/deny globs: IP patterns match IP literals only -------------------------------------


def test_ip_shaped_denylist_pattern_matches_ips_not_names() -> None:
    g = guard(allowed_private_networks=EVERYTHING, url_denylist=["10.1.2.*", "2001:db8:*"])
    assert "denylist" in (g.check_url("http://10.1.2.3/a.jpg") or "")
    assert "denylist" in (g.check_url("http://[::ffff:10.1.2.3]/a.jpg") or "")  # wrapped
    assert "denylist" in (g.check_url("http://0xa.1.2.3/a.jpg") or "")  # other spelling
    assert "denylist" in (g.check_url("http://[2001:DB8::5]/a.jpg") or "")
    assert g.check_url("http://10.1.2.evil.com/a.jpg") is None
    assert g.check_url("http://10.1.3.4/a.jpg") is None


def test_ip_shaped_allowlist_pattern_does_not_admit_names() -> None:
    g = guard(allowed_private_networks=EVERYTHING, url_allowlist=["10.1.2.*", "*.example.com"])
    assert g.check_url("http://10.1.2.3/a.jpg") is None
    assert g.check_url("http://img.example.com/a.jpg") is None
    assert "allowlist" in (g.check_url("http://10.1.2.evil.com/a.jpg") or "")
    assert "allowlist" in (g.check_url("http://10.1.3.1/a.jpg") or "")


def test_name_patterns_do_not_match_ip_literals_but_star_matches_everything() -> None:
    g = guard(url_allowlist=["*.8.8", "*"], url_denylist=["*.com"])
    assert g.check_url("http://8.8.8.8/a.jpg") is None  # "*" matches IPs too
    assert "denylist" in (g.check_url("http://img.com/a.jpg") or "")
    g = guard(url_allowlist=["*.example.com"])
    assert "allowlist" in (g.check_url("http://8.8.8.8/a.jpg") or "")


def test_cidr_patterns_match_ip_literals() -> None:
    g = guard(
        allowed_private_networks=EVERYTHING,
        url_denylist=["10.1.0.0/16", "2001:db8::/32"],
        url_allowlist=["10.0.0.0/8", "2001:db8::/32", "*.test"],
    )
    assert "denylist" in (g.check_url("http://10.1.200.3/a.jpg") or "")
    assert "denylist" in (g.check_url("http://167888899/a.jpg") or "")  # 10.1.200.3
    assert "denylist" in (g.check_url("http://[2001:db8::1]/a.jpg") or "")
    assert g.check_url("http://10.2.0.1/a.jpg") is None
    assert g.check_url("http://a.test/a.jpg") is None
    assert "allowlist" in (g.check_url("http://11.0.0.1/a.jpg") or "")


def test_an_invalid_cidr_pattern_stops_the_program_at_start() -> None:
    with pytest.raises(SettingsError, match=r"URL_DENYLIST.*'10.0.0.0/33' is not a valid network"):
        load_settings(url_denylist="10.0.0.0/33, *.test")
    with pytest.raises(SettingsError, match=r"URL_ALLOWLIST.*'2001:db8::/129'"):
        load_settings(url_allowlist=["2001:db8::/129"])
    assert load_settings(url_denylist=" 10.0.0.0/8 , *.test ").url_denylist == [
        "10.0.0.0/8",
        "*.test",
    ]
