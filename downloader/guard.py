"""SSRF guard: which URLs and addresses the downloader may connect to.

Three layers, all driven by one `Guard`:

* `check_url` (no DNS): scheme http/https, a host, URL allow/deny lists, and IP-literal hosts in
  every spelling that `inet_aton`/`getaddrinfo` accept (``2130706433``, ``0177.0.0.1``,
  ``0x7f.1``, ``127.1``, ``[::ffff:127.0.0.1]`` …).
* `check_address`: one resolved address. Loopback, private (RFC 1918), link-local, CGNAT,
  multicast, reserved, unspecified, broadcast and cloud-metadata addresses are refused; IPv6
  wrappers (IPv4-mapped, IPv4-translated, IPv4-compatible, NAT64, 6to4, Teredo) are unwrapped
  and the embedded IPv4 re-checked: the IPv4 address a wrapper reaches decides, so exempting
  an IPv6 range (even ``::/0``) never exempts the IPv4 address inside a wrapper.
* `GuardedResolver`: a resolver that vets every address DNS returns and hands the transport
  only vetted ones, so the address actually connected to is the one checked (no DNS-rebinding
  window). IP-literal hosts need no resolver; the fetch transport calls `check_host` on those
  right before connecting.

`ALLOWED_PRIVATE_NETWORKS` exempts addresses inside the listed CIDRs - except cloud metadata
addresses (`METADATA_NETWORKS`: 169.254.169.254, 169.254.170.0/23, 169.254.169.123,
169.254.42.42, 168.63.129.16, 100.100.100.200, 192.0.0.192, fd00:ec2::254, fd00:ec2::23), which
stay blocked whatever the exemptions and in every wrapper (an exemption of ``0.0.0.0/0`` must
not expose instance credentials).

`URL_ALLOWLIST` / `URL_DENYLIST` hold host patterns: a name glob (``*.example.com``) matches
host names only (in lower-case A-label form); an IP-shaped glob (only digits, dots and glob
characters, with a digit: ``10.1.2.*``; or anything with a colon: ``2001:db8:*``) or a CIDR
(``10.0.0.0/8``) matches IP-literal hosts only, in any spelling and inside IPv6 wrappers; a
pattern with neither letters nor digits (``*``) matches every host.

`host_key` gives the per-host key the fetcher's limits and breaker use: one spelling per host
(lower case, no trailing dot, IDNA A-labels, canonical IP text, IPv4-mapped unwrapped, the
effective port).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypedDict
from urllib.parse import urlsplit

import idna

from downloader.errors import excerpt
from downloader.hosts import (
    DEPRECATED_WRAPPERS,
    HostPattern,
    IPAddress,
    IPNetwork,
    compile_host_patterns,
    embedded_ipv4,
    host_key,
    parse_ip_host,
    parse_ipv4_host,
)

if TYPE_CHECKING:
    from downloader.settings import Settings

__all__ = [  # the host-spelling helpers stay importable from here
    "AddressBlockedError",
    "Guard",
    "GuardedResolver",
    "Refusal",
    "ResolveResult",
    "Resolver",
    "SystemResolver",
    "embedded_ipv4",
    "host_key",
    "is_metadata",
    "parse_ip_host",
    "parse_ipv4_host",
    "vet_resolved",
]

BLOCKED_TAIL = "downloads from internal networks are blocked"
HOST_CACHE_SIZE = 4096  # check_host verdicts kept (the rules are fixed per Guard)


def _nets(*specs: tuple[str, str]) -> list[tuple[IPNetwork, str]]:
    return [(ipaddress.ip_network(cidr), label) for cidr, label in specs]


METADATA = "a cloud metadata address"
# Never exempt, whatever ALLOWED_PRIVATE_NETWORKS says (and in every IPv6 wrapper too).
METADATA_NETWORKS = tuple(
    ipaddress.ip_network(a)
    for a in (
        "169.254.169.254/32",  # AWS, GCP, Azure, OpenStack, DigitalOcean ...
        "169.254.170.0/23",  # AWS ECS task metadata (169.254.170.2), EKS pod identity
        "169.254.169.123/32",  # AWS time sync
        "169.254.42.42/32",  # Scaleway
        "168.63.129.16/32",  # Azure wireserver / host agent (a public address)
        "100.100.100.200/32",  # Alibaba Cloud
        "192.0.0.192/32",  # Oracle Cloud
        "fd00:ec2::254/128",  # AWS IMDS over IPv6
        "fd00:ec2::23/128",  # AWS ECS IPv6
    )
)


def is_metadata(addr: IPAddress) -> bool:
    """Whether `addr` is a cloud metadata address (never exempt)."""
    return any(addr.version == net.version and addr in net for net in METADATA_NETWORKS)


# Checked in order; the first match names the reason.
_IPV4_BLOCKS = _nets(
    ("255.255.255.255/32", "the broadcast address"),
    ("0.0.0.0/8", "an unspecified ('this network') address"),
    ("127.0.0.0/8", "a loopback address"),
    ("10.0.0.0/8", "a private (RFC 1918) address"),
    ("172.16.0.0/12", "a private (RFC 1918) address"),
    ("192.168.0.0/16", "a private (RFC 1918) address"),
    ("100.64.0.0/10", "a carrier-grade NAT (100.64.0.0/10) address"),
    ("169.254.0.0/16", "a link-local address"),
    ("224.0.0.0/4", "a multicast address"),
    ("192.0.0.0/24", "a reserved (IETF protocol) address"),
    ("192.0.2.0/24", "a reserved (documentation) address"),
    ("198.51.100.0/24", "a reserved (documentation) address"),
    ("203.0.113.0/24", "a reserved (documentation) address"),
    ("198.18.0.0/15", "a reserved (benchmarking) address"),
    ("192.88.99.0/24", "a reserved (6to4 relay) address"),
    ("240.0.0.0/4", "a reserved address"),
)
_IPV6_BLOCKS = _nets(
    ("::/128", "an unspecified address"),
    ("::1/128", "a loopback address"),
    ("fe80::/10", "a link-local address"),
    ("fc00::/7", "a unique-local (private) address"),
    ("fec0::/10", "a site-local (private) address"),
    ("ff00::/8", "a multicast address"),
    ("100::/64", "a reserved (discard-only) address"),
    ("2001:db8::/32", "a reserved (documentation) address"),
)


class AddressBlockedError(OSError):
    """Raised by `GuardedResolver` when no resolved address may be connected to."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a URL may not be fetched: code is ``bad_url`` or ``blocked_address``."""

    code: str
    reason: str


