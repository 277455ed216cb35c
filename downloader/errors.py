"""Errors a person caused and can fix: shown as one line, never as a traceback; and
`excerpt`, which keeps quoted outside text short in any message.

Kept free of heavy imports so the command line can catch them without loading pandas.
"""


class UserError(Exception):
    """Base for problems with what the user gave us (input, settings, job ids)."""


class JobNotFound(UserError, LookupError):
    pass


class RateLimited(UserError, RuntimeError):
    pass


ELLIPSIS = "…"


def excerpt(text: str, limit: int = 100) -> str:
    """`text` cut to at most `limit` characters, ending in an ellipsis when cut.

    For quoting text that someone else chose (a URL's host, a server's reason phrase) in a
    message: the message stays one short sentence however long the text was.
    """
    if len(text) <= limit:
        return text
    if limit <= 0:
        return ""
    return text[: limit - 1] + ELLIPSIS
