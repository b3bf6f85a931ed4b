"""Small helpers to start, find and stop the local site's daemons by pidfile.

``down`` stops only our daemons: a pid is trusted only when the process still runs the
program we started (checked through /proc/<pid>/exe or cmdline), never by name alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from shifter import command
from shifter.errors import ShifterError
from tools.site import Site


def read_pid(pidfile: str) -> int | None:
    try:
        with open(pidfile) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def live_argv(pid: int) -> list[bytes] | None:
    """The argv of process ``pid``, or None if it is gone or a zombie (pid 1 here does
    not reap orphans, so a killed daemon can linger as one)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a for a in f.read().split(b"\0") if a]
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                return None
    except (OSError, IndexError):
        return None
    return argv or None


def running(pidfile: str, program: str) -> int | None:
    """The pid in ``pidfile`` if that process is alive and runs ``program`` (basename)."""
    pid = read_pid(pidfile)
    if pid is None:
        return None
    argv = live_argv(pid)
    if argv and os.path.basename(argv[0]) == os.fsencode(program):
        return pid
    return None


def terminate(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM ``pid``, SIGKILL after ``timeout`` if it is still there; reaps it when it
    is our child (a zombie counts as gone: pid 1 here does not reap orphans)."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if live_argv(pid) is None:
                return
            time.sleep(0.05)


def stop(pidfile: str, program: str, timeout: float = 10.0) -> bool:
    """Stop our daemon named by ``pidfile``; True if one was running."""
    pid = running(pidfile, program)
    if pid is not None:
        terminate(pid, timeout)
    _unlink(pidfile)
    return pid is not None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def spawn(argv: list[str], logfile: str, env: dict | None = None) -> subprocess.Popen:
    """Start ``argv`` detached (own session), stdout/stderr appended to ``logfile``."""
    with open(logfile, "ab") as log:
        try:
            return subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True, env=env, close_fds=True,
            )
        except OSError as e:
            raise ShifterError(f"can't start {argv[0]}: {e.strerror}") from None


def wait_for(predicate, timeout: float, what: str, logfile: str | None = None, interval: float = 0.05):
    """Poll ``predicate`` until it returns a true value; raise naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = ""
            if logfile:
                tail = f"; last log lines of {logfile}: " + " | ".join(log_tail(logfile, 5))
            raise ShifterError(f"timed out after {timeout:.0f} s waiting for {what}{tail}")
        time.sleep(interval)


def log_tail(path: str, lines: int = 5) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            return [ln.decode(errors="replace") for ln in f.read().splitlines()[-lines:]]
    except OSError:
        return []


def service_main(argv, prog: str, description: str, start, stop, status) -> int:
    """``tools/run-module X start|stop|status``: act, then print the status as JSON."""
    def body(argv: list[str]) -> int:
        parser = command.parser_class()(prog=prog, description=description)
        parser.add_argument("action", choices=("start", "stop", "status"))
        args = parser.parse_args(argv)
        site = Site()
        if args.action == "start":
            start(site)
        elif args.action == "stop":
            stop(site)
        print(json.dumps(status(site), indent=2))
        return 0

    return command.run(prog, body, argv)
