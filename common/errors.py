"""What ecgfl tells its users when it stops: one line, and an exit code that says which kind.

Everything a user can cause or fix is an ``EcgflError``; the command-line tools print it as one
line and exit with its ``exit_code``. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class EcgflError(Exception):
    """A problem the user can act on, stated in one line."""

    exit_code = 1


class ConfigError(EcgflError, ValueError):
    """A setting, file or argument is wrong: fix it and run again."""

    exit_code = 2


class DataError(EcgflError):
    """The data cannot serve: no readable record, records missing from a cache, a checkpoint
    prepared for other data."""

    exit_code = 3


class RunFailed(EcgflError):
    """A run or a Flower operation failed or stopped on the way (the reason says where)."""

    exit_code = 1
