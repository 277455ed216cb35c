"""Which certificate authorities are trusted (issue 20): SSL_CERT_FILE, SSL_CERT_DIR, TLS_TRUST.

HTTPS servers on loopback with certificates from trustme CAs (a "company root" that no public
store knows). The default trusts certifi's CAs plus SSL_CERT_FILE / SSL_CERT_DIR;
TLS_TRUST=system the OS store (truststore) plus the same files. A certificate failure names the
setting that fixes it. Host names are verified (SNI = the URL's host) even though the guard
chooses the address connected to.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

import pytest
import trustme

from downloader.fetch import Fetcher, FetchOutcome
from downloader.guard import Guard, GuardedResolver, Resolver, ResolveResult
from downloader.settings import Settings
from tests.support.fetching import assert_failed, fetch_one, make_settings
from tests.support.forward_proxy import JPEG, TLSImageServer, write_ca

pytestmark = pytest.mark.timeout(60)


def test_an_unknown_ca_fails_and_the_message_names_the_settings(tmp_path: Path) -> None:
    with TLSImageServer(trustme.CA()) as server:
        outcome = fetch_one(make_settings(), tmp_path, server.url())
    assert_failed(outcome, "connection_error")
    assert outcome.attempts == 1  # not retried: the same certificate would come back
    error = outcome.error or ""
    assert error.startswith("The secure connection failed"), error
    assert "SSL_CERT_FILE" in error and "TLS_TRUST=system" in error, error


def test_ssl_cert_file_from_the_environment_is_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = trustme.CA()
    monkeypatch.setenv("SSL_CERT_FILE", str(write_ca(ca, tmp_path)))
    with TLSImageServer(ca) as server:
        outcome = fetch_one(make_settings(), tmp_path, server.url())
    assert outcome.ok, outcome
    assert outcome.body == JPEG


def test_ssl_cert_dir_is_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = trustme.CA()
    folder = tmp_path / "certs"
    folder.mkdir()
    pem = write_ca(ca, folder)
    subprocess.run(["openssl", "rehash", str(folder)], check=True, capture_output=True)
    assert any(p.suffix == ".0" for p in folder.iterdir()), "openssl rehash made no link"
    monkeypatch.setenv("SSL_CERT_DIR", str(folder))
    assert pem.exists()
    with TLSImageServer(ca) as server:
        outcome = fetch_one(make_settings(), tmp_path, server.url())
    assert outcome.ok, outcome


def test_tls_trust_system_uses_the_os_store_plus_the_files(tmp_path: Path) -> None:
    ca = trustme.CA()
    with TLSImageServer(ca) as server:
        alone = fetch_one(make_settings(tls_trust="system"), tmp_path, server.url())
        with_file = fetch_one(
            make_settings(tls_trust="system", ssl_cert_file=str(write_ca(ca, tmp_path))),
            tmp_path,
            server.url(),
        )
    assert_failed(alone, "connection_error")  # the OS store does not know a test CA
    assert "SSL_CERT_FILE" in (alone.error or "")
    assert with_file.ok, with_file


class ShopDns:
    """images.shop.test is 127.0.0.3 (as a real DNS would answer for a CDN name)."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host != "images.shop.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            ResolveResult(
                hostname=host,
                host="127.0.0.3",
                port=port,
                family=socket.AF_INET,
                proto=socket.IPPROTO_TCP,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        return None


class DnsGuard(Guard):
    def resolver(self, inner: Resolver | None = None) -> GuardedResolver:
        return GuardedResolver(self, inner or ShopDns())


def fetch_via_dns(settings: Settings, tmp_path: Path, url: str) -> FetchOutcome:
    async def main() -> FetchOutcome:
        async with Fetcher(settings, tmp_path, guard=DnsGuard(settings)) as fetcher:
            return await fetcher.fetch(url)

    return asyncio.run(main())


def test_the_host_name_is_verified_on_the_vetted_address(tmp_path: Path) -> None:
    ca = trustme.CA()
    settings = make_settings(ssl_cert_file=str(write_ca(ca, tmp_path)), max_retries=0)
    with TLSImageServer(ca, names=("images.shop.test",)) as server:
        outcome = fetch_via_dns(settings, tmp_path, server.url(host="images.shop.test"))
        assert outcome.ok, outcome
        assert server.sni == ["images.shop.test"]  # SNI is the name, not the address
    with TLSImageServer(ca, names=("other.test",)) as server:
        outcome = fetch_via_dns(settings, tmp_path, server.url(host="images.shop.test"))
    assert_failed(outcome, "connection_error")  # a certificate for another name
    assert "secure connection" in (outcome.error or "")


def test_messages_say_what_went_wrong(tmp_path: Path) -> None:
    """For the record: the unknown-CA message, and a wrong host name (no trust hint there)."""
    ca = trustme.CA()
    with TLSImageServer(trustme.CA()) as server:
        unknown = fetch_one(make_settings(), tmp_path, server.url())
    settings = make_settings(ssl_cert_file=str(write_ca(ca, tmp_path)), max_retries=0)
    with TLSImageServer(ca, names=("other.test",)) as server:
        wrong_name = fetch_via_dns(settings, tmp_path, server.url(host="images.shop.test"))
    assert "certificate verify failed" in (unknown.error or ""), unknown.error
    assert "SSL_CERT_FILE" not in (wrong_name.error or ""), wrong_name.error
    print(unknown.error, wrong_name.error, sep="\n")
