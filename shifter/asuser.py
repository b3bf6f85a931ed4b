"""Work done with a user's rights, for root: in a forked child that has taken the user's
uid, gid and groups (real, effective, saved and so filesystem ids), which passes back a
small JSON answer and any open file descriptors (``SCM_RIGHTS``).

Root resolving a path a user chose would follow symlinks into places the user cannot
enter, and the difference between "no such file" and "permission denied" would tell the
user what exists there.  Opening it as the user gives exactly what the user could reach,
and every later use goes through the descriptor, whatever the user swaps meanwhile.
"""

from __future__ import annotations

import array
import errno
import json
import os
import select
import time

# The C modules, not ``socket`` and ``signal``: those wrap them in enums and cost ~3 ms of
# every image job's prolog (docs/dev.md, start-up rules).
import _signal as signal
import _socket as socket

MAX_FDS = 253  # SCM_MAX_FD


class Refusal(Exception):
    """Raised by the work function: a refusal to report to the user as is."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def call(uid: int, gid: int, groups, work, timeout: float | None = None) -> tuple[dict, list[int]]:
    """Run ``work()`` (returning a JSON-able dict and a list of fds) as the user; return
    what it returned, with the fds now open here.  A ``Refusal`` in the child comes back as
    ``{"refused": message, "hint": hint}``, an ``OSError`` as ``{"error": filename,
    "why": strerror, "errno": n}``; a child that died as ``{}``.  With ``timeout``, a child
    that has not answered by then is killed and ``TimeoutError`` raised."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child: system calls only, then _exit
        status = 1
        try:
            parent.close()
            os.setgroups(list(groups))
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            try:
                answer, fds = work()
            except Refusal as e:
                answer, fds = {"refused": str(e), "hint": e.hint}, []
            except OSError as e:
                answer, fds = {"error": e.filename or "", "why": e.strerror or str(e),
                               "errno": e.errno or errno.EIO}, []
            data = json.dumps(answer).encode()
            if fds:
                _send_fds(child, data, fds[:MAX_FDS])
            else:
                child.sendall(data)
            status = 0
        finally:  # a forked child: it must never return into root's code
            os._exit(status)
    child.close()
    try:
        parent.settimeout(timeout)
        try:
            msg, fds = _recv_fds(parent, 1 << 20, MAX_FDS)
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            raise TimeoutError(errno.ETIMEDOUT, f"the work as uid {uid} took more than {timeout:.0f} s") from None
    finally:
        parent.close()
        _reap(pid)
    try:
        answer = json.loads(msg.decode() or "{}")
    except ValueError:
        answer = {}
    if not isinstance(answer, dict):
        answer = {}
    return answer, fds


def _send_fds(sock, data: bytes, fds: list[int]) -> None:
    sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())])


def _recv_fds(sock, bufsize: int, maxfds: int) -> tuple[bytes, list[int]]:
    fds = array.array("i")
    msg, ancillary, _, _ = sock.recvmsg(bufsize, socket.CMSG_LEN(maxfds * fds.itemsize))
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    return msg, list(fds)


def _reap(pid: int, timeout: float = 5.0) -> None:
    """Wait for the child's exit, at most ``timeout`` s: a child stuck in the kernel stays a
    zombie rather than hang root.  Through a pidfd (woken at the exit itself: the child has
    answered and is on its way out, which takes well under a millisecond); polling where
    the kernel has none."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        fd = None
    if fd is not None:
        try:
            select.select([fd], [], [], timeout)
        finally:
            os.close(fd)
        os.waitpid(pid, os.WNOHANG)
        return
    deadline = time.monotonic() + timeout
    while True:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done or time.monotonic() > deadline:
            return
        time.sleep(0.0005)
