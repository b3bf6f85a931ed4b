"""Writing files so that a crash never leaves a half-written one under the real name."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def atomic_file(path: str, mode: int = 0o644, text: bool = False):
    """Yield a file opened on a temporary name in ``path``'s directory; on success it gets
    ``mode`` and replaces ``path`` in one rename, on failure it is removed."""
    import tempfile  # not at import time: meta (and so setupRoot) imports this module

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.partial-", dir=directory)
    try:
        with (os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") if text else os.fdopen(fd, "wb")) as f:
            yield f
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# POSIX access ACLs (the ``system.posix_acl_access`` xattr, format version 2)
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_ACL_UNDEFINED_ID = 0xFFFFFFFF


def set_acl(fd: int, mode: int, uids=(), gids=(), perm: int = 4) -> None:
    """Give the file or directory open as ``fd`` the permission bits ``mode`` plus ``perm``
    (4 read, 1 search, 5 both) for the users ``uids`` and groups ``gids``, through a POSIX
    access ACL; with no ids, only ``mode`` (and any ACL is removed)."""
    import struct

    os.fchmod(fd, mode)
    uids, gids = sorted(set(uids)), sorted(set(gids))
    if not uids and not gids:
        try:
            os.removexattr(fd, "system.posix_acl_access")
        except OSError:
            pass
        return
    entries = [(_ACL_USER_OBJ, (mode >> 6) & 7, _ACL_UNDEFINED_ID)]
    entries += [(_ACL_USER, perm, uid) for uid in uids]
    entries.append((_ACL_GROUP_OBJ, (mode >> 3) & 7, _ACL_UNDEFINED_ID))
    entries += [(_ACL_GROUP, perm, gid) for gid in gids]
    entries.append((_ACL_MASK, perm | ((mode >> 3) & 7), _ACL_UNDEFINED_ID))
    entries.append((_ACL_OTHER, mode & 7, _ACL_UNDEFINED_ID))
    os.setxattr(fd, "system.posix_acl_access",
                struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries))
