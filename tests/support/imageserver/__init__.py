"""A real HTTP image server on loopback addresses, for fetch, engine, CLI and UI tests.

One `ImageServer` listens on several 127.0.0.x addresses (default 127.0.0.2-4), each with its
own port, so tests can stand for several hosts. It records every request server-side (host,
path, start/end times, status), tracks peak concurrent requests per host, and serves:

======================================  =========================================================
``/img/<name>.<fmt>[?w=&h=]``           deterministic image, unique per name (jpg jpeg png webp
                                        avif gif); ``image_bytes(name, fmt)`` gives its bytes
``/same/<anything>``                    identical JPEG bytes for every path (dedup tests)
``/status/<code>``                      that status with a short text body
``/flaky/<id>?fails=2&status=503``      `status` for the first `fails` requests of <id>, then the
                                        image ``flaky-<id>.jpg``
``/ratelimit/<id>?fails=1&after=1``     429 with ``Retry-After: <after>`` (``&date=1``: as an
                                        HTTP date) `fails` times, then ``ratelimit-<id>.jpg``
``/slow/<seconds>/<id>``                waits, then ``slow-<id>.jpg``
``/trickle?bytes=100&interval=1``       announces `bytes`, sends one byte per `interval`
``/big[/chunked|/close][?size=]``       `size` (default ``big_size``) bytes with Content-Length,
                                        chunked, or close-delimited (no length)
``/gzip-bomb[?mb=64]``                  gzip-encoded zeros that inflate to `mb` MiB
``/gzip/<name>.<fmt>``, ``/deflate/..`` the image, Content-Encoding gzip / deflate
``/brotli/<name>.<fmt>``                random bytes labelled ``Content-Encoding: br``
``/html-as-jpeg``                       an HTML page labelled image/jpeg
``/empty``                              200 with an empty body
``/truncated``                          announces twice the bytes it sends, then closes
``/redirect/<n>``                       n hops of 302, then ``/img/redirected.jpg``
``/redirect-loop``                      302 to /redirect-loop/b, which 302s back
``/redirect-to?url=..&status=302``      a redirect to any URL
``/bomb[?level=error|warn]``            PNG declaring 100000x100000 (or 10000x10000) pixels
``/drop``                               closes the connection without an answer
``/hang``                               never answers (until the server stops)
======================================  =========================================================

Add a route: ``server.add_route(r"/thing/(?P<id>\\w+)", handler)`` with
``handler(req: Req) -> Reply``; added routes take precedence over the built-in ones.

Fixture: ``image_server`` (function scope). Import it into a test module
(``from tests.support.imageserver import image_server``) or list this package in
``pytest_plugins``. `closed_port_url()` gives a URL nobody listens on (connection refused).

Layout: `server` (listening, recording, dispatch), `messages` (Req, Reply), `routes` (the
built-in routes above), `content` (the bytes they send). What tests use is re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.imageserver.content import HTML_PAGE, big_body, bomb_png, image_bytes
from tests.support.imageserver.messages import Handler, Reply, Req, RequestRecord
from tests.support.imageserver.server import (
    DEFAULT_ADDRESSES,
    ImageServer,
    closed_port,
    closed_port_url,
)

__all__ = [
    "DEFAULT_ADDRESSES",
    "HTML_PAGE",
    "Handler",
    "ImageServer",
    "Reply",
    "Req",
    "RequestRecord",
    "big_body",
    "bomb_png",
    "closed_port",
    "closed_port_url",
    "image_bytes",
    "image_server",
]


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    """An `ImageServer` on 127.0.0.2, 127.0.0.3 and 127.0.0.4, stopped after the test."""
    with ImageServer() as server:
        yield server
