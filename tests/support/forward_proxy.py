"""Real network pieces for the company-network tests (issue 20), on loopback only.

* `ForwardProxy`: proxy.py (the PyPI package, pinned in requirements-dev.txt) run as a
  subprocess on 127.0.0.5: a real HTTP forward proxy that tunnels HTTPS with CONNECT. Its access
  log (one line per request it handled: ``GET host:port/path`` or ``CONNECT host:port``) is
  how the tests see what reached it.
* `TLSImageServer`: an HTTPS server (a certificate from a trustme CA) that serves one JPEG and
  records the paths and the SNI name it was asked for.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import trustme

from tests.support.imageserver import image_bytes

PROXY_HOST = "127.0.0.5"
JPEG = image_bytes("through-the-proxy", "jpg", 32, 24)


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ForwardProxy:
    """proxy.py on `host`; `log()` is its output so far, `handled()` its access-log lines."""

    def __init__(self, log_path: Path, host: str = PROXY_HOST) -> None:
        self.host = host
        self.port = free_port(host)
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ForwardProxy:
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "proxy",
                    "--hostname",
                    self.host,
                    "--port",
                    str(self.port),
                    "--num-workers",
                    "1",
                    "--num-acceptors",
                    "1",
                    "--log-level",
                    "INFO",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    break
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"proxy.py did not start:\n{self.log()}") from None
                time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def handled(self, wait_for: str | None = None, timeout: float = 10) -> list[str]:
        """The access-log lines (a request is logged when its client connection ends);
        waits until a line contains `wait_for`, if given."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.log().splitlines() if "access_log" in line]
            if wait_for is None or any(wait_for in line for line in lines):
                return lines
            if time.monotonic() > deadline:
                return lines
            time.sleep(0.05)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TLSServer

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(JPEG)))
        self.end_headers()
        self.wfile.write(JPEG)


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: str, context: ssl.SSLContext) -> None:
        self.paths: list[str] = []
        self.sni: list[str | None] = []
        self.context = context
        super().__init__((address, 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        return self.context.wrap_socket(sock, server_side=True), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        return None  # refused handshakes are part of the tests


class TLSImageServer:
    """HTTPS on `address` with a certificate for `names` from `ca` (a trustme CA)."""

    def __init__(self, ca: trustme.CA, address: str = "127.0.0.3", names: tuple[str, ...] = ()):
        self.address = address
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(*(names or (address,))).configure_cert(context)
        self._sni: list[str | None] = []

        def remember(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
            self._sni.append(name)

        context.sni_callback = remember
        self._server = _TLSServer(address, context)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> TLSImageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def paths(self) -> list[str]:
        return self._server.paths

    @property
    def sni(self) -> list[str | None]:
        return self._sni

    def url(self, path: str = "img/a.jpg", host: str | None = None) -> str:
        return f"https://{host or self.address}:{self.port}/{path}"


def write_ca(ca: trustme.CA, folder: Path) -> Path:
    """The CA's certificate as a PEM file (what SSL_CERT_FILE names)."""
    path = folder / "company-root.pem"
    ca.cert_pem.write_to_path(str(path))
    return path
