"""The one base exception of the project: what went wrong, and a hint.

A ``ShifterError`` carries ``what`` (``can't VERB OBJECT: reason``, naming the value and
why) and, when there is one, ``hint`` (what to do about it).  Users see it as one line,
made by ``line()`` alone::

    <command>: <what> (hint: <hint>)

``str()`` of the error is that line without ``<command>: `` (``describe``), so an error
wrapped into another's ``what`` keeps its hint.  Who prints it: the one command wrapper
(``shifter.command.run``, with the exit code of ``exit_code``, from
``shifter.exit_codes``), the SPANK dispatcher (``slurm_error``), and the prolog, which
records ``describe`` for the job's steps to print after ``shifter: ``.  Library code
raises; it never prints or exits.
"""

from __future__ import annotations

from shifter import exit_codes


def describe(what: str, hint: str | None = None) -> str:
    """``what (hint: hint)``, or ``what`` without a hint."""
    return f"{what} (hint: {hint})" if hint else what


def line(command: str, error: BaseException) -> str:
    """The one line a user sees for ``error``: ``<command>: <what> (hint: <hint>)``."""
    return f"{command}: {error}"


class ShifterError(Exception):
    """An error with a message for the user (``what``) and an optional ``hint``."""

    exit_code = exit_codes.FAILURE

    def __init__(self, what: str, hint: str | None = None):
        super().__init__(what)
        self.what = what
        self.hint = hint

    @property
    def message(self) -> str:
        """The older name of ``what``."""
        return self.what

    def __str__(self) -> str:
        return describe(self.what, self.hint)


class UsageError(ShifterError):
    """The user asked for something malformed (bad option value, bad image name...)."""

    exit_code = exit_codes.USAGE


class ConfigError(ShifterError):
    """The site configuration is wrong: a site fault, not the user's."""

    exit_code = exit_codes.CONFIG


class CommandNotRun(ShifterError):
    """``shifter``: the container is ready but its command could not be executed:
    ``exit_code`` is ``NOT_FOUND`` (127) or ``NOT_EXECUTABLE`` (126), as a shell says."""

    def __init__(self, what: str, hint: str | None = None, *, missing: bool = True):
        super().__init__(what, hint)
        self.exit_code = exit_codes.NOT_FOUND if missing else exit_codes.NOT_EXECUTABLE
