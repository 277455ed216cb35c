"""Behind an explicit forward proxy (issue 20): a real proxy (proxy.py, a subprocess on
127.0.0.5) between the fetcher and loopback image servers.

HTTP images are sent to the proxy in absolute form, HTTPS ones through a CONNECT tunnel (TLS
still verified end to end, with a private CA given by SSL_CERT_FILE); NO_PROXY hosts go direct;
and a target the guard refuses never reaches the proxy. The proxy's own address is trusted (it
is not in ALLOWED_PRIVATE_NETWORKS here: an administrator configured it).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from downloader.fetch import Fetcher, FetchOutcome
from downloader.fetch.client import BlockedAddress, Transport
from downloader.guard import Guard, GuardedResolver, Resolver, ResolveResult
from downloader.settings import Settings
from tests.support.fetching import assert_failed, fetch_all, make_settings
from tests.support.forward_proxy import JPEG, ForwardProxy, TLSImageServer, write_ca
from tests.support.imageserver import ImageServer, image_bytes

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[ForwardProxy]:
    with ForwardProxy(tmp_path / "proxy.log") as running:
        yield running


def test_an_http_image_goes_through_the_proxy(
    proxy: ForwardProxy, image_server: ImageServer, tmp_path: Path
) -> None:
    # Only the image server is exempted: the proxy (127.0.0.5) is trusted as configured.
    settings = make_settings(
        allowed_private_networks=["127.0.0.2/32"], http_proxy=proxy.url, max_retries=0
    )
    url = image_server.url("img/through.jpg")
    (outcome,) = fetch_all(settings, tmp_path / "t", [url])
    assert outcome.ok, outcome
    assert outcome.body == image_bytes("through", "jpg")
    target = url.removeprefix("http://")
    assert any(f"GET {target}" in line for line in proxy.handled(wait_for=target)), proxy.log()


def test_an_https_image_goes_through_connect_with_a_private_ca(
    proxy: ForwardProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = trustme.CA()
    # The environment's own names, lower-case for the proxy as curl writes it.
    monkeypatch.setenv("https_proxy", proxy.url)
    monkeypatch.setenv("SSL_CERT_FILE", str(write_ca(ca, tmp_path)))
    settings = make_settings(allowed_private_networks=["127.0.0.3/32"], max_retries=0)
    assert settings.https_proxy == proxy.url
    with TLSImageServer(ca, "127.0.0.3") as server:
        (outcome,) = fetch_all(settings, tmp_path / "t", [server.url()])
        assert outcome.ok, outcome
        assert outcome.body == JPEG and server.paths == ["/img/a.jpg"]
        target = f"CONNECT 127.0.0.3:{server.port}"
        assert any(target in line for line in proxy.handled(wait_for=target)), proxy.log()


def test_a_no_proxy_host_goes_direct(
    proxy: ForwardProxy, image_server: ImageServer, tmp_path: Path
) -> None:
    settings = make_settings(http_proxy=proxy.url, no_proxy="example.org, 127.0.0.3")
    direct = image_server.url("img/direct.jpg", host=1)  # 127.0.0.3
    proxied = image_server.url("img/proxied.jpg", host=0)  # 127.0.0.2
    outcomes = fetch_all(settings, tmp_path / "t", [direct, proxied])
    assert all(o.ok for o in outcomes), outcomes
    lines = proxy.handled(wait_for="proxied.jpg")
    assert any("proxied.jpg" in line for line in lines), proxy.log()
    assert not any("direct.jpg" in line for line in lines), lines
    assert image_server.count("/img/direct.jpg", host=1) == 1


BLOCKED = [
    "http://10.0.0.1/a.jpg",
    "http://169.254.169.254/latest/meta-data/",
    "https://169.254.169.254/latest/meta-data/",  # would be a CONNECT
    "http://localhost/a.jpg",  # a name: resolved locally, refused on its address
    "https://[::ffff:10.0.0.1]/a.jpg",
]


def test_a_blocked_target_never_reaches_the_proxy(
    proxy: ForwardProxy, image_server: ImageServer, tmp_path: Path
) -> None:
    settings = make_settings(
        allowed_private_networks=["127.0.0.2/32"],
        http_proxy=proxy.url,
        https_proxy=proxy.url,
        max_retries=0,
    )
    good = image_server.url("img/allowed.jpg")
    outcomes = fetch_all(settings, tmp_path / "t", [*BLOCKED, good])
    for outcome in outcomes[:-1]:
        assert_failed(outcome, "blocked_address")
    assert outcomes[-1].ok, outcomes[-1]
    lines = proxy.handled(wait_for="allowed.jpg")  # the proxy is up and logging
    assert any("allowed.jpg" in line for line in lines), proxy.log()
    for line in lines:
        assert "10.0.0.1" not in line and "169.254" not in line and "localhost" not in line


# -- names that do not resolve locally -----------------------------------------------------------


class Dns:
    """`known` names resolve to their address; every other name fails as an unknown name."""

    def __init__(self, known: dict[str, str]) -> None:
        self.known = known

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.known:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            ResolveResult(
                hostname=host,
                host=self.known[host],
                port=port,
                family=socket.AF_INET,
                proto=socket.IPPROTO_TCP,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        return None


class DnsGuard(Guard):
    def __init__(self, settings: Settings, dns: Resolver) -> None:
        super().__init__(settings)
        self.dns = dns

    def resolver(self, inner: Resolver | None = None) -> GuardedResolver:
        return GuardedResolver(self, inner or self.dns)


def test_behind_a_proxy_names_are_vetted_locally_and_unknown_ones_left_to_the_proxy() -> None:
    settings = make_settings(allowed_private_networks=[], http_proxy="http://127.0.0.5:9")
    guard = DnsGuard(settings, Dns({"intranet.corp": "10.1.2.3", "cdn.example": "93.184.216.34"}))

    async def main() -> None:
        transport = Transport(settings, guard)
        with pytest.raises(BlockedAddress) as info:
            await transport.vet_proxied_target("intranet.corp", 80)
        assert "10.1.2.3" in info.value.reason
        await transport.vet_proxied_target("cdn.example", 80)  # public: allowed
        await transport.vet_proxied_target("only-the-proxy-knows.example", 80)  # left to it
        await transport.aclose()

    asyncio.run(main())


def test_a_refused_target_through_the_proxy_is_one_failure_not_a_crash(
    proxy: ForwardProxy, tmp_path: Path
) -> None:
    """The proxy answers 502 when it cannot reach the target: an HTTP failure like any other."""
    closed = socket.socket()
    closed.bind(("127.0.0.3", 0))
    port = closed.getsockname()[1]
    closed.close()
    settings = make_settings(http_proxy=proxy.url, max_retries=0)

    async def main() -> FetchOutcome:
        async with Fetcher(settings, tmp_path / "t") as fetcher:
            return await fetcher.fetch(f"http://127.0.0.3:{port}/a.jpg")

    outcome = asyncio.run(main())
    assert not outcome.ok and outcome.error_code in ("http_502", "connection_error"), outcome


# -- the settings ----------------------------------------------------------------------------------


def test_proxy_settings_read_the_usual_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from downloader.settings import SettingsError, load_settings

    monkeypatch.setenv("HTTP_PROXY", "http://user:s3cret@proxy.corp:3128")
    monkeypatch.setenv("https_proxy", "proxy.corp:3129")
    monkeypatch.setenv("no_proxy", ".internal.corp,localhost")
    settings = load_settings()
    assert settings.http_proxy == "http://user:s3cret@proxy.corp:3128"
    assert settings.https_proxy == "proxy.corp:3129"
    assert settings.no_proxy == ".internal.corp,localhost"
    shown = settings.masked()
    assert "s3cret" not in str(shown) and shown["HTTP_PROXY"] == "http://user:***@proxy.corp:3128"
    routes = Transport(settings, None).routes
    assert routes.proxy_for("http", "cdn.example", 80) is not None
    assert routes.proxy_for("http", "img.internal.corp", 80) is None
    https = routes.proxy_for("https", "cdn.example", 443)
    assert https is not None and str(https.url) == "http://proxy.corp:3129"
    plain = routes.proxy_for("http", "cdn.example", 80)
    assert plain is not None and plain.auth is not None and plain.auth.password == "s3cret"
    assert "s3cret" not in str(plain.url)
    monkeypatch.setenv("HTTPS_PROXY", "socks5://proxy.corp:1080")
    monkeypatch.delenv("https_proxy")
    with pytest.raises(SettingsError, match="HTTPS_PROXY"):
        load_settings()
