"""The CDN-like server of benchmarks/bench_cdn.py: nginx over HTTPS (HTTP/2 offered by ALPN)
on 16 loopback addresses, with a test CA, a delay before the first byte and a bandwidth cap per
response. Also the setup step that installs what the benchmark needs.

Each request to /img/<name> waits `delay` seconds (the echo module's `echo_sleep`, a timer:
no worker is blocked), then the file is sent at `rate` (nginx's `limit_rate`, per response).
"""

from __future__ import annotations

import os
import resource
import subprocess
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import PYTHON, REPO_ROOT, find_program, log
from benchmarks.corpus import CORPUS_DIR
from benchmarks.nginx import _TEMP_KINDS, NGINX_DIR, ConfigRenderer

# 16 addresses apart from the loopback benchmark's 127.0.0.2-17, so both can run at once.
CDN_HOSTS: tuple[str, ...] = tuple(f"127.0.0.{n}" for n in range(10, 26))
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
APT_PACKAGES = ("nginx-light", "libnginx-mod-http-echo", "aria2", "curl")
TRUSTME_PIN = "trustme==1.2.1"  # as in requirements-dev.txt


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # the test CA's certificate: what every client is told to trust
    chain: Path  # the server certificate (IP SANs for every host) followed by the CA's
    key: Path


def _curl_has_http2() -> bool:
    curl = find_program("curl")
    if curl is None:
        return False
    out = subprocess.run([curl, "--version"], capture_output=True, text=True, check=False).stdout
    return any(line.startswith("Features:") and "HTTP2" in line for line in out.splitlines())


def _has_trustme() -> bool:
    probe = subprocess.run([PYTHON, "-c", "import trustme"], capture_output=True, check=False)
    return probe.returncode == 0


def missing() -> list[str]:
    """What this machine lacks for the benchmark (empty when everything is there)."""
    lacks = []
    if find_program("nginx") is None:
        lacks.append("nginx")
    if not ECHO_MODULE.is_file():
        lacks.append(f"nginx's echo module ({ECHO_MODULE})")
    if find_program("aria2c") is None:
        lacks.append("aria2c")
    if not _curl_has_http2():
        lacks.append("curl with HTTP/2")
    if not _has_trustme():
        lacks.append("trustme (Python)")
    return lacks


