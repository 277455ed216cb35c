"""Which proxy a request goes through: HTTP_PROXY, HTTPS_PROXY, NO_PROXY (read as settings, from
the same environment variables, upper- or lower-case).

NO_PROXY is matched as curl and Python's urllib match it: a comma-separated list of host names
(``example.com`` also covers ``img.example.com``; a leading dot is the same), IP literals,
optional ``:port``, and ``*`` for every host. CIDR ranges are not understood (as in urllib).
"""

from __future__ import annotations

import urllib.request
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
import yarl

if TYPE_CHECKING:
    from downloader.settings import Settings


@dataclass(frozen=True, slots=True)
class Proxy:
    """A proxy to send through: its URL without credentials, and its credentials apart."""

    url: yarl.URL
    auth: aiohttp.BasicAuth | None

    @property
    def host(self) -> str:
        return (self.url.host or "").lower()

    @property
    def port(self) -> int:
        return self.url.port or 80


def parse_proxy(value: str | None) -> Proxy | None:
    """The proxy of a setting such as ``http://user:pass@proxy.corp:3128`` (None when empty)."""
    if not value or not value.strip():
        return None
    text = value.strip()
    if "://" not in text:
        text = "http://" + text  # curl's habit: a bare host:port is an HTTP proxy
    url = yarl.URL(text)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{url.scheme}:// proxies are not supported (use http:// or https://)")
    auth = None
    if url.user is not None:
        # aiohttp puts BasicAuth where each kind of request needs it (the request itself for
        # http:// targets, the CONNECT for https://); its deprecation points at a header that
        # only reaches the CONNECT.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            auth = aiohttp.BasicAuth(url.user, url.password or "")
    return Proxy(url.with_user(None).with_path("").with_query(None), auth)


class ProxyRoutes:
    """The proxy for each request, from the settings (fixed for a fetcher's life)."""

    def __init__(self, settings: Settings) -> None:
        self.http = parse_proxy(settings.http_proxy)
        self.https = parse_proxy(settings.https_proxy)
        self.no_proxy = (settings.no_proxy or "").strip()

    @property
    def configured(self) -> bool:
        return self.http is not None or self.https is not None

    def hosts(self) -> set[str]:
        """The proxies' host names: the connector resolves them without the guard."""
        return {p.host for p in (self.http, self.https) if p is not None}

    def proxy_for(self, scheme: str, host: str, port: int) -> Proxy | None:
        proxy = self.https if scheme == "https" else self.http
        if proxy is None:
            return None
        if self.no_proxy and urllib.request.proxy_bypass_environment(  # type: ignore[attr-defined]
            f"{host}:{port}", {"no": self.no_proxy}
        ):
            return None
        return proxy
