"""Open the file of an import with the rights of the user who asked, never the gateway's.

The gateway runs as root; a path in a ``doimport`` request is the user's.  Root resolving it
would follow a directory symlink into places the user cannot enter, and the difference
between "no such file", "permission denied" and "not a regular file" would tell the user
what exists there.  So the path is resolved and opened in a forked child that has taken the
user's uid, gid and groups (``setresuid``: real, effective, saved and so filesystem ids),
with ``O_NOFOLLOW`` on the last component and ``O_NONBLOCK`` (a fifo does not block); the
child passes the open file back over a socket pair (``SCM_RIGHTS``) and the gateway reads
only from that descriptor.  Every way the open can fail, and a file that is not a regular
file, get one and the same refusal.  What follows a successful open (the owner, the
squashfs magic, the size) is what the user could see for themselves.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat

from shifter import asuser
from shifter.gateway.catalog import Requester
from shifter.gateway.errors import ImportRefused

SQUASHFS_MAGIC = b"hsqs"
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
OPEN_TIMEOUT = 10.0


class CannotSwitch(PermissionError):
    """The gateway does not run as root, so it cannot take another user's rights."""


def open_as_user(path: str, uid: int, gid: int, groups: list[int], flags: int = OPEN_FLAGS,
                 timeout: float = OPEN_TIMEOUT) -> int:
    """``os.open(path, flags)`` with the rights of ``uid``/``gid``/``groups``; returns the fd.

    Raises what ``os.open`` raised in the child, ``TimeoutError`` when the open hangs (the
    child is killed), ``CannotSwitch`` when this process may not take those ids.
    """
    euid = os.geteuid()
    if uid == euid:  # root asking, or a gateway not run as root asked by its own user
        return os.open(path, flags)
    if euid != 0:
        raise CannotSwitch(errno.EPERM, f"the gateway runs as uid {euid}, not root: it can't open "
                                        f"files with uid {uid}'s rights")
    try:
        answer, fds = asuser.call(uid, gid, groups, lambda: ({"ok": 1}, [os.open(path, flags)]), timeout)
    except TimeoutError:
        raise TimeoutError(errno.ETIMEDOUT, f"opening {path} took more than {timeout:.0f} s") from None
    if answer.get("ok") and len(fds) == 1:
        return fds[0]
    for fd in fds:
        os.close(fd)
    if "errno" in answer:
        raise OSError(answer["errno"], os.strerror(answer["errno"]), path)
    raise OSError(errno.EPERM, f"the helper process could not take uid {uid}'s rights", path)


def _ids(who: Requester) -> tuple[int, list[int]]:
    """(gid, groups) to open files as ``who``: all their groups; their primary one as gid."""
    groups = sorted(who.gids)
    try:
        primary = pwd.getpwuid(who.uid).pw_gid
    except KeyError:
        primary = None
    if primary in who.gids:
        return primary, groups
    return (groups[0] if groups else 65534), groups


def open_import_file(path: str, who: Requester, size_limit: int | None = None) -> int:
    """Open the squashfs file ``who`` asked to import; returns the fd (read from it, not from
    ``path``).  Raises ``ImportRefused``: one message for a file that is missing, out of the
    user's reach, a symlink or not a regular file; then a file not owned by the user (root
    may import any file), not a squashfs image, or larger than ``size_limit`` bytes."""
    refused = ImportRefused(
        f"can't import {path}: it is not a regular file that {who.user} can open (it does not "
        f"exist, is a symlink, or is not readable or reachable by {who.user})",
        "give the absolute path of a squashfs file you own and can read; symlinks are not followed")
    gid, groups = _ids(who)
    try:
        fd = open_as_user(path, who.uid, gid, groups)
    except CannotSwitch as e:
        raise ImportRefused(f"can't import {path}: {e.strerror}", "run shifter-gateway as root",
                            http_status=403) from None
    except TimeoutError:
        raise ImportRefused(f"can't import {path}: opening it took more than {OPEN_TIMEOUT:.0f} s",
                            "put the file on a filesystem that answers") from None
    except OSError:
        raise refused from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise refused
        if who.uid != 0 and st.st_uid != who.uid:
            raise ImportRefused(f"can't import {path}: the file is not owned by {who.user}",
                                "import a file you own", http_status=403)
        try:
            magic = os.pread(fd, 4, 0)
        except OSError as e:
            raise ImportRefused(f"can't import {path}: can't read it: {e.strerror}") from None
        if magic != SQUASHFS_MAGIC:
            raise ImportRefused(f"can't import {path}: not a squashfs image",
                                "make one with mksquashfs DIR FILE -all-root")
        if size_limit and st.st_size > size_limit:
            raise ImportRefused(f"can't import {path}: the file is {st.st_size} bytes, more than this "
                                f"gateway's ImageSizeLimit of {size_limit} bytes",
                                "ask the site to raise ImageSizeLimit in imagemanager.json, or import "
                                "a smaller image")
        return fd
    except BaseException:
        os.close(fd)
        raise
