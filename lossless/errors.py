"""Errors a user can act on.

Every error raised for bad input names the file or value at fault and says how to fix it; the
command line prints the message alone (no traceback) and exits with status 2.
"""


class LosslessError(Exception):
    """Base class: the message is meant for the user and is complete on its own."""


class DataError(LosslessError):
    """A dataset on disk is missing, malformed or does not fit the requested protocol."""


class ConfigError(LosslessError):
    """A profile or a key=value override is unknown or has the wrong type."""
