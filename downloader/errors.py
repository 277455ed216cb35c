"""Errors a person caused and can fix: shown as one line, never as a traceback.

Kept free of heavy imports so the command line can catch them without loading pandas.
"""


class UserError(Exception):
    """Base for problems with what the user gave us (input, settings, job ids)."""


class JobNotFound(UserError, LookupError):
    pass


class RateLimited(UserError, RuntimeError):
    pass
