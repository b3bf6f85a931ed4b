"""Who may read an image's files on disk: ``<imagePath>/<id>.squashfs`` and ``<id>.meta``.

The one rule, applied by every writer of imagePath (the gateway's pull, import and expiry,
and the local site's test-image maker ``tools/squash.py``):

* a public image (no user or group ACL): mode 0644, no POSIX ACL;
* a private image: owner root ``rw-``, the owning group and others nothing, plus one POSIX
  ACL entry ``r--`` per allowed uid and gid (mode bits 0640: the group bits show the ACL
  mask).  So root and the image's users and groups can read the files (allowed users run
  the image as a private container, squashfuse as themselves) and nobody else can.

When one image id has several catalog records (a public one beside private ones), the files
are as private as the *most public* record: the union of the records' ACLs, or public as
soon as one record is.  ``union_access`` computes that.

The ACL is written as the ``system.posix_acl_access`` extended attribute (the kernel's
binary format, which setfacl writes too), so no tool is needed; a filesystem without POSIX
ACL support refuses a private image with one line instead of leaving it readable.
"""

from __future__ import annotations

import errno
import os
import struct
from typing import Iterable

from shifter import files
from shifter.errors import ConfigError

XATTR = files.ACL_XATTR
_VERSION = files.ACL_VERSION
_USER, _GROUP, _MASK = files.ACL_USER, files.ACL_GROUP, files.ACL_MASK
_R = 4
PUBLIC_MODE = 0o644
PRIVATE_MODE = 0o640  # group bits = the ACL mask (r--); the owning group's own entry is ---

Access = tuple[tuple[int, ...], tuple[int, ...]]  # (uids, gids); ((), ()) is public


def normalise(users: Iterable[int], groups: Iterable[int]) -> Access:
    return tuple(sorted({int(u) for u in users})), tuple(sorted({int(g) for g in groups}))


def union_access(accesses: Iterable[Access]) -> Access:
    """The access of files shared by records with these ACLs: public if any record is."""
    users: set[int] = set()
    groups: set[int] = set()
    for u, g in accesses:
        if not u and not g:
            return (), ()
        users.update(u)
        groups.update(g)
    return normalise(users, groups)


def mode_for(users: Iterable[int], groups: Iterable[int]) -> int:
    return PRIVATE_MODE if (tuple(users) or tuple(groups)) else PUBLIC_MODE


def acl_xattr(users: Iterable[int], groups: Iterable[int]) -> bytes:
    """The ``system.posix_acl_access`` value of a private image file."""
    users, groups = normalise(users, groups)
    return files.acl_xattr(0o600, users, groups, perm=_R)


def parse_acl_xattr(value: bytes) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(uids, gids) that a ``system.posix_acl_access`` value grants read to (named entries,
    masked)."""
    if len(value) < 4 or (len(value) - 4) % 8 or struct.unpack_from("<I", value)[0] != _VERSION:
        raise ValueError("not a POSIX ACL xattr")
    entries = [struct.unpack_from("<HHI", value, off) for off in range(4, len(value), 8)]
    mask = next((perm for tag, perm, _ in entries if tag == _MASK), 7)
    users = tuple(i for tag, perm, i in entries if tag == _USER and perm & mask & _R)
    groups = tuple(i for tag, perm, i in entries if tag == _GROUP and perm & mask & _R)
    return users, groups


def _refuse(what: str, e: OSError) -> ConfigError:
    if e.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
        return ConfigError(f"can't make {what} private: its filesystem does not support POSIX ACLs",
                           "mount imagePath with ACL support (e.g. the 'acl' mount option)")
    return ConfigError(f"can't set who may read {what}: {e.strerror}")


def set_access(target: int | str, users: Iterable[int], groups: Iterable[int]) -> None:
    """Give file ``target`` (an fd, or a path whose last component is not followed) the mode
    and ACL of an image with this ACL.  Going private, the ACL (and so the mode) is set in one
    step; going public, the ACL is removed before the mode opens up: no moment is more open
    than either end."""
    users, groups = normalise(users, groups)
    what = target if isinstance(target, str) else "an image file"
    nofollow = {} if isinstance(target, int) else {"follow_symlinks": False}
    try:
        if users or groups:
            os.setxattr(target, XATTR, acl_xattr(users, groups), **nofollow)
        else:
            try:
                os.removexattr(target, XATTR, **nofollow)
            except OSError as e:
                if e.errno not in (errno.ENODATA, errno.EOPNOTSUPP, errno.ENOTSUP):
                    raise
            if isinstance(target, int):
                os.fchmod(target, PUBLIC_MODE)
            else:
                os.chmod(target, PUBLIC_MODE, follow_symlinks=False)
    except OSError as e:
        raise _refuse(what, e) from None


def get_access(path: str) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """(permission bits, uids, gids) of an image file as it is on disk (for checks and tests)."""
    mode = os.lstat(path).st_mode & 0o7777
    try:
        users, groups = parse_acl_xattr(os.getxattr(path, XATTR, follow_symlinks=False))
    except OSError as e:
        if e.errno not in (errno.ENODATA, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        users, groups = (), ()
    return mode, users, groups


def apply(paths: Iterable[str], users: Iterable[int], groups: Iterable[int]) -> None:
    """``set_access`` on each existing path (an image's squashfs and .meta)."""
    for path in paths:
        if os.path.lexists(path):
            set_access(path, users, groups)
