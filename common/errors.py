"""The one base exception of the project: a message and a hint.

Every user-facing error is one line: ``shifter: can't VERB: OBJECT: reason`` and, when
there is one, `` (hint: ...)`` at its end (``str()`` of the exception gives both).  CLI
``main()`` functions only turn these into an exit code and a message; SPANK hooks map them
to ``slurm_error`` plus -1.
"""

from __future__ import annotations


class ShifterError(Exception):
    """An error with a message for the user and an optional hint."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} (hint: {self.hint})"
        return self.message


class UsageError(ShifterError):
    """The user asked for something malformed (bad option value, bad image name...)."""

    exit_code = 2


class ConfigError(ShifterError):
    """The site configuration is wrong: a site fault, not the user's."""

    exit_code = 3
