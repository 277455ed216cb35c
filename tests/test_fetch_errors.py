"""Fetcher failures: HTTP errors, retries, Retry-After, timeouts, connections and TLS, against
real HTTP servers on 127.0.0.x (tests/support/imageserver)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import pytest

from downloader.fetch import Fetcher, FetchOutcome
from tests.support.fetching import assert_failed, fetch_one, leftovers, make_settings
from tests.support.imageserver import ImageServer, Reply, Req, closed_port_url, image_bytes

# -- HTTP errors and retries -----------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 451])
def test_other_4xx_fail_at_once(image_server: ImageServer, tmp_path: Path, status: int) -> None:
    outcome = fetch_one(make_settings(), tmp_path, image_server.url(f"status/{status}"))
    assert_failed(outcome, f"http_{status}")
    assert outcome.http_status == status and outcome.attempts == 1
    assert image_server.count() == 1
    assert leftovers(tmp_path) == []


def test_404_message(image_server: ImageServer, tmp_path: Path) -> None:
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("status/404"))
    assert outcome.error == "The server answered 404 Not Found."


def test_503_then_ok_is_retried(image_server: ImageServer, tmp_path: Path) -> None:
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("flaky/a?fails=2"))
    assert outcome.ok and outcome.attempts == 3
    assert outcome.sha256 == hashlib.sha256(image_bytes("flaky-a")).hexdigest()
    assert [r.status for r in image_server.requests] == [503, 503, 200]


@pytest.mark.parametrize("status", [408, 429, 500, 502, 504])
def test_retryable_statuses(image_server: ImageServer, tmp_path: Path, status: int) -> None:
    url = image_server.url(f"flaky/s{status}?fails=1&status={status}")
    outcome = fetch_one(make_settings(), tmp_path, url)
    # a 429 is the host's pace, not a failed attempt (tests/test_politeness.py)
    assert outcome.ok and outcome.attempts == (1 if status == 429 else 2)


def test_retries_are_limited(image_server: ImageServer, tmp_path: Path) -> None:
    settings = make_settings(max_retries=2)
    outcome = fetch_one(settings, tmp_path, image_server.url("flaky/b?fails=10"))
    assert_failed(outcome, "http_503")
    assert outcome.attempts == 3 and outcome.http_status == 503
    assert image_server.count() == 3


def test_no_retries_when_max_retries_is_zero(image_server: ImageServer, tmp_path: Path) -> None:
    outcome = fetch_one(make_settings(max_retries=0), tmp_path, image_server.url("flaky/z"))
    assert_failed(outcome, "http_503")
    assert outcome.attempts == 1


def test_retry_after_seconds_is_honoured(image_server: ImageServer, tmp_path: Path) -> None:
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("ratelimit/a?after=1"))
    assert outcome.ok and outcome.attempts == 1  # a 429 is not a failed attempt
    first, second = image_server.requests
    assert first.status == 429 and second.status == 200
    assert first.end is not None
    assert second.start - first.end >= 0.9


def test_503_with_retry_after_is_honoured(image_server: ImageServer, tmp_path: Path) -> None:
    def unavailable_once(req: Req) -> Reply:
        if req.server.bump(f"503-{req.param('id')}") == 1:
            return Reply.text(503, "maintenance", headers=[("Retry-After", "1")])
        return Reply.image("after-503", "jpg")

    image_server.add_route(r"^/maintenance/(?P<id>\w+)$", unavailable_once)
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("maintenance/a"))
    assert outcome.ok and outcome.attempts == 2
    first, second = image_server.requests
    assert first.status == 503 and second.status == 200
    assert first.end is not None
    assert second.start - first.end >= 0.9  # the server's Retry-After, not the 20 ms backoff


def test_retry_after_http_date_is_honoured(image_server: ImageServer, tmp_path: Path) -> None:
    # HTTP dates have whole seconds: "now + 2 s" is between 1 and 2 s away when sent
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("ratelimit/d?after=2&date=1"))
    assert outcome.ok and outcome.attempts == 1
    first, second = image_server.requests
    assert first.end is not None
    assert second.start - first.end >= 0.9


def test_retry_after_is_capped(image_server: ImageServer, tmp_path: Path) -> None:
    settings = make_settings(retry_after_cap=0.5)
    started = time.monotonic()
    outcome = fetch_one(settings, tmp_path, image_server.url("ratelimit/c?after=30"))
    assert outcome.ok and outcome.attempts == 1
    first, second = image_server.requests
    assert first.end is not None
    assert second.start - first.end >= 0.4
    assert time.monotonic() - started < 20  # not the 30 s asked for


def test_retry_that_cannot_fit_the_deadline_is_not_attempted(
    image_server: ImageServer, tmp_path: Path
) -> None:
    """A 503's Retry-After past the deadline. (A 429's wait is not charged to the deadline:
    tests/test_politeness.py.)"""

    def unavailable(req: Req) -> Reply:
        return Reply.text(503, "maintenance", headers=[("Retry-After", "20")])

    image_server.add_route(r"^/maintenance/e$", unavailable)
    settings = make_settings(download_deadline=3)
    started = time.monotonic()
    outcome = fetch_one(settings, tmp_path, image_server.url("maintenance/e"))
    assert_failed(outcome, "http_503")
    assert outcome.attempts == 1
    assert image_server.count() == 1
    assert time.monotonic() - started < 15


# -- timeouts ----------------------------------------------------------------------------------


def test_deadline_ends_a_trickling_server(image_server: ImageServer, tmp_path: Path) -> None:
    settings = make_settings(download_deadline=1.5, http_read_timeout=10)
    started = time.monotonic()
    outcome = fetch_one(settings, tmp_path, image_server.url("trickle?bytes=100&interval=0.2"))
    elapsed = time.monotonic() - started
    assert_failed(outcome, "timeout")
    assert "1.5 s deadline" in (outcome.error or "")
    assert outcome.attempts == 1
    assert 1.3 <= elapsed < 10
    assert leftovers(tmp_path) == []


def test_deadline_covers_retries_and_backoff(image_server: ImageServer, tmp_path: Path) -> None:
    # each attempt trickles past the read timeout; the deadline stops the sequence
    settings = make_settings(
        download_deadline=2, http_read_timeout=0.4, max_retries=10, backoff_base=0.01
    )
    started = time.monotonic()
    outcome = fetch_one(settings, tmp_path, image_server.url("slow/1/x"))
    elapsed = time.monotonic() - started
    assert_failed(outcome, "timeout")
    assert 2 <= outcome.attempts < 11
    assert elapsed < 10


def test_read_timeout_is_retried(image_server: ImageServer, tmp_path: Path) -> None:
    settings = make_settings(http_read_timeout=0.3, max_retries=1)
    outcome = fetch_one(settings, tmp_path, image_server.url("hang"))
    assert_failed(outcome, "timeout")
    assert outcome.attempts == 2
    assert "did not answer within 0.3 s" in (outcome.error or "")
    assert image_server.count("/hang") == 2


def test_slow_answer_within_limits_is_fine(image_server: ImageServer, tmp_path: Path) -> None:
    outcome = fetch_one(make_settings(), tmp_path, image_server.url("slow/0.3/y"))
    assert outcome.ok and outcome.attempts == 1


# -- connections ----------------------------------------------------------------------------------


def test_connection_refused_is_retried(tmp_path: Path) -> None:
    outcome = fetch_one(make_settings(max_retries=2), tmp_path, closed_port_url())
    assert_failed(outcome, "connection_error")
    assert outcome.attempts == 3
    assert outcome.error is not None and outcome.error.startswith("Could not connect")


def test_dropped_connection_is_retried(image_server: ImageServer, tmp_path: Path) -> None:
    outcome = fetch_one(make_settings(max_retries=1), tmp_path, image_server.url("drop"))
    assert_failed(outcome, "connection_error")
    assert outcome.attempts == 2
    assert image_server.count("/drop") == 2


@pytest.mark.parametrize(
    "url",
    ["ftp://127.0.0.2/a.jpg", "http://", "http:///a.jpg", "http://127.0.0.2:99999/a", "nonsense"],
)
def test_bad_urls(tmp_path: Path, url: str) -> None:
    outcome = fetch_one(make_settings(), tmp_path, url)
    assert_failed(outcome, "bad_url")
    assert outcome.attempts == 0


def test_route_errors_are_visible(image_server: ImageServer, tmp_path: Path) -> None:
    def broken(req: Req) -> Reply:
        raise ValueError("oops")

    image_server.add_route(r"/broken", broken)
    outcome = fetch_one(make_settings(max_retries=0), tmp_path, image_server.url("broken"))
    assert outcome.error_code == "http_500"


# -- TLS ----------------------------------------------------------------------------------------


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.2")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.2"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_certificates_are_verified(tmp_path: Path) -> None:
    """An untrusted certificate fails the download (and is not retried): verification is on."""
    import ssl

    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    temp = tmp_path / "temp"
    handshakes: list[bool] = []

    async def main() -> FetchOutcome:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            handshakes.append(True)
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.2", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            async with Fetcher(make_settings(), temp) as fetcher:
                return await fetcher.fetch(f"https://127.0.0.2:{port}/img/a.jpg")
        finally:
            server.close()
            await server.wait_closed()

    outcome = asyncio.run(main())
    assert_failed(outcome, "connection_error")
    assert outcome.error is not None and outcome.error.startswith("The secure connection failed")
    assert "certificate" in outcome.error.lower()
    assert outcome.attempts == 1
    assert handshakes == []  # no request was ever served
