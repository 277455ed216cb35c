"""Micro-benchmark of HTTP transports and of the whole Fetcher against a local nginx.

    .venv/bin/python benchmarks/bench_fetch.py [--images 6000] [--concurrency 64] [--size-kb 200]
        [--modes httpx,httpx-aiohttp,guarded,aiohttp,transport,fetcher] [--repeat 3]

nginx (Debian's /usr/sbin/nginx, one worker) serves 256 distinct ~200 KB JPEGs on
127.0.0.2-5 (four "hosts"). Each mode runs in a fresh subprocess under uvloop (except where
noted) with `--concurrency` tasks pulling from one queue of `--images` URLs spread over the
four hosts. Transport modes read the body and hash it with SHA-256 (`transport` is ours, aiohttp
under the guard, sent to directly as the fetcher does; `guarded` is ours under
httpx.AsyncClient); the `fetcher` mode
is the real thing (guard, limits, SHA-256, CRC-32, sniff + dimensions; bodies up to 256 KiB
stay in memory). Prints images/second.

Loopback only. Nothing is asserted; numbers vary with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
FILES = 256


def make_images(root: Path, size_kb: int) -> None:
    from PIL import Image

    rng = random.Random(7)
    side = 64
    # grow a noise JPEG until it reaches the wanted size
    while True:
        im = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=80)
        if buf.tell() >= size_kb * 1024 or side > 4000:
            break
        side = int(side * 1.2)
    for i in range(FILES):
        im = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
        im.save(root / f"img_{i}.jpg", "JPEG", quality=80)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        return int(sock.getsockname()[1])


def start_nginx(work: Path, port: int) -> subprocess.Popen[bytes]:
    listens = "\n".join(f"    listen {a}:{port};" for a in ADDRESSES)
    conf = work / "nginx.conf"
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  keepalive_timeout 120;
  client_body_temp_path {work}/tmp_body;
  proxy_temp_path {work}/tmp_proxy;
  fastcgi_temp_path {work}/tmp_fcgi;
  uwsgi_temp_path {work}/tmp_uwsgi;
  scgi_temp_path {work}/tmp_scgi;
  types {{ image/jpeg jpg; }}
  server {{
{listens}
    root {work}/www;
  }}
}}
"""
    )
    proc = subprocess.Popen(
        ["/usr/sbin/nginx", "-p", str(work), "-c", str(conf), "-e", str(work / "error.log")]
    )
    for _ in range(100):
        try:
            with socket.create_connection((ADDRESSES[0], port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("nginx did not start: " + (work / "error.log").read_text())


# -- client modes (run in a child process) ------------------------------------------------------


def urls(port: int, count: int) -> list[str]:
    return [
        f"http://{ADDRESSES[i % len(ADDRESSES)]}:{port}/img_{i % FILES}.jpg" for i in range(count)
    ]


async def run_pool(worker: object, items: list[str], concurrency: int) -> float:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def loop() -> None:
        while True:
            try:
                url = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await worker(url)  # type: ignore[operator]

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return time.perf_counter() - started


async def mode_httpx(items: list[str], concurrency: int) -> float:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, trust_env=False) as client:

        async def get(url: str) -> None:
            digest = hashlib.sha256()
            async with client.stream("GET", url) as response:
                async for chunk in response.aiter_raw():
                    digest.update(chunk)
            assert response.status_code == 200

        return await run_pool(get, items, concurrency)


def _connector(concurrency: int) -> object:
    import aiohttp

    return aiohttp.TCPConnector(limit=concurrency, limit_per_host=0, ttl_dns_cache=300)


async def mode_httpx_aiohttp(items: list[str], concurrency: int) -> float:
    import aiohttp
    import httpx
    from httpx_aiohttp import AiohttpTransport

    session = aiohttp.ClientSession(connector=_connector(concurrency))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=AiohttpTransport(client=session)) as client:

        async def get(url: str) -> None:
            digest = hashlib.sha256()
            async with client.stream("GET", url) as response:
                async for chunk in response.aiter_raw():
                    digest.update(chunk)
            assert response.status_code == 200

        return await run_pool(get, items, concurrency)


async def _hash_body(response: httpx.Response) -> None:
    """Read a streamed response's body, hashing it as the fetcher would, then close it."""
    digest = hashlib.sha256()
    try:
        async for chunk in response.aiter_raw():
            digest.update(chunk)
    finally:
        await response.aclose()
    assert response.status_code == 200


async def mode_guarded(items: list[str], concurrency: int) -> float:
    import httpx

    from downloader.fetch.client import build_client
    from downloader.guard import Guard
    from downloader.settings import load_settings

    settings = load_settings(
        allowed_private_networks=["127.0.0.0/8"], max_global_concurrency=concurrency
    )
    async with build_client(settings, Guard(settings)) as client:

        async def get(url: str) -> None:
            await _hash_body(await client.send(httpx.Request("GET", url), stream=True))

        return await run_pool(get, items, concurrency)


