"""Host spellings: IP literals in every form `inet_aton`/`getaddrinfo` accept, the IPv4
address inside IPv6 wrappers, one key per host, and URL allow/deny host patterns.

Pure functions, no I/O; `downloader.guard` builds the SSRF rules on top of them.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import idna

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

HOST_KEY_CACHE_SIZE = 4096  # host_key results kept (least recently used dropped first)

_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_SIXTOFOUR = ipaddress.ip_network("2002::/16")
_TEREDO = ipaddress.ip_network("2001::/32")
_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated IPv4-compatible (RFC 4291 2.5.5.1)
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # IPv4-translated (SIIT, RFC 2765)
# Wrappers that are reserved ranges themselves: the IPv6 address is checked after the IPv4 one.
DEPRECATED_WRAPPERS = (_COMPATIBLE, _TRANSLATED)


def _rfc6052_extract(value: int, prefix_len: int) -> ipaddress.IPv4Address:
    """The IPv4 address embedded after a `prefix_len` NAT64 prefix (RFC 6052 section 2.2).

    Bits 64-71 (the "u" octet) never carry address bits.
    """
    bits = 0
    taken = 0
    pos = prefix_len
    while taken < 32:
        if 64 <= pos < 72:
            pos = 72
            continue
        bit = (value >> (127 - pos)) & 1
        bits = (bits << 1) | bit
        taken += 1
        pos += 1
    return ipaddress.IPv4Address(bits)


def embedded_ipv4(addr: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """IPv4 addresses an IPv6 wrapper carries, with the wrapper's name; [] for plain IPv6."""
    value = int(addr)
    if addr in _MAPPED:
        return [("an IPv4-mapped IPv6 address", ipaddress.IPv4Address(value & 0xFFFFFFFF))]
    if addr in _NAT64:
        return [("a NAT64 address", ipaddress.IPv4Address(value & 0xFFFFFFFF))]
    if addr in _NAT64_LOCAL:
        # The local-use prefix may be used with any prefix length from /48 on: try each layout.
        return [
            ("a local-use NAT64 address", _rfc6052_extract(value, length))
            for length in (48, 56, 64, 96)
        ]
    if addr in _SIXTOFOUR:
        return [("a 6to4 address", ipaddress.IPv4Address((value >> 80) & 0xFFFFFFFF))]
    if addr in _TEREDO:
        server = ipaddress.IPv4Address((value >> 64) & 0xFFFFFFFF)
        client = ipaddress.IPv4Address(~value & 0xFFFFFFFF)
        return [("a Teredo address", client), ("a Teredo address", server)]
    if addr in _TRANSLATED:
        return [("an IPv4-translated IPv6 address", ipaddress.IPv4Address(value & 0xFFFFFFFF))]
    if addr in _COMPATIBLE and value > 1:  # :: and ::1 are the IPv6 unspecified and loopback
        wrapper = "an IPv4-compatible IPv6 address (deprecated, reserved)"
        return [(wrapper, ipaddress.IPv4Address(value))]
    return []


