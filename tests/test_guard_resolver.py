"""SSRF guard where connections are made: DNS answers vetted in the resolver the Fetcher
connects through, and the guard end to end. Pure address logic is in test_guard.py.

End-to-end tests only ever connect to 127.0.0.x servers of this test run; blocked URLs are
shown to reach no server at all.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from downloader.guard import (
    AddressBlockedError,
    Guard,
    GuardedResolver,
    Resolver,
    ResolveResult,
    SystemResolver,
    vet_resolved,
)
from downloader.settings import Settings, load_settings
from tests.support.fetching import fetch_all
from tests.support.imageserver import ImageServer


def guard(**overrides: object) -> Guard:
    return Guard(load_settings(**overrides))


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


class StaticResolver:
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


def test_system_resolver_answers_from_the_hosts_file() -> None:
    """The default resolver (getaddrinfo in a thread) on a name every machine has; the guard
    then refuses its loopback answers unless exempted."""

    async def main() -> None:
        found = await SystemResolver().resolve("localhost", 8080, socket.AF_UNSPEC)
        assert {r["host"] for r in found} & {"127.0.0.1", "::1"}
        assert all(r["port"] == 8080 and r["hostname"] == "localhost" for r in found)
        with pytest.raises(AddressBlockedError, match="loopback"):
            await guard().resolver().resolve("localhost", 8080, socket.AF_UNSPEC)
        allowed = guard(allowed_private_networks=["127.0.0.0/8", "::1/128"]).resolver()
        assert await allowed.resolve("localhost", 8080, socket.AF_UNSPEC)
        await allowed.close()

    asyncio.run(main())


# -- end to end: blocked URLs reach no server ------------------------------------------------


def _settings(**overrides: object) -> Settings:
    base: dict[str, object] = {"max_retries": 1, "backoff_base": 0.01, "download_qps": 0}
    base.update(overrides)
    return load_settings(**base)


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
    outcomes = fetch_all(_settings(allowed_private_networks=[]), tmp_path, urls)
    for url, outcome in zip(urls, outcomes, strict=True):
        assert outcome.error_code == "blocked_address", url
        assert "loopback" in (outcome.error or "")
        assert outcome.attempts == 0
    assert image_server.requests == []
    assert list(tmp_path.iterdir()) == []


def test_exemption_lets_the_same_server_through(image_server: ImageServer, tmp_path: Path) -> None:
    settings = _settings(allowed_private_networks=["127.0.0.2/32"])
    ok, blocked = fetch_all(
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

    def resolver(self, inner: Resolver | None = None) -> GuardedResolver:
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
    good, mixed, rebind = fetch_all(
        settings,
        tmp_path,
        [
            f"http://good.test:{port}/img/good.jpg",
            f"http://mixed.test:{port}/img/mixed.jpg",
            f"http://rebind.test:{port3}/img/rebind.jpg",
        ],
        guard=g,
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
    (first,) = fetch_all(settings, tmp_path, [url], guard=g)
    # The one (harmless) answer was vetted and connected to: nothing listens on
    # 127.0.0.2 at that port. A check-then-connect design would have asked twice and
    # connected to 127.0.0.3 with the second answer.
    assert g.dns.asked == ["flip.test"]
    port0 = image_server.host(0).split(":")[1]
    assert first.error_code == "connection_error" or (port0 == port3 and first.ok)
    (second,) = fetch_all(settings, tmp_path, [url], guard=g)  # a new lookup: now the inside answer
    assert second.error_code == "blocked_address"
    assert image_server.count(host=1) == 0


def test_redirect_to_a_blocked_address_is_not_followed(
    image_server: ImageServer, tmp_path: Path
) -> None:
    settings = _settings(allowed_private_networks=["127.0.0.2/32"])
    target = image_server.url("img/secret.jpg", 1)  # 127.0.0.3: not exempt
    url = image_server.url(f"redirect-to?url={target}")
    (outcome,) = fetch_all(settings, tmp_path, [url])
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
    (outcome,) = fetch_all(settings, tmp_path, [url])
    assert outcome.error_code == "blocked_address"
    assert "metadata" in (outcome.error or "")
