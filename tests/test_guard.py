"""SSRF guard: the address table (pure logic, nothing connects) and the guard end to end.

End-to-end tests only ever connect to 127.0.0.x servers of this test run; blocked URLs are
shown to reach no server at all.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from pathlib import Path

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from downloader.fetch import Fetcher, FetchOutcome
from downloader.guard import (
    AddressBlockedError,
    Guard,
    GuardedResolver,
    embedded_ipv4,
    parse_ip_host,
    parse_ipv4_host,
    vet_resolved,
)
from downloader.settings import Settings, load_settings
from tests.support import imageserver
from tests.support.imageserver import ImageServer

image_server = imageserver.image_server  # the fixture


def guard(**overrides: object) -> Guard:
    return Guard(load_settings(**overrides))


# -- host spellings ----------------------------------------------------------------------------

# (spelling, the address inet_aton/getaddrinfo would use)
SPELLINGS = [
    ("127.0.0.1", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),
    ("0x7F.0.0.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("127.0.1", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"),
    ("017700000001", "127.0.0.1"),
    ("127.0.0.1.", "127.0.0.1"),
    ("0", "0.0.0.0"),
    ("10.1", "10.0.0.1"),
    ("012.0.0.1", "10.0.0.1"),
    ("0xa.0.0.1", "10.0.0.1"),
    ("167772161", "10.0.0.1"),
    ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
    ("2852039166", "169.254.169.254"),
    ("134744072", "8.8.8.8"),
    ("8.8.8.8", "8.8.8.8"),
]

NOT_IPV4 = ["example.com", "1.2.3.4.5", "256.1.1.1", "1.2.3.256", "1.16777216", "08.1.1.1", "1e3"]


@pytest.mark.parametrize(("spelling", "address"), SPELLINGS)
def test_ipv4_spellings_parse_like_inet_aton(spelling: str, address: str) -> None:
    assert parse_ipv4_host(spelling) == ipaddress.IPv4Address(address)
    if not spelling.endswith("."):  # inet_aton itself refuses the trailing dot
        assert socket.inet_aton(spelling) == ipaddress.IPv4Address(address).packed


@pytest.mark.parametrize("spelling", NOT_IPV4)
def test_non_ipv4_hosts_are_names(spelling: str) -> None:
    assert parse_ipv4_host(spelling) is None


def test_ipv6_hosts_with_brackets_and_zone() -> None:
    assert parse_ip_host("[::1]") == ipaddress.IPv6Address("::1")
    assert parse_ip_host("[fe80::1%25eth0]") == ipaddress.IPv6Address("fe80::1%eth0")
    assert parse_ip_host("[::ffff:127.0.0.1]") == ipaddress.IPv6Address("::ffff:7f00:1")
    assert parse_ip_host("[not:an:address") is None


# -- the address table -------------------------------------------------------------------------

# (host as it appears in a URL, words the refusal must contain)
BLOCKED = [
    ("127.0.0.1", "loopback"),
    ("127.5.6.7", "loopback"),
    ("2130706433", "loopback"),
    ("0177.0.0.1", "loopback"),
    ("0x7f.1", "loopback"),
    ("127.1", "loopback"),
    ("127.0.0.1.", "loopback"),
    ("[::1]", "loopback"),
    ("10.1.2.3", "private"),
    ("012.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT"),
    ("169.254.1.1", "link-local"),
    ("[fe80::1]", "link-local"),
    ("[fe80::1%25eth0]", "link-local"),
    ("169.254.169.254", "metadata"),
    ("2852039166", "metadata"),
    ("[fd00:ec2::254]", "metadata"),
    ("100.100.100.200", "metadata"),
    ("[fc00::1]", "unique-local"),
    ("[fd12:3456::1]", "unique-local"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("[ff02::1]", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("0", "unspecified"),
    ("[::]", "unspecified"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("192.0.2.1", "reserved"),
    ("198.18.0.1", "reserved"),
    ("192.0.0.8", "reserved"),
    ("[2001:db8::1]", "reserved"),
    ("[100::1]", "reserved"),
    # IPv6 wrappers: unwrapped and the IPv4 inside re-checked
    ("[::ffff:127.0.0.1]", "IPv4-mapped IPv6 address wrapping 127.0.0.1, a loopback"),
    ("[::ffff:7f00:1]", "IPv4-mapped IPv6 address wrapping 127.0.0.1"),
    ("[::ffff:10.0.0.1]", "wrapping 10.0.0.1, a private"),
    ("[::ffff:169.254.169.254]", "metadata"),
    ("[64:ff9b::127.0.0.1]", "NAT64 address wrapping 127.0.0.1, a loopback"),
    ("[64:ff9b::a00:1]", "NAT64 address wrapping 10.0.0.1"),
    # the local-use NAT64 prefix may use any layout from /48 on: blocked if any is blocked
    ("[64:ff9b:1::a00:1]", "local-use NAT64 address wrapping"),
    ("[64:ff9b:1:a00:0:100::]", "local-use NAT64 address wrapping 10.0.0.1"),
    ("[2002:7f00:1::]", "6to4 address wrapping 127.0.0.1"),
    ("[2002:a9fe:a9fe::1]", "6to4 address wrapping 169.254.169.254"),
    ("[2002:c0a8:101::]", "wrapping 192.168.1.1, a private"),
    # Teredo: server 8.8.8.8, client 127.0.0.1 (stored inverted: 80ff:fffe)
    ("[2001:0:808:808::80ff:fffe]", "Teredo address wrapping 127.0.0.1"),
    # Teredo: server 10.0.0.1, client 8.8.8.8
    ("[2001:0:a00:1::f7f7:f7f7]", "Teredo address wrapping 10.0.0.1"),
    # deprecated/odd IPv6 ranges
    ("[::127.0.0.1]", "reserved"),
    ("[fec0::1]", "site-local"),
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "134744072",
    "93.184.216.34",
    "100.63.255.255",  # just below CGNAT
    "100.128.0.0",  # just above CGNAT
    "172.15.255.255",
    "172.32.0.0",
    "[2606:4700:4700::1111]",
    "[2a00:1450:4001:82a::200e]",
    "[::ffff:8.8.8.8]",
    "[64:ff9b::808:808]",
    "[2002:808:808::1]",
    "[2001:0:808:808::f7f7:f7f7]",  # Teredo server and client both 8.8.8.8
    "example.com",
    "images.example.org",
]


@pytest.mark.parametrize(("host", "words"), BLOCKED)
def test_blocked_addresses(host: str, words: str) -> None:
    reason = guard().check_host(host)
    assert reason is not None, host
    assert words in reason
    assert reason.endswith("downloads from internal networks are blocked")


@pytest.mark.parametrize("host", ALLOWED)
def test_allowed_addresses(host: str) -> None:
    assert guard().check_host(host) is None


def test_reason_names_the_spelling_and_the_address() -> None:
    g = guard()
    assert g.check_url("http://127.0.0.1/a.jpg") == (
        "127.0.0.1 is a loopback address; downloads from internal networks are blocked."
    )
    assert g.check_host("0x7f.1") == (
        "0x7f.1 (= 127.0.0.1) is a loopback address; downloads from internal networks are blocked"
    )


def test_check_address() -> None:
    g = guard()
    assert g.check_address("93.184.216.34") is None
    assert "loopback" in (g.check_address("127.0.0.1") or "")
    assert "loopback" in (g.check_address(ipaddress.ip_address("::1")) or "")
    assert "not an IP address" in (g.check_address("example.com") or "")


def test_embedded_ipv4_extraction() -> None:
    assert embedded_ipv4(ipaddress.IPv6Address("::ffff:1.2.3.4"))[0][1] == ipaddress.IPv4Address(
        "1.2.3.4"
    )
    teredo = dict(
        (str(v4), name) for name, v4 in embedded_ipv4(ipaddress.IPv6Address("2001:0:4136:e378::"))
    )
    assert "65.54.227.120" in teredo  # the Teredo server
    assert embedded_ipv4(ipaddress.IPv6Address("2606:4700::1")) == []


# -- exemptions ----------------------------------------------------------------------------------


def test_allowed_private_networks_exempt_addresses() -> None:
    g = guard(allowed_private_networks=["10.0.0.0/8", "127.0.0.0/8"])
    assert g.check_host("10.1.2.3") is None
    assert g.check_host("012.1.2.3") is None
    assert g.check_host("127.0.0.2") is None
    assert g.check_host("[::ffff:10.1.2.3]") is None  # the wrapped address is exempt
    assert g.check_host("192.168.1.1") is not None
    assert g.check_host("[::1]") is not None  # IPv6 loopback is not in 127.0.0.0/8


def test_metadata_addresses_are_never_exempt() -> None:
    g = guard(allowed_private_networks=["0.0.0.0/0", "::/0"])
    assert g.check_host("10.1.2.3") is None
    assert "metadata" in (g.check_host("169.254.169.254") or "")
    assert "metadata" in (g.check_host("[fd00:ec2::254]") or "")
    assert "metadata" in (g.check_host("[::ffff:169.254.169.254]") or "")


# -- URLs, schemes, lists --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/a.jpg",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "data:image/png;base64,AAAA",
        "gopher://example.com/",
        "http://",
        "http:///a.jpg",
        "//example.com/a.jpg",
        "example.com/a.jpg",
        "http://example.com:99999/a.jpg",
        "http://[::1/a.jpg",
    ],
)
def test_bad_urls(url: str) -> None:
    refusal = guard().vet_url(url)
    assert refusal is not None and refusal.code == "bad_url"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://example.com@127.0.0.1/a.jpg", "loopback"),
        ("http://127.0.0.1#@example.com/a.jpg", "loopback"),
        ("http://[::ffff:127.0.0.1]:8080/a.jpg", "IPv4-mapped"),
        ("HTTP://0X7F.1/a.jpg", "loopback"),
        ("https://localhost/a.jpg", "loopback"),
        ("https://LOCALHOST./a.jpg", "loopback"),
        ("https://printer.localhost/a.jpg", "loopback"),
    ],
)
def test_blocked_urls(url: str, words: str) -> None:
    refusal = guard().vet_url(url)
    assert refusal is not None and refusal.code == "blocked_address"
    assert words in refusal.reason


def test_allowlist_and_denylist() -> None:
    g = guard(url_allowlist=["*.example.com", "cdn.test"], url_denylist=["bad.example.com"])
    assert g.check_url("https://img.example.com/a.jpg") is None
    assert g.check_url("https://IMG.Example.COM/a.jpg") is None
    assert g.check_url("http://cdn.test:8080/a.jpg") is None
    assert "not on the URL allowlist" in (g.check_url("https://example.org/a.jpg") or "")
    assert "not on the URL allowlist" in (g.check_url("https://example.com/a.jpg") or "")
    denied = g.check_url("https://bad.example.com/a.jpg") or ""
    assert "denylist" in denied and "bad.example.com" in denied


def test_denylist_alone_and_idn_hosts() -> None:
    g = guard(url_denylist=["*.tracker.test", "xn--bcher-kva.example"])
    assert g.check_url("https://images.example.org/a.jpg") is None
    assert g.check_url("https://a.b.tracker.test/x.gif") is not None
    assert g.check_url("https://bücher.example/a.jpg") is not None


def test_allowlist_applies_to_ip_literals_too() -> None:
    g = guard(url_allowlist=["*.example.com"])
    assert "allowlist" in (g.check_url("http://8.8.8.8/a.jpg") or "")


# -- the resolver --------------------------------------------------------------------------------


def _result(host: str, address: str, port: int = 80) -> ResolveResult:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return {
        "hostname": host,
        "host": address,
        "port": port,
        "family": family,
        "proto": 0,
        "flags": 0,
    }


def test_vet_resolved_drops_blocked_addresses() -> None:
    g = guard()
    results = [_result("img.test", "127.0.0.1"), _result("img.test", "93.184.216.34")]
    kept = vet_resolved(g, "img.test", results)
    assert [r["host"] for r in kept] == ["93.184.216.34"]


def test_vet_resolved_raises_when_nothing_is_left() -> None:
    g = guard()
    with pytest.raises(AddressBlockedError) as info:
        vet_resolved(g, "img.test", [_result("img.test", "10.0.0.7"), _result("img.test", "::1")])
    assert info.value.reason.startswith("img.test resolves to 10.0.0.7, a private")
    assert isinstance(info.value, OSError)


class StaticResolver(AbstractResolver):
    """A fake DNS: fixed answers per name (the guard's vetting is what is under test)."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        if host not in self.answers:
            raise OSError(f"no such name {host}")
        return [_result(host, address, port) for address in self.answers[host]]

    async def close(self) -> None:
        return None


def test_guarded_resolver_wraps_another_resolver() -> None:
    inner = StaticResolver({"a.test": ["127.0.0.2", "8.8.8.8"], "b.test": ["192.168.0.1"]})
    resolver = GuardedResolver(guard(), inner)

    async def main() -> None:
        kept = await resolver.resolve("a.test", 80)
        assert [r["host"] for r in kept] == ["8.8.8.8"]
        with pytest.raises(AddressBlockedError):
            await resolver.resolve("b.test", 80)
        await resolver.close()

    asyncio.run(main())
    assert inner.asked == ["a.test", "b.test"]


# -- end to end: blocked URLs reach no server ------------------------------------------------


def _settings(**overrides: object) -> Settings:
    base: dict[str, object] = {"max_retries": 1, "backoff_base": 0.01, "download_qps": 0}
    base.update(overrides)
    return load_settings(**base)


def _fetch(
    settings: Settings, tmp_path: Path, urls: list[str], g: Guard | None = None
) -> list[FetchOutcome]:
    async def main() -> list[FetchOutcome]:
        async with Fetcher(settings, tmp_path, guard=g) as fetcher:
            return list(await asyncio.gather(*(fetcher.fetch(u) for u in urls)))

    return asyncio.run(main())


def test_loopback_server_is_blocked_without_exemption(
    image_server: ImageServer, tmp_path: Path
) -> None:
    port = image_server.host(0).split(":")[1]
    urls = [
        image_server.url("img/a.jpg"),
        f"http://2130706434:{port}/img/a.jpg",  # 127.0.0.2
        f"http://0x7f.0.0.2:{port}/img/a.jpg",
        f"http://0177.0.0.2:{port}/img/a.jpg",
        f"http://127.2:{port}/img/a.jpg",
        f"http://[::ffff:127.0.0.2]:{port}/img/a.jpg",
    ]
    outcomes = _fetch(_settings(allowed_private_networks=[]), tmp_path, urls)
    for url, outcome in zip(urls, outcomes, strict=True):
        assert outcome.error_code == "blocked_address", url
        assert "loopback" in (outcome.error or "")
        assert outcome.attempts == 0
    assert image_server.requests == []
    assert list(tmp_path.iterdir()) == []


def test_exemption_lets_the_same_server_through(image_server: ImageServer, tmp_path: Path) -> None:
    settings = _settings(allowed_private_networks=["127.0.0.2/32"])
    ok, blocked = _fetch(
        settings, tmp_path, [image_server.url("img/a.jpg", 0), image_server.url("img/a.jpg", 1)]
    )
    assert ok.ok
    assert blocked.error_code == "blocked_address"
    assert image_server.count(host=0) == 1
    assert image_server.count(host=1) == 0


class ResolvingGuard(Guard):
    """The real Guard, with a fake DNS under its resolver."""

    def __init__(self, settings: Settings, answers: dict[str, list[str]]) -> None:
        super().__init__(settings)
        self.dns = StaticResolver(answers)

    def resolver(self, inner: AbstractResolver | None = None) -> GuardedResolver:
        return GuardedResolver(self, inner or self.dns)


def test_names_are_vetted_on_the_resolved_address(
    image_server: ImageServer, tmp_path: Path
) -> None:
    """DNS answers are vetted: a name pointing at a blocked address never connects, and of a
    mixed answer only the vetted address is connected to."""
    settings = _settings(allowed_private_networks=["127.0.0.2/32"], max_retries=0)
    port = image_server.host(0).split(":")[1]
    port3 = image_server.host(1).split(":")[1]
    g = ResolvingGuard(
        settings,
        {
            "rebind.test": ["127.0.0.3"],  # blocked (not exempt)
            "mixed.test": ["127.0.0.3", "127.0.0.2"],
            "good.test": ["127.0.0.2"],
        },
    )
    good, mixed, rebind = _fetch(
        settings,
        tmp_path,
        [
            f"http://good.test:{port}/img/good.jpg",
            f"http://mixed.test:{port}/img/mixed.jpg",
            f"http://rebind.test:{port3}/img/rebind.jpg",
        ],
        g,
    )
    assert good.ok and mixed.ok
    assert rebind.error_code == "blocked_address"
    assert rebind.error == (
        "rebind.test resolves to 127.0.0.3, a loopback address; "
        "downloads from internal networks are blocked."
    )
    assert image_server.count(host=0) == 2
    assert image_server.count(host=1) == 0


class FlippingResolver(StaticResolver):
    """DNS rebinding: the first answer is harmless, every later one points inside."""

    def __init__(self, first: str, then: str) -> None:
        super().__init__({})
        self.first, self.then = first, then

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        address = self.first if len(self.asked) == 1 else self.then
        return [_result(host, address, port)]


def test_dns_rebinding_cannot_swap_the_address_after_the_check(
    image_server: ImageServer, tmp_path: Path
) -> None:
    """One lookup per connection, vetted where the connection is made: an answer that
    changes between a check and the connect (the rebinding trick) never reaches the inside."""
    settings = _settings(allowed_private_networks=["127.0.0.2/32"], max_retries=0)
    port3 = image_server.host(1).split(":")[1]  # the "internal" server: 127.0.0.3
    g = ResolvingGuard(settings, {})
    g.dns = FlippingResolver(first="127.0.0.2", then="127.0.0.3")
    url = f"http://flip.test:{port3}/img/secret.jpg"
    (first,) = _fetch(settings, tmp_path, [url], g)
    # The one (harmless) answer was vetted and connected to: nothing listens on
    # 127.0.0.2 at that port. A check-then-connect design would have asked twice and
    # connected to 127.0.0.3 with the second answer.
    assert g.dns.asked == ["flip.test"]
    port0 = image_server.host(0).split(":")[1]
    assert first.error_code == "connection_error" or (port0 == port3 and first.ok)
    (second,) = _fetch(settings, tmp_path, [url], g)  # a new lookup: now the inside answer
    assert second.error_code == "blocked_address"
    assert image_server.count(host=1) == 0


def test_redirect_to_a_blocked_address_is_not_followed(
    image_server: ImageServer, tmp_path: Path
) -> None:
    settings = _settings(allowed_private_networks=["127.0.0.2/32"])
    target = image_server.url("img/secret.jpg", 1)  # 127.0.0.3: not exempt
    url = image_server.url(f"redirect-to?url={target}")
    (outcome,) = _fetch(settings, tmp_path, [url])
    assert outcome.error_code == "blocked_address"
    assert outcome.error is not None and outcome.error.startswith("Redirected to a blocked address")
    assert outcome.http_status == 302
    assert image_server.count("/redirect-to", host=0) == 1
    assert image_server.count(host=1) == 0


def test_redirect_to_metadata_spelling_is_not_followed(
    image_server: ImageServer, tmp_path: Path
) -> None:
    settings = _settings(allowed_private_networks=["127.0.0.0/8"])
    url = image_server.url("redirect-to?url=http://2852039166/latest/meta-data/")
    (outcome,) = _fetch(settings, tmp_path, [url])
    assert outcome.error_code == "blocked_address"
    assert "metadata" in (outcome.error or "")