def parse_ipv4_host(host: str) -> ipaddress.IPv4Address | None:
    """Parse an IPv4 host the way inet_aton/getaddrinfo do, or None if `host` is a name.

    Accepts 1-4 dot-separated parts, each decimal, octal (leading 0) or hex (0x); the last part
    fills the remaining bytes (``127.1`` = 127.0.0.1, ``2130706433`` = 127.0.0.1). A single
    trailing dot is ignored. Returns None for anything that is not purely numeric.
    """
    text = host.strip().lower()
    if text.endswith("."):
        text = text[:-1]
    parts = text.split(".")
    if not text or len(parts) > 4:
        return None
    numbers: list[int] = []
    for part in parts:
        if not part:
            return None
        if part.startswith("0x"):
            digits, base = part[2:], 16
            allowed = "0123456789abcdef"
        elif len(part) > 1 and part.startswith("0"):
            digits, base = part[1:], 8
            allowed = "01234567"
        else:
            digits, base = part, 10
            allowed = "0123456789"
        if any(ch not in allowed for ch in digits):
            return None
        numbers.append(int(digits, base) if digits else 0)
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        # inet_aton refuses it; getaddrinfo would then ask DNS, where the resolver vets it.
        return None
    value = last
    for index, number in enumerate(head):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def parse_ip_host(host: str) -> IPAddress | None:
    """An IP-literal host (IPv6 with or without brackets/zone, IPv4 in any legacy spelling)."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        text = text.replace("%25", "%", 1)
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            return None
    return parse_ipv4_host(text)


@functools.lru_cache(maxsize=HOST_KEY_CACHE_SIZE)
def host_key(host: str, port: int) -> str:
    """One key per host for per-host limits and the breaker, however the URL spelled it.

    ``Example.COM.``, ``example.com``, ``2130706434``, ``0x7f.0.0.2``, ``[::ffff:127.0.0.2]``
    and ``[0:0::1]`` all name one host each: lower case, no trailing dot, IDNA A-labels,
    canonical IP text (an IPv4-mapped address is the IPv4 address it reaches), and the port.
    """
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    addr = parse_ip_host(name)
    if isinstance(addr, ipaddress.IPv6Address) and addr in _MAPPED:
        addr = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if isinstance(addr, ipaddress.IPv6Address):
        return f"[{addr}]:{port}"
    if addr is not None:
        return f"{addr}:{port}"
    name = name.rstrip(".")
    if not name.isascii():
        with contextlib.suppress(idna.IDNAError, UnicodeError):
            name = idna.encode(name, uts46=True).decode("ascii")
    return f"{name}:{port}"


_GLOB_CHARS = frozenset("*?[]!-")
_IPV4_PATTERN_CHARS = frozenset("0123456789.") | _GLOB_CHARS


@dataclass(frozen=True, slots=True)
class HostPattern:
    """One URL_ALLOWLIST / URL_DENYLIST entry.

    kind ``name``: a glob over host names only; ``ip``: a glob over the canonical text of
    IP-literal hosts only; ``cidr``: IP-literal hosts inside `network`; ``any``: a glob with
    neither letters nor digits (``*``), over every host.
    """

    text: str
    kind: str
    network: IPNetwork | None = None

    def matches(self, plain: str, addr: IPAddress | None) -> bool:
        """`plain`: the host (lower-case A-labels, or the canonical IP); `addr`: the IP-literal
        host's address, None for a name. An IP pattern also matches the IPv4 address inside
        an IPv6 wrapper (``[::ffff:10.1.2.3]`` is denied by ``10.1.2.*``)."""
        if self.kind == "any":
            return fnmatch.fnmatchcase(plain, self.text)
        if addr is None:
            return self.kind == "name" and fnmatch.fnmatchcase(plain, self.text)
        if self.kind == "name":
            return False
        for candidate in _reached_addresses(addr):
            if self.network is not None:
                if candidate.version == self.network.version and candidate in self.network:
                    return True
            elif fnmatch.fnmatchcase(str(candidate), self.text):
                return True
        return False


def _reached_addresses(addr: IPAddress) -> list[IPAddress]:
    """`addr` without its zone, then the IPv4 addresses it wraps (if any)."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return [addr]
    plain = ipaddress.IPv6Address(int(addr))
    return [plain, *(inner for _, inner in embedded_ipv4(plain))]


def compile_host_patterns(patterns: Sequence[str], setting: str | None = None) -> list[HostPattern]:
    """The patterns of one list, classified as `HostPattern` says; ValueError (naming `setting`)
    for a pattern with a ``/`` that is not a network."""
    compiled: list[HostPattern] = []
    for raw in patterns:
        text = raw.strip().lower()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        if not text:
            continue
        if "/" in text:
            try:
                network = ipaddress.ip_network(text, strict=False)
            except ValueError as exc:
                where = f"{setting}: " if setting else ""
                raise ValueError(f"{where}{raw.strip()!r} is not a valid network") from exc
            compiled.append(HostPattern(text, "cidr", network))
        elif ":" in text or (set(text) <= _IPV4_PATTERN_CHARS and any(c.isdigit() for c in text)):
            compiled.append(HostPattern(text, "ip"))
        elif not any(c.isalnum() for c in text):
            compiled.append(HostPattern(text, "any"))
        else:
            compiled.append(HostPattern(text, "name"))
    return compiled
