"""Recording a private container's build, for the compiled launcher to replay.

While a ``Recorder`` is active (``with recording(rec):``), the build's steps that change
the container — mounts (``linux.mount`` and friends), directories, symlinks, files —
are appended to ``rec.ops`` as private-plan records (see docs/private-plans.md).  Steps
whose outcome depends on the host at run time are recorded as one high-level record
(``group``): their inner steps are not recorded.  A step the plan format can't express
marks the recording ``broken`` (no plan is written).  Without an active recorder every
function here costs one attribute lookup.
"""

from __future__ import annotations

import contextlib
import os
import re

_active: Recorder | None = None
_FD_PATH = re.compile(r"/proc/self/fd/(\d+)(/.*)?\Z")


class Recorder:
    def __init__(self, base: str | None = None):
        self.ops: list[tuple] = []
        self.base = base  # the user kind's staging directory, written as "@"
        self.fds: dict[int, str] = {}  # fd -> the path it was opened from
        self.broken: str | None = None
        self.depth = 0

    def path(self, path: str) -> str:
        m = _FD_PATH.match(path)
        if m:
            fd = int(m.group(1))
            known = self.fds.get(fd)
            if known is None:
                try:
                    known = os.readlink(f"/proc/self/fd/{fd}")
                except OSError:
                    self.fail(f"can't name {path}")
                    return path
                if not known.startswith("/"):
                    self.fail(f"can't name {path} ({known})")
                    return path
            path = known + (m.group(2) or "")
        if self.base and (path == self.base or path.startswith(self.base + "/")):
            path = "@" + path[len(self.base):]
        return path

    def fail(self, why: str) -> None:
        if self.broken is None:
            self.broken = why


def active() -> Recorder | None:
    return _active


@contextlib.contextmanager
def recording(rec: Recorder):
    global _active
    old, _active = _active, rec
    try:
        yield rec
    finally:
        _active = old


def P(path: str | None) -> str:
    """``path`` as a plan writes it ("" for None)."""
    if path is None:
        return ""
    return _active.path(os.fspath(path)) if _active is not None else os.fspath(path)


def op(name: str, *args) -> None:
    """Record one step (already done)."""
    rec = _active
    if rec is not None and rec.depth == 0:
        rec.ops.append((name, *(a if isinstance(a, bytes) else str(a) for a in args)))


@contextlib.contextmanager
def group(name: str, *args):
    """A step made of others whose outcome depends on the host at run time (which
    mounts exist, their flags): recorded as one, once it succeeded."""
    rec = _active
    if rec is None:
        yield
        return
    rec.depth += 1
    try:
        yield
    finally:
        rec.depth -= 1
    op(name, *args)


def fail(why: str) -> None:
    if _active is not None:
        _active.fail(why)


def register_fd(fd: int, path: str) -> None:
    """``fd`` was opened from ``path`` (a volume source): the plan names the path."""
    if _active is not None:
        _active.fds[fd] = path


def at(dir_fd: int, name: str) -> str:
    """The path of ``name`` in the directory open as ``dir_fd`` (for recording)."""
    if _active is None:
        return name
    return os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), name)


def files(directory: str) -> None:
    """Record the regular files now in ``directory`` (just written by the build) as
    ``file`` records with their content and mode."""
    if _active is None:
        return
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        st = os.lstat(path)
        if not os.path.isfile(path) or os.path.islink(path):
            fail(f"can't record {path}: not a regular file")
            continue
        with open(path, "rb") as f:
            data = f.read()
        file(path, st.st_mode & 0o7777, data)


def file(path: str, mode: int, data: bytes) -> None:
    if _active is None:
        return
    if b"\0" in data:
        fail(f"can't record {path}: it contains a NUL byte")
        return
    op("file", P(path), f"{mode:o}", data)
