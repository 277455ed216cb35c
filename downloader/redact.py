"""Redaction of secrets in URLs and free text before they are shown or logged.

A URL can carry a secret in its userinfo (`https://user:pass@host/`, a token as the user name)
or in its query or fragment (`?token=…`, an S3 presigned `X-Amz-Signature=…`, `#access_token=…`).
Pages, log lines and the system check show URLs through `redact_url` / `redact_text`; the
manifest and CSV exports keep the URL as given (they are the user's own data).

Redacted: the password of the userinfo; a user name that looks random (a token); the values of
query and fragment parameters whose name says secret (`password`, `token`, `key`, `sig`,
`x-amz-*`, …) or whose value looks random (long, letters and digits mixed). The rest of the URL
is kept byte for byte, so a redacted URL still says which host and which image.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

MASK = "***"

# Parameter names (lower-cased) that hold secrets wherever they appear in the name...
_SECRET_PARTS = (
    "password",
    "passwd",
    "secret",
    "token",
    "signature",
    "credential",
    "apikey",
    "api_key",
    "api-key",
    "auth",
    "session",
    "private",
)
# ...or as one whole word of it (split at punctuation and camelCase humps).
_SECRET_WORDS = frozenset(
    {"key", "sig", "pwd", "pass", "jwt", "hmac", "policy", "code", "sid", "otp", "hash"}
)
_SECRET_PREFIXES = ("x-amz-", "x-goog-", "x_amz_", "x-oss-")

_WORD_SPLIT = re.compile(r"[^a-z0-9]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
# A value that looks like a token: long, made of token characters, with letters and digits.
_TOKEN_VALUE = re.compile(r"[A-Za-z0-9_\-+/=.~%]{20,}\Z")
_HAS_LETTER = re.compile(r"[A-Za-z]")
_HAS_DIGIT = re.compile(r"[0-9]")
_WEB_SCHEMES = ("http", "ws", "ftp")
_DB_USERINFO = re.compile(r"[^:/@?#]*:[^@]*@")
# URL-shaped substrings of free text: scheme://… up to white space, quotes or angle brackets.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]{0,30}://[^\s<>\"'`]+")


def is_secret_name(name: str) -> bool:
    """True if a query parameter (or setting) called `name` holds a secret."""
    lowered = name.strip().lower()
    if not lowered:
        return False
    if lowered.startswith(_SECRET_PREFIXES) or any(part in lowered for part in _SECRET_PARTS):
        return True
    words = _WORD_SPLIT.split(_CAMEL.sub(" ", name.strip()).lower())
    return any(word in _SECRET_WORDS for word in words)


def looks_random(value: str) -> bool:
    """True for a value that looks like a token: 20+ token characters, letters and digits."""
    return bool(
        _TOKEN_VALUE.match(value) and _HAS_LETTER.search(value) and _HAS_DIGIT.search(value)
    )


def _redact_params(params: str) -> str:
    """`a=1&token=x` -> `a=1&token=***`, keeping every other byte as it was."""
    parts = []
    for part in params.split("&"):
        name, equals, value = part.partition("=")
        if equals and value and (is_secret_name(unquote_plus(name)) or looks_random(value)):
            part = f"{name}={MASK}"
        elif not equals and looks_random(name):  # a bare token: `?AbC123…`
            part = MASK
        parts.append(part)
    return "&".join(parts)


def _redact_userinfo(userinfo: str) -> str:
    user, colon, _password = userinfo.partition(":")
    if looks_random(unquote_plus(user)) or (not colon and len(user) >= 20):
        user = MASK  # a token used as the user name
    return f"{user}:{MASK}" if colon else user


def redact_url(url: str) -> str:
    """`url` with its userinfo password and secret-looking query/fragment values masked.

    Never raises: works on the text (no parsing that could refuse a malformed URL)."""
    if not isinstance(url, str) or not url:
        return url
    text = url
    scheme_end = text.find("://")
    if scheme_end != -1:
        start = scheme_end + 3
        # The authority ends at the first / ? # after the scheme; its userinfo before the last @.
        end = len(text)
        for mark in "/?#":
            found = text.find(mark, start)
            if found != -1:
                end = min(end, found)
        at = text.rfind("@", start, end)
        if at == -1 and not text[:scheme_end].lower().startswith(_WEB_SCHEMES):
            # Database URLs (SQLAlchemy) allow a raw / ? # in the password: user:pass@ first.
            userinfo = _DB_USERINFO.match(text, start)
            at = userinfo.end() - 1 if userinfo else -1
        if at != -1:
            text = text[:start] + _redact_userinfo(text[start:at]) + text[at:]
    head, hash_mark, fragment = text.partition("#")
    base, question, query = head.partition("?")
    if question:
        base = f"{base}?{_redact_params(query)}"
    if hash_mark:
        base = f"{base}#{_redact_params(fragment)}"
    return base


def redact_text(text: str) -> str:
    """`text` with every URL in it redacted (error messages, exception texts, log lines)."""
    if not isinstance(text, str) or "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts URLs in a record's message and exception text.

    Attach it to the loggers whose lines can name a URL (the fetcher's, the engine's): the
    record leaves the filter with its final text redacted, so every handler shows that."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the handler to report
            return True
        record.msg = redact_text(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        record.exc_info = None  # the redacted exc_text is what handlers print
        return True


def redact_logger(logger: logging.Logger) -> logging.Logger:
    """Attach one RedactingFilter to `logger` (idempotent); returns the logger."""
    if not any(isinstance(existing, RedactingFilter) for existing in logger.filters):
        logger.addFilter(RedactingFilter())
    return logger
