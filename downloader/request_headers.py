"""A job's own request headers (issue 20): parse, validate, store as JSON, pick per host.

Pure functions, no I/O, no Streamlit: the jobs service stores them, the CLI and the new-job page
parse them, the engine picks the ones for an image's host and hands them to the fetcher.

Syntax, one header a line (the new-job page's box) or one per option (the command line):

    Referer: https://shop.example/            every request of the job
    shop.example | Cookie: session=abc        requests to shop.example (any port)
    cdn.example:8443 | Authorization: Bearer x  that host on that port only
    *.shop.example | User-Agent: Mozilla/5.0  any subdomain of shop.example (not itself)
    # a comment; blank lines are skipped

On the command line: ``--header "Name: value"`` and ``--header-for HOST "Name: value"``.
Hosts are matched the way the per-host limits key them (``downloader.hosts.host_key``):
case, a trailing dot, IDNA and IP spellings do not matter (``Shop.Example.`` is shop.example).
A host's own header wins over a ``*.`` pattern's, which wins over a job-wide one of the same
name; an explicit ``Accept`` wins over "any format the CDN prefers".

Refused: names that are not RFC 9110 tokens; values with control characters (CR, LF, NUL …)
or non-ASCII; hop-by-hop and framing headers the HTTP client owns (Host, Content-Length,
Transfer-Encoding, Connection, Keep-Alive, Upgrade, TE, Trailer, Expect, Proxy-*), and the
ones that would break how bodies are checked (Accept-Encoding, Range, If-Range); more than
MAX_HEADERS headers or MAX_TOTAL_BYTES in all. Messages name the line and the header, never
its value: a value may be a secret (Cookie, Authorization).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from downloader.errors import UserError, excerpt
from downloader.hosts import host_key, parse_ip_host

MAX_HEADERS = 50  # headers in one job, job-wide and per host together
MAX_TOTAL_BYTES = 8 * 1024  # "Name: value" bytes of all of them together
MAX_TEXT_CHARS = 64 * 1024  # the box's text, refused before it is split into lines
MAX_LINES = 200  # lines in the box (blank lines and comments included)
MAX_HOST_CHARS = 253
# "Any format the CDN prefers": WebP/AVIF first, as a browser asks (the default asks for originals)
ANY_FORMAT_ACCEPT = "image/avif,image/webp,image/*,*/*;q=0.8"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# Visible ASCII, space and tab only (RFC 9110 field-value without obs-text).
_VALUE = re.compile(r"[\t\x20-\x7e]*\Z")
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?\Z")
# The part before " | " on a per-host line: a host, a bracketed IPv6, a port, a leading "*.".
_HOST_LINE = re.compile(
    r"\s*(?P<host>\[[0-9A-Fa-f:.%]+\](?::\d*)?|[^\s|:/\[\]]+(?::\d*)?)\s*\|(?P<rest>.*)\Z"
)

_CLIENT_OWNED = {
    "host": "is set by the HTTP client from the image's URL",
    "content-length": "frames the request; the HTTP client sets it",
    "transfer-encoding": "frames the request; the HTTP client sets it",
    "connection": "is a hop-by-hop header the HTTP client manages",
    "keep-alive": "is a hop-by-hop header the HTTP client manages",
    "upgrade": "is a hop-by-hop header the HTTP client manages",
    "te": "is a hop-by-hop header the HTTP client manages",
    "trailer": "is a hop-by-hop header the HTTP client manages",
    "expect": "is managed by the HTTP client",
    "accept-encoding": "is chosen by the downloader (only encodings it can decode and count)",
    "range": "would fetch part of an image",
    "if-range": "would fetch part of an image",
}


class HeaderError(UserError, ValueError):
    """Request headers that cannot be used; `problems` holds one sentence per bad line."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


Header = tuple[str, str]
_T = TypeVar("_T")


