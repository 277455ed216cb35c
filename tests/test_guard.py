"""SSRF guard, pure logic (nothing connects): host spellings, the address table, exemptions,
URLs and allow/deny lists. The resolver and the guard end to end are in test_guard_resolver.py.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest

from downloader.guard import Guard, embedded_ipv4, parse_ip_host, parse_ipv4_host
from downloader.settings import load_settings


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
