"""The plan directory: where a user's private plans (``privplan``) and the rendezvous of
their shared user namespace (``userns``) live on a node.

All of a user's tasks on a node must find the same directory (it is how their private
containers meet in one user namespace), and no other user may be able to take it away
or make the tasks disagree.  A fixed name in a world-writable directory (``/tmp``) fails
both: another user can create it first, or create it, let one task fall back elsewhere
and remove it again.  So the directory is one of two places nobody else can create
anything in, chosen by a rule that depends on nothing another user controls:

1. ``/var/lib/shifter/users/<node>/<uid>``: made by the job prolog (root) on every node
   of a job, owned by the user, 0700, under root-owned directories that are not group-
   or other-writable.  Kept after the job: the user's tasks outside jobs and in their
   other jobs on the node use it too (removing it would split them).
2. ``<home>/.shifter/<node>`` (home: the passwd entry's), made by the user (0700) when 1
   does not exist.

The first candidate that is a real directory (no symlink) owned by the user with no
group/other permission bits (``~/.shifter`` and the root-owned parents: no group/other
write bit) is used; Python creates 2 when 1 is not there.  Each is opened component by
component with O_NOFOLLOW and checked on the open fd (no check-then-use race).

``<node>`` is the node's hostname (gethostname) with every byte outside
``[A-Za-z0-9._-]`` replaced by ``_``, ``_`` prefixed when it is empty or starts with a
dot: several nodes may share /var/lib or the home directory (the local site's nodes
share one disk).

The compiled launcher computes the same (runtime/launcher/plandir.h); tests/data/contracts/plandir.json
holds the vectors both are checked against.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat

from shifter.errors import ConfigError

#: the root-owned base (trusted as it is: the site's own) and the parts below it root
#: makes, then ``<node>/<uid>``
TOP = "/var/lib"
PARTS = ("shifter", "users")
HOME_DIR = ".shifter"
ROOT_UID = 0  # who owns the parents of candidate 1 (unit tests change it)
_ALLOWED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def node_key(hostname: str | bytes) -> str:
    """The node's name as a path component."""
    raw = hostname if isinstance(hostname, bytes) else hostname.encode(errors="surrogateescape")
    key = bytes(b if b in _ALLOWED else ord("_") for b in raw).decode()
    return "_" + key if key == "" or key.startswith(".") else key


def hostname() -> str:
    return node_key(os.uname().nodename)


def candidates(uid: int, node: str, home: str | None) -> list[str]:
    """The plan directories of ``uid`` on ``node``, in order (the rule; pure)."""
    out = ["/".join((TOP, *PARTS, node, str(uid)))]
    if home and home.startswith("/"):
        out.append(f"{home.rstrip('/')}/{HOME_DIR}/{node}")
    return out


def home_of(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_dir
    except KeyError:
        return None


def _openat(dfd: int | None, name: str, create_mode: int | None = None) -> int:
    """Open the directory ``name`` (in ``dfd``) without following a symlink; with
    ``create_mode``, make it first if missing."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, dir_fd=dfd)
    except FileNotFoundError:
        if create_mode is None:
            raise
    try:
        os.mkdir(name, create_mode, dir_fd=dfd)
    except FileExistsError:
        pass
    return os.open(name, flags, dir_fd=dfd)


def _owned(fd: int, uid: int, forbidden: int) -> bool:
    st = os.fstat(fd)
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & forbidden


def _open_parents(node: str, create: bool) -> int:
    """``TOP/shifter/users/<node>``, each part below TOP root's and not group/other
    writable (made 0755 with ``create``, for root)."""
    fd = os.open(TOP, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    for part in (*PARTS, node):
        made = False
        try:
            if create:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                    made = True
                except FileExistsError:
                    pass
            nxt = _openat(fd, part)
        finally:
            os.close(fd)
        fd = nxt
        if not _owned(fd, ROOT_UID, 0o022):
            os.close(fd)
            raise OSError(errno.EPERM, "not a directory of root's that only root can write", part)
        if made:
            os.fchmod(fd, 0o755)  # whatever the prolog's umask: users must pass through
    return fd


def _open_job_dir(uid: int, node: str) -> int | None:
    try:
        parent = _open_parents(node, create=False)
    except OSError:
        return None
    try:
        fd = _openat(parent, str(uid))
    except OSError:
        return None
    finally:
        os.close(parent)
    if _owned(fd, uid, 0o077):
        return fd
    os.close(fd)
    return None


def _open_home_dir(uid: int, home: str, node: str, create: bool) -> int | None:
    mode = 0o700 if create else None
    try:
        hfd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        base = _openat(hfd, HOME_DIR, mode)
    except OSError:
        return None
    finally:
        os.close(hfd)
    try:
        if not _owned(base, uid, 0o022):
            return None
        fd = _openat(base, node, mode)
    except OSError:
        return None
    finally:
        os.close(base)
    if _owned(fd, uid, 0o077):
        return fd
    os.close(fd)
    return None


def open_dir(uid: int, create: bool = False) -> tuple[int, str] | None:
    """The caller's plan directory on this node, opened (O_DIRECTORY), and its path; None
    if there is none that is theirs alone.  ``create``: make the one in the home
    directory when the prolog's does not exist."""
    node = hostname()
    home = home_of(uid)
    paths = candidates(uid, node, home)
    fd = _open_job_dir(uid, node)
    if fd is not None:
        return fd, paths[0]
    if len(paths) > 1:
        fd = _open_home_dir(uid, home, node, create)
        if fd is not None:
            return fd, paths[1]
    return None


def path(uid: int) -> str | None:
    """The path of the plan directory ``uid`` uses on this node now (or would make)."""
    found = open_dir(uid)
    if found is not None:
        os.close(found[0])
        return found[1]
    paths = candidates(uid, hostname(), home_of(uid))
    return paths[1] if len(paths) > 1 else None


def prepare(uid: int, gid: int) -> str:
    """As root (the job prolog): make candidate 1 for ``uid`` on this node, owned by
    ``uid``:``gid``, 0700; its path.  Never follows a symlink; refuses parents that are
    not root's alone (ConfigError: the site must fix them).  An existing one gets its
    owner and mode back (it lies where only root creates)."""
    node = hostname()
    target = candidates(uid, node, None)[0]
    try:
        parent = _open_parents(node, create=True)
    except OSError as e:
        raise ConfigError(f"can't make the plan directory {target}: {e.filename}: {e.strerror}",
                          f"{TOP}/{'/'.join(PARTS)} must be root's directories, not group/other writable") from None
    try:
        try:
            fd = _openat(parent, str(uid), 0o700)
            try:
                os.fchown(fd, uid, gid)
                os.fchmod(fd, 0o700)
            finally:
                os.close(fd)
        except OSError as e:
            raise ConfigError(f"can't make the plan directory {target}: {e.strerror}",
                              "remove what is there (only root can have put it there)") from None
    finally:
        os.close(parent)
    return target