class Guard:
    """The SSRF rules for one set of settings. Cheap to call; holds no I/O resources."""

    host_key = staticmethod(host_key)  # for callers that hold the Guard class

    def __init__(self, settings: Settings) -> None:
        self._exempt: list[IPNetwork] = [
            ipaddress.ip_network(cidr, strict=False) for cidr in settings.allowed_private_networks
        ]
        self._allow: list[HostPattern] = compile_host_patterns(
            settings.url_allowlist, "URL_ALLOWLIST"
        )
        self._deny: list[HostPattern] = compile_host_patterns(settings.url_denylist, "URL_DENYLIST")
        self._host_cache: dict[str, str | None] = {}

    # -- addresses -------------------------------------------------------------------------

    def _exempted(self, addr: IPAddress) -> bool:
        return any(addr.version == net.version and addr in net for net in self._exempt)

    def _label(self, addr: IPAddress) -> str | None:
        """Why `addr` is refused (a noun phrase), or None when it may be connected to."""
        if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
            addr = ipaddress.IPv6Address(int(addr))  # drop the zone: fe80::1%eth0 -> fe80::1
        if is_metadata(addr):
            return METADATA
        if isinstance(addr, ipaddress.IPv6Address):
            wrapped = embedded_ipv4(addr)
            if wrapped:
                # A wrapper reaches the IPv4 address it carries: that address decides, and an
                # exemption of the IPv6 range alone (say ::/0) does not exempt it.
                for wrapper, inner in wrapped:
                    if is_metadata(inner):
                        return f"{wrapper} wrapping {inner}, {METADATA}"
                for wrapper, inner in wrapped:
                    inner_label = self._label(inner)
                    if inner_label is not None:
                        return f"{wrapper} wrapping {inner}, {inner_label}"
                if not any(addr in net for net in DEPRECATED_WRAPPERS):
                    return None
        if self._exempted(addr):
            return None
        table = _IPV6_BLOCKS if isinstance(addr, ipaddress.IPv6Address) else _IPV4_BLOCKS
        for net, label in table:
            if addr in net:
                return label
        if not addr.is_global or addr.is_reserved:
            return "a reserved (non-global) address"
        return None

    def check_address(self, ip: str | IPAddress) -> str | None:
        """Reason `ip` may not be connected to, or None. Unparseable input is refused."""
        if isinstance(ip, str):
            parsed = parse_ip_host(ip)
            if parsed is None:
                return f"{excerpt(repr(ip))} is not an IP address"
            ip = parsed
        label = self._label(ip)
        if label is None:
            return None
        return f"{ip} is {label}; {BLOCKED_TAIL}"

    # -- host names and URLs -----------------------------------------------------------------

    def check_host(self, host: str) -> str | None:
        """Reason a URL host (name or IP literal in any spelling) is refused, or None. No DNS."""
        if host in self._host_cache:
            return self._host_cache[host]
        reason = self._check_host(host)
        if len(self._host_cache) >= HOST_CACHE_SIZE:
            self._host_cache.clear()
        self._host_cache[host] = reason
        return reason

    def _check_host(self, host: str) -> str | None:
        name = host.strip().lower()
        if name.startswith("[") and name.endswith("]"):
            name = name[1:-1]
        if not name:
            return "The URL has no host"
        addr = parse_ip_host(name)
        if addr is not None:
            label = self._label(addr)
            if label is not None:
                shown = str(addr) if name == str(addr) else f"{excerpt(name)} (= {addr})"
                return f"{shown} is {label}; {BLOCKED_TAIL}"
            plain = str(addr)
        else:
            plain = name.rstrip(".")
            if not plain.isascii():  # match the lists against the A-label form DNS sees
                with contextlib.suppress(idna.IDNAError, UnicodeError):
                    plain = idna.encode(plain, uts46=True).decode("ascii")
            if plain == "localhost" or plain.endswith(".localhost"):
                # RFC 6761: always loopback, whatever DNS says.
                label = self._label(ipaddress.IPv4Address("127.0.0.1"))
                if label is not None:
                    return f"{excerpt(plain)} is {label}; {BLOCKED_TAIL}"
        for pattern in self._deny:
            if pattern.matches(plain, addr):
                return f"{excerpt(plain)} matches the URL denylist pattern {pattern.text!r}"
        if self._allow and not any(p.matches(plain, addr) for p in self._allow):
            return f"{excerpt(plain)} is not on the URL allowlist"
        return None

    def vet_url(self, url: str) -> Refusal | None:
        """Refusal (bad_url or blocked_address) for `url`, or None. No DNS."""
        try:
            parts = urlsplit(url.strip())
            host = parts.hostname
            _ = parts.port  # raises on a bad port
        except ValueError:
            return Refusal("bad_url", "The URL is not a valid address.")
        if parts.scheme.lower() not in ("http", "https"):
            return Refusal("bad_url", "Only http and https URLs can be downloaded.")
        if not host:
            return Refusal("bad_url", "The URL has no host name.")
        reason = self.check_host(host)
        if reason is not None:
            return Refusal("blocked_address", _sentence(reason))
        return None

    def check_url(self, url: str) -> str | None:
        """Reason `url` is refused (bad scheme, no host, blocked host/IP literal), or None."""
        refusal = self.vet_url(url)
        return refusal.reason if refusal else None

    def resolver(self, inner: Resolver | None = None) -> GuardedResolver:
        """A resolver that only returns addresses this guard allows."""
        return GuardedResolver(self, inner)