async def mode_aiohttp(items: list[str], concurrency: int) -> float:
    import aiohttp

    connector = _connector(concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:  # type: ignore[arg-type]

        async def get(url: str) -> None:
            digest = hashlib.sha256()
            async with session.get(url) as response:
                async for chunk in response.content.iter_any():
                    digest.update(chunk)
            assert response.status == 200

        return await run_pool(get, items, concurrency)


async def mode_fetcher(items: list[str], concurrency: int) -> float:
    from downloader.fetch import Fetcher
    from downloader.settings import load_settings

    settings = load_settings(
        allowed_private_networks=["127.0.0.0/8"],
        max_global_concurrency=concurrency,
        max_per_host_concurrency=concurrency,
        download_qps=0,
    )
    with tempfile.TemporaryDirectory(
        prefix="bench-fetch-", dir=os.environ.get("BENCH_TEMP")
    ) as tmp:
        async with Fetcher(settings, Path(tmp)) as fetcher:

            async def get(url: str) -> None:
                outcome = await fetcher.fetch(url)
                if not outcome.ok:
                    raise RuntimeError(f"{url}: {outcome.error_code} {outcome.error}")
                if outcome.temp_path is not None:  # big bodies: the engine would move it
                    outcome.temp_path.unlink()

            return await run_pool(get, items, concurrency)


async def mode_transport(items: list[str], concurrency: int) -> float:
    import httpx

    from downloader.fetch.client import body_chunks, build_transport, default_headers
    from downloader.guard import Guard
    from downloader.settings import load_settings

    settings = load_settings(
        allowed_private_networks=["127.0.0.0/8"], max_global_concurrency=concurrency
    )
    transport = build_transport(settings, Guard(settings))
    headers = default_headers(settings)

    async def get(url: str) -> None:
        response = await transport.send(httpx.URL(url), headers)
        digest = hashlib.sha256()
        async for chunk in body_chunks(response):
            digest.update(chunk)
        transport.release(response, complete=response.content.at_eof())
        assert response.status == 200

    try:
        return await run_pool(get, items, concurrency)
    finally:
        await transport.aclose()


MODES = {
    "transport": mode_transport,
    "httpx": mode_httpx,
    "httpx-aiohttp": mode_httpx_aiohttp,
    "guarded": mode_guarded,
    "aiohttp": mode_aiohttp,
    "fetcher": mode_fetcher,
}


def child(mode: str, port: int, images: int, concurrency: int, use_uvloop: bool) -> None:
    items = urls(port, images)
    runner = MODES[mode](items, concurrency)
    before = os.times()
    if use_uvloop:
        import uvloop

        seconds = uvloop.run(runner)
    else:
        seconds = asyncio.run(runner)
    after = os.times()
    cpu = (after.user - before.user) + (after.system - before.system)
    print(
        json.dumps(
            {"mode": mode, "seconds": seconds, "rate": images / seconds, "cpu_rate": images / cpu}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--size-kb", type=int, default=200)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument(
        "--temp-dir", help="where the fetcher writes its temp files (default: the system temp)"
    )
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.images, args.concurrency, not args.no_uvloop)
        return

    root = Path(__file__).resolve().parent.parent
    work = Path(tempfile.mkdtemp(prefix="bench-fetch-nginx-"))
    os.chmod(work, 0o755)
    (work / "www").mkdir()
    make_images(work / "www", args.size_kb)
    sizes = [p.stat().st_size for p in (work / "www").iterdir()]
    print(
        f"{len(sizes)} files, mean {sum(sizes) / len(sizes) / 1024:.0f} KB; "
        f"{args.images} images x {args.concurrency} concurrent; "
        f"{'asyncio' if args.no_uvloop else 'uvloop'}"
    )
    port = free_port()
    nginx = start_nginx(work, port)
    env = dict(os.environ, PYTHONPATH=str(root))
    if args.temp_dir:
        env["BENCH_TEMP"] = args.temp_dir
    try:
        results: dict[str, list[float]] = {}
        cpu_rates: dict[str, list[float]] = {}
        for _ in range(args.repeat):
            for mode in args.modes.split(","):
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    mode,
                    str(port),
                    "--images",
                    str(args.images),
                    "--concurrency",
                    str(args.concurrency),
                ]
                if args.no_uvloop:
                    cmd.append("--no-uvloop")
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    print(f"{mode}: failed\n{out.stderr[-2000:]}")
                    continue
                result = json.loads(out.stdout.strip().splitlines()[-1])
                results.setdefault(mode, []).append(result["rate"])
                cpu_rates.setdefault(mode, []).append(result["cpu_rate"])
                print(
                    f"  {mode:14} {result['rate']:7.0f} img/s wall, "
                    f"{result['cpu_rate']:7.0f} img per client CPU-second",
                    flush=True,
                )
        print(f"best of {args.repeat} (wall img/s; images per CPU-second of the client process)")
        for mode, rates in results.items():
            print(
                f"{mode:14} {max(rates):7.0f} img/s   {max(cpu_rates[mode]):7.0f} img/cpu-s"
                f"   (wall runs: {', '.join(f'{r:.0f}' for r in rates)})"
            )
    finally:
        nginx.send_signal(signal.SIGQUIT)
        try:
            nginx.wait(timeout=10)
        except subprocess.TimeoutExpired:
            nginx.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
