"""One user namespace for all of a user's private containers on a node.

Two processes of the same user in *sibling* user namespaces can't ptrace or
``process_vm_readv`` each other, nor open each other's ``/proc/PID/fd`` (the kernel wants
the same user namespace, or CAP_SYS_PTRACE in the other's): MPI ranks in separate
private containers then fail in shared-memory set-up (UCX/CMA).  So a private user
container joins the user namespace the user's other private containers on the node live
in, and makes only its own mount namespace there; the first one creates it.

The rendezvous is ``<plan directory>/userns.<gid>`` (the caller's plan directory on the
node, see ``plandir``: every task of the user on the node finds the same one), holding
the pid of a process in that namespace, under an exclusive flock while a launcher joins
or creates.  A namespace is joined only if it is
owned by the caller (NS_GET_OWNER_UID) and maps exactly ``uid uid 1`` / ``gid gid 1``
with setgroups denied: what a new one would be.  The namespace lives as long as one of
its processes does; nothing is kept for it.  The compiled launcher (replay.c) does the
same.
"""

from __future__ import annotations

import fcntl
import os
import stat
import struct

from shifter.runtime import linux, plandir

NS_GET_OWNER_UID = 0xB704  # _IO(0xb7, 0x4)


def registry(uid: int, gid: int) -> str | None:
    directory = plandir.path(uid)
    return None if directory is None else os.path.join(directory, f"userns.{gid}")


def _open_registry(uid: int, gid: int) -> int | None:
    found = plandir.open_dir(uid, create=True)
    if found is None:
        return None
    dfd = found[0]
    try:
        fd = os.open(f"userns.{gid}", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
    except OSError:
        return None
    finally:
        os.close(dfd)
    st = os.fstat(fd)
    if st.st_uid != uid or not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd


def _read(dirfd: int, name: str) -> str:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        return os.read(fd, 4096).decode(errors="replace")
    finally:
        os.close(fd)


def _join(fd: int, uid: int, gid: int) -> bool:
    """setns() into the namespace of the pid in the registry, if it is the right one."""
    pid = os.pread(fd, 32, 0).strip()
    if not pid.isdigit():
        return False
    try:
        proc = os.open(f"/proc/{int(pid)}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        # everything through the /proc/PID fd: a recycled pid fails instead of lying
        nsfd = os.open("ns/user", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
        try:
            owner = struct.unpack("I", fcntl.ioctl(nsfd, NS_GET_OWNER_UID, b"\0\0\0\0"))[0]
            if owner != uid or _read(proc, "setgroups").strip() != "deny":
                return False
            if _read(proc, "uid_map").split() != [str(uid), str(uid), "1"]:
                return False
            if _read(proc, "gid_map").split() != [str(gid), str(gid), "1"]:
                return False
            linux.setns(nsfd, linux.CLONE_NEWUSER)
            return True
        finally:
            os.close(nsfd)
    except OSError:
        return False
    finally:
        os.close(proc)


def enter(uid: int, gid: int) -> bool:
    """Put the caller in the user's shared user namespace on this node (joined, or
    created: the caller mapped to themselves, setgroups denied) and in a new mount
    namespace of its own.  True if an existing one was joined.  Raises OSError when no
    user namespace can be made."""
    fd = _open_registry(uid, gid)
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _join(fd, uid, gid):
                linux.unshare(linux.CLONE_NEWNS)
                return True
        linux.unshare(linux.CLONE_NEWUSER | linux.CLONE_NEWNS)
        linux.map_self(uid, gid)
        if fd is not None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        return False
    finally:
        if fd is not None:
            os.close(fd)  # and with it the lock