def _sentence(reason: str) -> str:
    return reason if reason.endswith(".") else reason + "."


class ResolveResult(TypedDict):
    """One address a name resolved to."""

    hostname: str
    host: str
    port: int
    family: int
    proto: int
    flags: int


class Resolver(Protocol):
    """Name resolution for the transport: a name and port in, the addresses out."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]: ...

    async def close(self) -> None: ...


class SystemResolver:
    """The system's getaddrinfo, run in the event loop's thread pool."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, family=family, type=socket.SOCK_STREAM, flags=socket.AI_ADDRCONFIG
        )
        return [
            ResolveResult(
                hostname=host,
                host=str(address[0]),
                port=int(address[1]),
                family=found_family,
                proto=proto,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for found_family, _, proto, _, address in infos
        ]

    async def close(self) -> None:
        return None


class GuardedResolver:
    """Wraps a resolver (default: the system's) and drops refused addresses.

    If every address is refused, raises `AddressBlockedError` (an OSError, so the transport
    can tell it from a failed lookup).
    """

    def __init__(self, guard: Guard, inner: Resolver | None = None) -> None:
        self._guard = guard
        self._inner = inner or SystemResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        return vet_resolved(self._guard, host, results)

    async def close(self) -> None:
        await self._inner.close()


def vet_resolved(guard: Guard, host: str, results: Sequence[ResolveResult]) -> list[ResolveResult]:
    """The results whose address the guard allows; AddressBlockedError when none is left."""
    allowed: list[ResolveResult] = []
    first_refusal: str | None = None
    for result in results:
        addr = parse_ip_host(str(result["host"]))
        label = guard._label(addr) if addr is not None else "not an IP address"
        if label is None:
            allowed.append(result)
        elif first_refusal is None:
            first_refusal = f"{excerpt(host)} resolves to {result['host']}, {label}; {BLOCKED_TAIL}"
    if not allowed:
        raise AddressBlockedError(
            first_refusal or f"{excerpt(host)} did not resolve to any address"
        )
    return allowed