def setup_commands() -> list[list[str]]:
    return [
        ["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES],
        [PYTHON, "-m", "pip", "install", TRUSTME_PIN],
    ]


def ensure_setup(install: bool) -> None:
    """Install what is missing (as root, when `install`), or stop saying how to."""
    lacks = missing()
    if not lacks:
        return
    commands = setup_commands()
    printable = "\n".join("  " + " ".join(c) for c in commands)
    if not install or os.geteuid() != 0:
        raise SystemExit(f"missing: {', '.join(lacks)}. Install with (as root):\n{printable}")
    log("setup", f"missing: {', '.join(lacks)}; installing")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt, pip = commands
    if subprocess.run(apt, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True)  # a stale package list
        subprocess.run(apt, env=env, check=True)
    subprocess.run(pip, cwd=REPO_ROOT, check=True)
    if lacks := missing():
        raise SystemExit(f"still missing after the setup: {', '.join(lacks)}")


def make_tls(folder: Path, hosts: tuple[str, ...] = CDN_HOSTS) -> TlsFiles:
    """A fresh test CA and one server certificate naming every host as an IP SAN."""
    import trustme  # installed by the setup step; imported late so --help works without it

    folder = folder.resolve()  # nginx reads relative paths from its own prefix
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert(*hosts)
    files = TlsFiles(folder / "ca.pem", folder / "server-chain.pem", folder / "server-key.pem")
    ca.cert_pem.write_to_path(str(files.ca))
    cert.private_key_pem.write_to_path(str(files.key))
    with files.chain.open("wb") as chain:
        for blob in cert.cert_chain_pems:
            chain.write(blob.bytes())
    return files


def cdn_renderer(
    tls: TlsFiles,
    *,
    delay: float,
    rate: str,
    https: bool = True,
    hosts: tuple[str, ...] = CDN_HOSTS,
) -> ConfigRenderer:
    """An nginx.conf writer for benchmarks.nginx.serve. Access log: one line per request with
    the worker, its connection number, the protocol and whether TLS resumed a session, so
    that a run's connections and protocols can be counted afterwards."""

    def render(port: int, prefix: Path, workers: str) -> str:
        flags = " ssl http2" if https else ""
        listens = "\n".join(f"        listen {h}:{port}{flags} backlog=4096;" for h in hosts)
        temps = "\n".join(f"    {kind}_temp_path {prefix / 'tmp' / kind};" for kind in _TEMP_KINDS)
        user = "user root root;\n" if os.geteuid() == 0 else ""
        files = resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # nginx cannot pass the hard limit
        files = 65536 if files == resource.RLIM_INFINITY else min(files, 65536)
        tls_lines = ""
        if https:
            tls_lines = f"""
        ssl_certificate {tls.chain};
        ssl_certificate_key {tls.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:cdn:10m;"""
        return f"""# Generated by benchmarks/cdn_server.py.
load_module {ECHO_MODULE};
{user}worker_processes {workers};
worker_rlimit_nofile {files};
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;

events {{
    worker_connections {min(8192, files // 2)};
    multi_accept on;
}}

http {{
    log_format conns '$pid $connection $server_protocol $ssl_session_reused $status';
    access_log {prefix / "access.log"} conns;
    tcp_nodelay on;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    open_file_cache max=20000 inactive=120s;
    types {{
        image/jpeg jpg;
        image/png png;
        image/webp webp;
    }}
    default_type application/octet-stream;
{temps}

    server {{
{listens}
        server_name _;{tls_lines}
        location /img/ {{
            echo_sleep {delay};
            echo_exec @file;
        }}
        location @file {{
            root {CORPUS_DIR};
            limit_rate {rate};
        }}
        location / {{
            return 404;
        }}
    }}
}}
"""

    return render


def access_log(port: int) -> Path:
    """The access log of the nginx that benchmarks.nginx.serve started on `port`."""
    return NGINX_DIR / str(port) / "access.log"


def summarize_log(lines: list[str]) -> dict[str, object]:
    """Requests, connections (distinct worker+connection pairs), protocols and TLS resumptions
    of one run's access-log lines."""
    connections: set[tuple[str, str]] = set()
    protocols: dict[str, int] = {}
    resumed: set[tuple[str, str]] = set()
    statuses: dict[str, int] = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 5:
            continue
        pid, conn, proto, reused, status = parts
        connections.add((pid, conn))
        protocols[proto] = protocols.get(proto, 0) + 1
        statuses[status] = statuses.get(status, 0) + 1
        if reused == "r":
            resumed.add((pid, conn))
    return {
        "requests": sum(protocols.values()),
        "connections": len(connections),
        "resumed_tls": len(resumed),
        "protocols": protocols,
        "statuses": statuses,
    }


def probe(urls: list[str], ca: Path | None) -> tuple[float, float]:
    """What the server really does: (median seconds to the first byte, median bytes per second
    after it) over `urls` fetched one after another by curl on one connection."""
    import statistics

    curl = find_program("curl")
    assert curl is not None
    argv = [curl, "-sS", "--fail", "--noproxy", "*", *(["--cacert", str(ca)] if ca else [])]
    argv += ["-w", "%{time_starttransfer} %{time_total} %{size_download}\\n"]
    for url in urls:
        argv += ["-o", "/dev/null", url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    firsts, rates = [], []
    for line in out.strip().splitlines()[1:]:  # the first one also paid for the connection
        first, total, size = (float(x) for x in line.split())
        firsts.append(first)
        rates.append(size / (total - first))
    return statistics.median(firsts), statistics.median(rates)