@dataclass(frozen=True)
class RequestHeaders:
    """A job's headers: job-wide, per host pattern (in the order given), and the format option."""

    common: tuple[Header, ...] = ()
    hosts: tuple[tuple[str, tuple[Header, ...]], ...] = ()
    any_format: bool = False

    def __bool__(self) -> bool:
        return bool(self.common or self.hosts or self.any_format)

    @property
    def count(self) -> int:
        return len(self.common) + sum(len(headers) for _, headers in self.hosts)


@dataclass
class _Builder:
    common: list[Header] = field(default_factory=list)
    hosts: dict[str, list[Header]] = field(default_factory=dict)

    def add(self, host: str | None, header: Header) -> str | None:
        """Add `header` (for `host`, or job-wide); a problem sentence for a repeated name."""
        scope = self.common if host is None else self.hosts.setdefault(host, [])
        name = header[0].lower()
        if any(existing.lower() == name for existing, _ in scope):
            where = f" for {host}" if host else ""
            return f"{header[0]} is given twice{where}; give it once (join cookies with '; ')"
        scope.append(header)
        return None

    def build(self, any_format: bool) -> RequestHeaders:
        headers = RequestHeaders(
            tuple(self.common),
            tuple((host, tuple(items)) for host, items in self.hosts.items() if items),
            any_format,
        )
        _check_limits(headers)
        return headers


def _check_limits(headers: RequestHeaders) -> None:
    all_headers = [*headers.common, *(h for _, items in headers.hosts for h in items)]
    if len(all_headers) > MAX_HEADERS:
        raise HeaderError(
            [f"{len(all_headers)} headers given; a job can have at most {MAX_HEADERS}"]
        )
    size = sum(len(name) + len(value) + 4 for name, value in all_headers)
    if size > MAX_TOTAL_BYTES:
        raise HeaderError(
            [
                f"the headers take {size:,} bytes; a job's headers can take at most "
                f"{MAX_TOTAL_BYTES:,}"
            ]
        )


def parse_header(text: str) -> Header:
    """``Name: value`` as (name, value), or HeaderError (one problem, naming no value)."""
    name, colon, value = text.partition(":")
    name = name.strip()
    if not colon:
        raise HeaderError(["expected 'Name: value' (no ':' found)"])
    if not name:
        raise HeaderError(["expected 'Name: value' (no name before ':')"])
    shown = excerpt(name, 40)
    if not _TOKEN.match(name):
        raise HeaderError(
            [f"{shown!r} is not a header name (letters, digits and !#$%&'*+-.^_`|~ only)"]
        )
    reason = _CLIENT_OWNED.get(name.lower())
    if reason is None and name.lower().startswith("proxy-"):
        reason = "is for a proxy, not for the image's server"
    if reason:
        raise HeaderError([f"{shown} cannot be given: it {reason}"])
    value = value.strip(" \t")
    if not value:
        raise HeaderError([f"{shown} has no value"])
    if not _VALUE.match(value):
        if any(ch in value for ch in "\r\n\0"):
            raise HeaderError([f"the value of {shown} holds a line break or NUL character"])
        if not value.isascii():
            raise HeaderError([f"the value of {shown} is not ASCII (percent-encode it)"])
        raise HeaderError([f"the value of {shown} holds a control character"])
    return name, value


