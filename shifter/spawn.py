"""Run a short external tool on a hot path without importing ``subprocess``.

``subprocess`` (with ``selectors``, ``signal`` and their enums) costs ~6 ms to import.
The paths every job pays for (the SPANK plugin's image lookup at submission, which makes a
munge credential; the prolog's ``scontrol show job``) run one small tool each, so they use
``os.posix_spawn`` and a poll loop instead.  Everything else uses ``shifter.runtime.proc``.

``start`` returns at once (the prolog overlaps the tool with its own work); ``collect``
feeds stdin, reads stdout and stderr to their ends, reaps the tool and closes every pipe;
on timeout the tool is killed.  ``run`` is both.
"""

from __future__ import annotations

import os
import select
import time

import _signal  # not ``signal``: its enums cost import time (see above)

DEFAULT_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"


class Child:
    """A started tool: its pid, the write end of its stdin (or None) with what is left to
    write, and the read ends of its stdout and stderr."""

    def __init__(self, argv: list[str], pid: int, stdin_fd: int | None, data: bytes, out_fd: int, err_fd: int):
        self.argv, self.pid = argv, pid
        self.stdin_fd, self.data = stdin_fd, data
        self.out_fd, self.err_fd = out_fd, err_fd
        self.collected = False


def find(name: str, path: str = DEFAULT_PATH) -> str:
    """The executable ``name`` in ``path`` (a name with a slash is taken as is);
    FileNotFoundError if there is none."""
    if "/" in name:
        return name
    for d in path.split(":"):
        candidate = os.path.join(d, name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    raise FileNotFoundError(f"{name} is not in {path}")


def start(argv: list[str], env: dict, stdin: bytes | None = None) -> Child:
    """Start ``argv`` (its executable looked up in ``env["PATH"]``) with stdin from
    ``stdin`` (or /dev/null) and stdout and stderr to pipes.  OSError if it can't."""
    exe = find(argv[0], env.get("PATH", DEFAULT_PATH))
    fds: list[int] = []
    try:
        out_r, out_w = os.pipe()
        fds += [out_r, out_w]
        err_r, err_w = os.pipe()
        fds += [err_r, err_w]
        actions = [(os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)]
        in_w = None
        if stdin is None:
            actions.insert(0, (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0))
        else:
            in_r, in_w = os.pipe()
            fds += [in_r, in_w]
            actions.insert(0, (os.POSIX_SPAWN_DUP2, in_r, 0))
        # what Python ignores, the tool gets back at its default (as subprocess does)
        pid = os.posix_spawn(exe, argv, env, file_actions=actions,
                             setsigdef=(_signal.SIGPIPE, _signal.SIGXFSZ))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    for fd in (out_w, err_w) + ((in_r,) if stdin is not None else ()):
        os.close(fd)
    if in_w is not None:
        os.set_blocking(in_w, False)
    return Child(argv, pid, in_w, stdin or b"", out_r, err_r)


def collect(child: Child, timeout: float) -> tuple[int | None, bytes, bytes]:
    """(exit code, stdout, stderr) of ``child``; the code is None if it had not finished
    within ``timeout`` seconds (it is killed and reaped then).  Closes its pipes."""
    child.collected = True
    bufs = {child.out_fd: bytearray(), child.err_fd: bytearray()}
    poller = select.poll()
    for fd in bufs:
        poller.register(fd, select.POLLIN)
    pending, sent = set(bufs), 0
    if child.stdin_fd is not None:
        if child.data:
            poller.register(child.stdin_fd, select.POLLOUT)
            pending.add(child.stdin_fd)
        else:
            os.close(child.stdin_fd)
            child.stdin_fd = None
    deadline = time.monotonic() + timeout
    try:
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(child.pid, 9)
                os.waitpid(child.pid, 0)
                return None, bytes(bufs[child.out_fd]), bytes(bufs[child.err_fd])
            for fd, events in poller.poll(left * 1000):
                if fd == child.stdin_fd:
                    try:
                        sent += os.write(fd, child.data[sent:sent + 65536])
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:  # the tool stopped reading: the rest is dropped
                        sent = len(child.data)
                    if sent >= len(child.data):
                        poller.unregister(fd)
                        pending.discard(fd)
                        os.close(fd)
                        child.stdin_fd = None
                    continue
                chunk = os.read(fd, 65536)
                if chunk:
                    bufs[fd] += chunk
                else:
                    poller.unregister(fd)
                    pending.discard(fd)
    finally:
        for fd in (child.out_fd, child.err_fd, child.stdin_fd):
            if fd is not None:
                os.close(fd)
        child.stdin_fd = None
    _, status = os.waitpid(child.pid, 0)
    return os.waitstatus_to_exitcode(status), bytes(bufs[child.out_fd]), bytes(bufs[child.err_fd])


def run(argv: list[str], env: dict, stdin: bytes | None = None, timeout: float = 30.0):
    """``start`` then ``collect``."""
    return collect(start(argv, env, stdin), timeout)
