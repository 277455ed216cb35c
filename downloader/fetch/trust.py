"""Which certificate authorities HTTPS connections trust (TLS_TRUST, SSL_CERT_FILE, SSL_CERT_DIR).

* ``TLS_TRUST=default``: certifi's CA bundle, plus SSL_CERT_FILE and/or SSL_CERT_DIR when they
  are set. They are *added* (not a replacement, as curl's CURL_CA_BUNDLE would be): behind a
  TLS-inspecting proxy that exempts some sites, both the company's root CA and the public ones
  are needed.
* ``TLS_TRUST=system``: the operating system's store through `truststore` (Windows, macOS, or
  the Linux distribution's bundle), where a company's IT department installs its root CA. The
  files above are added to it too.

Host names are always verified (SNI and certificate name = the URL's host).
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

import certifi

if TYPE_CHECKING:
    from downloader.settings import Settings

TRUST_HINT = (
    "if your network inspects HTTPS, set SSL_CERT_FILE to your company's root CA, "
    "or TLS_TRUST=system"
)


def ssl_context(settings: Settings | None = None) -> ssl.SSLContext:
    """A client context that verifies certificates and host names against the configured CAs."""
    trust = settings.tls_trust if settings is not None else "default"
    cafile = settings.ssl_cert_file if settings is not None else None
    capath = settings.ssl_cert_dir if settings is not None else None
    if trust == "system":
        import truststore

        context: ssl.SSLContext = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    else:
        context = ssl.create_default_context(cafile=certifi.where())
    if cafile or capath:
        context.load_verify_locations(cafile=cafile or None, capath=capath or None)
    return context


# OpenSSL's verify codes for "the chain does not end at a CA we trust" (an unknown root, such
# as a TLS-inspecting proxy's): self-signed leaf or chain, missing issuer, unverifiable leaf.
UNKNOWN_CA_CODES = frozenset({18, 19, 20, 21})


def is_unknown_ca(exc: BaseException) -> bool:
    """A certificate whose chain ends at a CA not trusted here (the case SSL_CERT_FILE or
    TLS_TRUST=system fixes), not a wrong host name or an expired certificate."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        code = getattr(seen, "verify_code", None)  # aiohttp's wrapper subclasses it, without
        if isinstance(seen, ssl.SSLCertVerificationError) and code is not None:
            return code in UNKNOWN_CA_CODES
        text = str(seen).lower()
        if "unable to get local issuer" in text or "self-signed" in text or "self signed" in text:
            return True
        seen = getattr(seen, "certificate_error", None) or seen.__cause__ or seen.__context__
    return False
