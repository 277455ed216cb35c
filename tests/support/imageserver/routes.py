"""The routes every `ImageServer` serves (the table is in the package docstring).

Stateful routes (flaky, ratelimit) count per id with `server.bump`, so one test's ids do not
disturb another's on the same server.
"""

from __future__ import annotations

import email.utils
import gzip
import random
import time
import zlib

from tests.support.imageserver.content import (
    FORMATS,
    HTML_PAGE,
    big_body,
    bomb_png,
    gzip_bomb,
    image_bytes,
)
from tests.support.imageserver.messages import Handler, Reply, Req


def _int(req: Req, name: str, default: int) -> int:
    value = req.param(name)
    return int(value) if value is not None else default


def _img(req: Req) -> Reply:
    name, fmt = req.param("name") or "x", req.param("fmt") or "jpg"
    width, height = _int(req, "w", 64), _int(req, "h", 48)
    return Reply(body=image_bytes(name, fmt, width, height), content_type=FORMATS[fmt][1])


def _flaky(req: Req) -> Reply:
    ident = req.param("id") or ""
    seen = req.server.bump(f"flaky:{ident}")
    if seen <= _int(req, "fails", 2):
        return Reply.text(_int(req, "status", 503))
    return Reply.image(f"flaky-{ident}")


def _ratelimit(req: Req) -> Reply:
    ident = req.param("id") or ""
    seen = req.server.bump(f"ratelimit:{ident}")
    if seen <= _int(req, "fails", 1):
        after = req.param("after", "1") or "1"
        if req.param("date") == "1":
            value = email.utils.formatdate(time.time() + float(after), usegmt=True)
        else:
            value = after
        return Reply(status=429, body=b"slow down\n", headers=[("Retry-After", value)])
    return Reply.image(f"ratelimit-{ident}")


def _slow(req: Req) -> Reply:
    return Reply.image(f"slow-{req.param('id')}", delay=float(req.param("seconds") or 1))


def _trickle(req: Req) -> Reply:
    count = _int(req, "bytes", 100)
    interval = float(req.param("interval", "1") or 1)
    return Reply(
        body=(b"\xff" for _ in range(count)),
        length=count,
        content_type="image/jpeg",
        interval=interval,
    )


def _big(req: Req) -> Reply:
    size = _int(req, "size", req.server.big_size)
    mode = req.param("mode") or ""
    body = big_body(size)
    step = 256 * 1024
    pieces = [body[i : i + step] for i in range(0, len(body), step)]
    if mode == "chunked":
        return Reply(body=pieces, length=None, chunked=True, content_type="image/jpeg")
    if mode == "close":
        return Reply(body=pieces, length=None, content_type="image/jpeg")
    return Reply(body=pieces, length=size, content_type="image/jpeg")


def _gzip_bomb(req: Req) -> Reply:
    return Reply(
        body=gzip_bomb(_int(req, "mb", 64)),
        content_type="image/jpeg",
        headers=[("Content-Encoding", "gzip")],
    )


def _encoded(req: Req) -> Reply:
    encoding = req.param("enc") or "gzip"
    data = image_bytes(req.param("name") or "x", req.param("fmt") or "jpg")
    if encoding == "gzip":
        body, label = gzip.compress(data, mtime=0), "gzip"
    elif encoding == "deflate":
        body, label = zlib.compress(data), "deflate"
    else:  # not real brotli: the fetcher must refuse the encoding, not decode it
        body, label = random.Random(1).randbytes(len(data)), "br"
    return Reply(body=body, content_type="image/jpeg", headers=[("Content-Encoding", label)])


def _truncated(req: Req) -> Reply:
    data = image_bytes("truncated", "jpg")
    return Reply(body=data, length=len(data) * 2, content_type="image/jpeg", close=True)


def _redirect(req: Req) -> Reply:
    hops = _int(req, "n", 1)
    if hops > 1:
        return Reply.redirect(f"/redirect/{hops - 1}")
    return Reply.redirect("/img/redirected.jpg")


def _bomb(req: Req) -> Reply:
    if req.param("level") == "warn":
        return Reply(body=bomb_png(10_000, 10_000), content_type="image/png")
    return Reply(body=bomb_png(), content_type="image/png")


BUILTIN_ROUTES: list[tuple[str, Handler]] = [
    (r"/img/(?P<name>[^/]+)\.(?P<fmt>jpg|jpeg|png|webp|avif|gif)", _img),
    (r"/same/.*", lambda req: Reply.image("same", "jpg")),
    (r"/status/(?P<code>\d{3})", lambda req: Reply.text(int(req.param("code") or 500))),
    (r"/flaky/(?P<id>[^/]+)", _flaky),
    (r"/ratelimit/(?P<id>[^/]+)", _ratelimit),
    (r"/slow/(?P<seconds>[0-9.]+)/(?P<id>[^/]+)", _slow),
    (r"/trickle", _trickle),
    (r"/big(?:/(?P<mode>chunked|close))?", _big),
    (r"/gzip-bomb", _gzip_bomb),
    (r"/(?P<enc>gzip|deflate|brotli)/(?P<name>[^/]+)\.(?P<fmt>jpg|png|webp|avif|gif)", _encoded),
    (r"/html-as-jpeg", lambda req: Reply(body=HTML_PAGE, content_type="image/jpeg")),
    (r"/empty", lambda req: Reply(body=b"", content_type="image/jpeg")),
    (r"/truncated", _truncated),
    (r"/redirect/(?P<n>\d+)", _redirect),
    (r"/redirect-loop", lambda req: Reply.redirect("/redirect-loop/b")),
    (r"/redirect-loop/b", lambda req: Reply.redirect("/redirect-loop")),
    (
        r"/redirect-to",
        lambda req: Reply.redirect(req.param("url") or "/", _int(req, "status", 302)),
    ),
    (r"/bomb", _bomb),
    (r"/drop", lambda req: Reply(drop=True)),
    (r"/hang", lambda req: Reply(hang=True)),
]
