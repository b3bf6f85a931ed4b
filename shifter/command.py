"""The one ``main()`` wrapper of every shifter command: one way to fail.

Every command the project installs or ships (``shifter``, ``setupRoot``, ``unsetupRoot``,
``shifterimg``, ``shifter-gateway``, ``shifter-admin``, the local site's ``tools/*``) has
``main(argv=None)`` return ``run(NAME, body, argv)``.  ``body(argv)`` does the work and
returns the exit code (None: 0); library code under it raises and never prints or exits.
``run`` turns what escapes into exactly one line on stderr and a code of the one table
(``shifter.exit_codes``, docs/dev.md "Failing"):

* ``ShifterError``: ``<command>: <what> (hint: <hint>)`` (``shifter.errors.line``), code
  ``error.exit_code`` (FAILURE 1, USAGE 2, CONFIG 3; ``CommandNotRun``: 126 or 127);
* ``OSError``: ``<command>: <file>: <reason>``, FAILURE;
* ``KeyboardInterrupt``: ``<command>: interrupted``, INTERRUPTED (130);
* ``BrokenPipeError`` on stdout (``shifterimg images | head``): nothing, BROKEN_PIPE (141);
* anything else is a bug: ``<command>: internal error: <type>: <message> (hint: ...)`` with
  where the traceback went (a new file in $TMPDIR or /tmp), FAILURE.  With ``SHIFTER_DEBUG=1``
  (read when the command starts) the traceback of any failure is printed after the line.

``launcher=True`` (``shifter``): the codes 1-124 belong to the command it runs, so every
failure of its own is LAUNCH (125), except ``CommandNotRun`` (126/127) and INTERRUPTED.
``SystemExit`` passes through (argparse's ``--help``).  Commands that parse with argparse
use ``parser_class()``, whose errors are ``UsageError``: one line, USAGE.
"""

from __future__ import annotations

import os
import sys

from shifter import exit_codes
from shifter.errors import ShifterError, UsageError, describe, line

_PARSER = None


def run(command: str, body, argv: list[str] | None = None, *, launcher: bool = False) -> int:
    """Run ``body(argv)`` (``sys.argv[1:]`` by default) as command ``command``; return its
    exit code, or the table's code for what it raised (the one line said on stderr)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = os.environ.get("SHIFTER_DEBUG") == "1"  # before the body: setupRoot clears the environment
    try:
        code = body(argv)
        return exit_codes.OK if code is None else code
    except ShifterError as e:
        return _fail(line(command, e), e.exit_code if not launcher or _own_code(e) else exit_codes.LAUNCH,
                     debug)
    except KeyboardInterrupt:
        return _fail(f"{command}: interrupted", exit_codes.INTERRUPTED, False)
    except BrokenPipeError:
        if _stdout_gone():
            return exit_codes.BROKEN_PIPE
        return _fail(_os_line(command, sys.exc_info()[1]), _general(launcher), debug)
    except OSError as e:
        return _fail(_os_line(command, e), _general(launcher), debug)
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - a bug: one line, the traceback kept aside
        return _fail(internal_error_line(command, e, debug), _general(launcher), debug)


def parser_class():
    """``argparse.ArgumentParser`` whose errors raise ``UsageError`` (``<prog>: <message>
    (hint: see <prog> --help)``, USAGE) instead of printing the usage and exiting."""
    global _PARSER
    if _PARSER is None:
        # start-up: argparse (with re and gettext, ~5 ms): only the commands that parse options pay it
        import argparse

        class UsageParser(argparse.ArgumentParser):
            def error(self, message: str):
                raise UsageError(message, f"see {self.prog} --help")

        _PARSER = UsageParser
    return _PARSER


def _own_code(e: ShifterError) -> bool:
    """The launcher keeps the code of an error that is about the command it runs."""
    return e.exit_code in (exit_codes.NOT_FOUND, exit_codes.NOT_EXECUTABLE)


def _general(launcher: bool) -> int:
    return exit_codes.LAUNCH if launcher else exit_codes.FAILURE


def _say(text: str) -> None:
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr closed: nobody to tell
        pass


def _fail(text: str, code: int, debug: bool) -> int:
    _say(text)
    if debug:
        _say(_traceback())
    return code


def _os_line(command: str, e: OSError) -> str:
    reason = e.strerror.lower() if e.strerror else str(e)
    where = f"{e.filename}: " if e.filename else ""
    return f"{command}: {where}{reason}"


def _stdout_gone() -> bool:
    """After a BrokenPipeError: True if it was stdout's reader that went (stdout then points
    at /dev/null, so that the interpreter's last flush does not fail again)."""
    try:
        import select  # start-up: only after a broken pipe (the launcher and the hooks never need it)

        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        gone = any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False
    if gone:
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, sys.stdout.fileno())
            os.close(null)
        except (OSError, ValueError):
            pass
    return gone


def _traceback() -> str:
    try:
        import traceback  # start-up: ~18 ms of import (docs/dev.md), paid only on a failure

        return traceback.format_exc().rstrip("\n")
    except BaseException:  # noqa: BLE001 - after a chroot the stdlib may be out of reach
        return "(no traceback: the traceback module can't be imported here)"


def internal_error_line(command: str, e: BaseException, debug: bool = False) -> str:
    """``<command>: internal error: <type>: <message> (hint: ...)``; the traceback goes to
    a new file (named in the hint), or, with ``debug``, to stderr after the line."""
    what = f"internal error: {type(e).__name__}: {e}".rstrip(": ")
    if debug:
        return f"{command}: {describe(what, 'the traceback follows')}"
    path = _save_traceback(command)
    hint = (f"a bug in shifter; the traceback is in {path}" if path else
            "a bug in shifter; run again with SHIFTER_DEBUG=1 to see the traceback")
    return f"{command}: {describe(what, hint)}"


def _save_traceback(command: str) -> str | None:
    """Write the current traceback to a new file (mode 0600, O_EXCL: never a path someone
    made beforehand) in $TMPDIR or /tmp; its path, or None."""
    try:
        import tempfile  # start-up: ~5 ms (random, shutil), paid only on an internal error

        fd, path = tempfile.mkstemp(prefix=f"{os.path.basename(command)}-internal-error-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(_traceback() + "\n")
        return path
    except BaseException:  # noqa: BLE001 - no place to keep it: say how to see it instead
        return None
