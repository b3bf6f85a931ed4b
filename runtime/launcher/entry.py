"""The last steps of every way into a container, once chrooted with no_new_privs:
change to the working directory, run the modules' userhooks, exec the command.
(The compiled launcher does the same in C.)"""

from __future__ import annotations

import os
import signal
import warnings  # noqa: F401 - os.execvpe imports it; after the chroot it could not

from shifter import exit_codes
from shifter.errors import CommandNotRun, ShifterError


def start(cwd: str, env: dict[str, str], userhooks, warn) -> None:
    """chdir to ``cwd`` (``/`` and a warning through ``warn(line)`` if the container lacks
    it, as Shifter does), then run each userhook as the user; a failing hook is an error."""
    try:
        os.chdir(cwd)
    except OSError:  # still in / (chrooted just before)
        warn(f"{cwd} does not exist in the container, starting in /")
    for hook in userhooks:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                os.execve("/bin/sh", ["sh", hook], env)
            finally:
                os._exit(exit_codes.NOT_FOUND)  # the forked child must not return into the caller
        _, status = os.waitpid(pid, 0)
        if status != 0:
            code = os.waitstatus_to_exitcode(status)
            raise ShifterError(f"can't run the userhook {hook}: "
                               + (f"killed by signal {-code}" if code < 0 else f"it exited with {code}"))


def exec_command(argv: list[str], env: dict[str, str]) -> None:
    """Replace this process with ``argv`` (searched in the container's PATH); on failure
    raise ``CommandNotRun`` (exit 127 not found, 126 not executable)."""
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores them; the command must not
        signal.signal(sig, signal.SIG_DFL)
    os.environ.clear()
    os.environ.update(env)
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        missing = isinstance(e, (FileNotFoundError, NotADirectoryError))
        why = "command not found" if missing and "/" not in argv[0] else (e.strerror or str(e)).lower()
        raise CommandNotRun(f"can't run {argv[0]}: {why}", missing=missing) from None