def parse_host(text: str) -> str:
    """A host (``shop.example``, ``Shop.Example.``, ``127.0.0.3:8080``, ``[::1]:8080``,
    ``*.shop.example``) as its stored pattern, or HeaderError."""
    raw = text.strip()
    shown = excerpt(raw, 60)
    if not raw:
        raise HeaderError(["no host given"])
    glob = raw.startswith("*.")
    body = raw[2:] if glob else raw
    if "*" in body:
        raise HeaderError([f"{shown!r}: only a leading '*.' is supported in a host"])
    try:
        parts = urlsplit("//" + body)
        port = parts.port
        hostname = parts.hostname
    except ValueError:
        raise HeaderError([f"{shown!r} is not a host (HOST or HOST:PORT)"]) from None
    if not hostname or parts.path or parts.query or parts.fragment or parts.username is not None:
        raise HeaderError([f"{shown!r} is not a host (HOST or HOST:PORT)"])
    name = host_key(hostname, 0).rsplit(":", 1)[0]
    is_ip = parse_ip_host(name) is not None
    if (glob and is_ip) or (
        not is_ip and (len(name) > MAX_HOST_CHARS or not _HOST_NAME.match(name))
    ):
        raise HeaderError([f"{shown!r} is not a host (HOST or HOST:PORT)"])
    pattern = ("*." if glob else "") + name
    return f"{pattern}:{port}" if port is not None else pattern


def parse_header_text(text: str, *, any_format: bool = False) -> RequestHeaders:
    """The new-job page's box: one ``Name: value`` or ``HOST | Name: value`` a line.

    Raises HeaderError with one ``line N: …`` problem per bad line."""
    builder = _Builder()
    _add_text(builder, text)
    return builder.build(any_format)


def _add_text(builder: _Builder, text: str, where: str = "") -> None:
    """Add the lines of `text` to `builder`; HeaderError with every bad line's problem."""
    if len(text) > MAX_TEXT_CHARS:
        raise HeaderError([f"{where}the headers text is longer than {MAX_TEXT_CHARS:,} characters"])
    lines = text.splitlines()
    if len(lines) > MAX_LINES:
        raise HeaderError(
            [f"{where}the headers text has {len(lines):,} lines; at most {MAX_LINES}"]
        )
    problems: list[str] = []
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            host, header = _parse_line(line)
        except HeaderError as exc:
            problems.extend(f"{where}line {number}: {problem}" for problem in exc.problems)
            continue
        repeated = builder.add(host, header)
        if repeated:
            problems.append(f"{where}line {number}: {repeated}")
    if problems:
        raise HeaderError(problems)


def _parse_line(line: str) -> tuple[str | None, Header]:
    match = _HOST_LINE.match(line)
    if match is not None:
        return parse_host(match["host"]), parse_header(match["rest"])
    before, bar, rest = line.partition("|")
    if bar and ":" not in before:  # meant as "HOST | …", with something that is not a host
        return parse_host(before), parse_header(rest)
    return None, parse_header(line)


def parse_options(
    headers: Iterable[str] = (),
    header_for: Iterable[Sequence[str]] = (),
    *,
    any_format: bool = False,
    text: str = "",
    text_name: str = "",
) -> RequestHeaders:
    """The command line's ``--header "Name: value"`` and ``--header-for HOST "Name: value"``,
    after the lines of `text` (``--headers-file``, named `text_name`: the box's syntax).

    Raises HeaderError naming the first bad option (every bad line of the file)."""
    builder = _Builder()
    if text:
        _add_text(builder, text, f"{text_name}: " if text_name else "")
    for text in headers:
        repeated = builder.add(None, _option(f"--header {_quoted_name(text)}", parse_header, text))
        if repeated:
            raise HeaderError([f"--header: {repeated}"])
    for host_text, text in header_for:
        where = f"--header-for {excerpt(host_text, 60)!r}"
        host = _option(where, parse_host, host_text)
        repeated = builder.add(host, _option(f"{where} {_quoted_name(text)}", parse_header, text))
        if repeated:
            raise HeaderError([f"--header-for: {repeated}"])
    return builder.build(any_format)


def _quoted_name(text: str) -> str:
    """How an option's header is named in a message: its name only (the value may be secret)."""
    name = text.partition(":")[0].strip()
    return repr(excerpt(name, 40) + ": …")


def _option(where: str, parse: Callable[[str], _T], text: str) -> _T:
    try:
        return parse(text)
    except HeaderError as exc:
        raise HeaderError([f"{where}: {problem}" for problem in exc.problems]) from None


# ---------------------------------------------------------------- storage


def to_json(headers: RequestHeaders) -> str | None:
    """The job column's text; None when the job has no headers and no format option."""
    if not headers:
        return None
    return json.dumps(
        {
            "version": 1,
            "headers": [list(h) for h in headers.common],
            "hosts": [[host, [list(h) for h in items]] for host, items in headers.hosts],
            "any_format": headers.any_format,
        },
        separators=(",", ":"),
    )


def from_json(text: str | None) -> RequestHeaders:
    """The job column's text back as RequestHeaders, validated again as when it was given
    (a row written by hand cannot smuggle a line break into a request); HeaderError if not."""
    if not text:
        return RequestHeaders()
    try:
        data = json.loads(text)
        builder = _Builder()
        for name, value in data.get("headers", []):
            _add_stored(builder, None, f"{name}: {value}")
        for host, items in data.get("hosts", []):
            pattern = parse_host(str(host))
            for name, value in items:
                _add_stored(builder, pattern, f"{name}: {value}")
        return builder.build(bool(data.get("any_format", False)))
    except (ValueError, TypeError, AttributeError) as exc:
        if isinstance(exc, HeaderError):
            raise
        raise HeaderError(["the stored request headers are not readable"]) from None


def _add_stored(builder: _Builder, host: str | None, line: str) -> None:
    repeated = builder.add(host, parse_header(line))
    if repeated:
        raise HeaderError([repeated])


# ---------------------------------------------------------------- choosing per host


def headers_for(host: str, stored: RequestHeaders, port: int | None = None) -> dict[str, str]:
    """The headers for a request to `host` (on `port`; None: patterns with a port do not
    match): the format option, then job-wide, then ``*.`` patterns (the longer suffix
    later), then the host's own; a later one replaces an earlier one of the same name."""
    if not stored:
        return {}
    chosen: dict[str, Header] = {}
    if stored.any_format:
        chosen["accept"] = ("Accept", ANY_FORMAT_ACCEPT)
    for header in stored.common:
        chosen[header[0].lower()] = header
    if stored.hosts:
        name = host_key(host, port or 0).rsplit(":", 1)[0]
        for rank in _matching(name, port, stored.hosts):
            for header in rank:
                chosen[header[0].lower()] = header
    return dict(chosen.values())


def _matching(
    name: str, port: int | None, hosts: tuple[tuple[str, tuple[Header, ...]], ...]
) -> list[tuple[Header, ...]]:
    """The header groups whose pattern matches, least specific first."""
    ranked: list[tuple[tuple[int, int], tuple[Header, ...]]] = []
    for pattern, items in hosts:
        base, _, pattern_port = pattern.rpartition(":") if _has_port(pattern) else (pattern, "", "")
        if pattern_port and (port is None or int(pattern_port) != port):
            continue
        with_port = 1 if pattern_port else 0
        if base.startswith("*."):
            suffix = base[1:]  # ".shop.example"
            if name.endswith(suffix) and len(name) > len(suffix):
                ranked.append(((len(suffix), with_port), items))
        elif base == name:
            ranked.append(((1_000, with_port), items))
    ranked.sort(key=lambda entry: entry[0])
    return [items for _, items in ranked]


def _has_port(pattern: str) -> bool:
    """Stored patterns spell IPv6 in brackets (host_key), so a colon outside them is a port."""
    return "]:" in pattern if pattern.startswith("[") else ":" in pattern


def headers_for_url(url: str, stored: RequestHeaders) -> dict[str, str]:
    """`headers_for` the host and port (the scheme's default if none) of `url`."""
    if not stored:
        return {}
    try:
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
        host = parts.hostname or ""
    except ValueError:
        return {}  # the fetcher refuses the URL itself
    if not host:
        return {}
    return headers_for(f"[{host}]" if ":" in host else host, stored, port)
