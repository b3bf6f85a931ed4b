"""The only module that makes raw Linux system calls (libc through ctypes).

Python 3.11 has no ``os.unshare``/``os.setns`` and no mount API; this module wraps
mount, umount2, unshare, setns, prctl and the loop-device ioctls.  Every failure raises
``OSError`` whose message names the call and the path, so callers can turn it into a
one-line user-facing error.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import struct
import time

from shifter import exit_codes

_libc = ctypes.CDLL("libc.so.6", use_errno=True)  # find_library would fork ldconfig
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)

# mount(2) flags
LOOP_RETRY_SECONDS = 10.0  # see loop_device

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

MNT_FORCE = 1
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000

PR_SET_NO_NEW_PRIVS = 38

# loop devices
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
_LO_NAME_SIZE = 64
_LO_KEY_SIZE = 32
# struct loop_config { u32 fd; u32 block_size; struct loop_info64 info; u64 reserved[8]; }
_LOOP_INFO64 = f"=QQQQQIIII{_LO_NAME_SIZE}s{_LO_NAME_SIZE}s{_LO_KEY_SIZE}s2Q"
_LOOP_CONFIG = "=II" + _LOOP_INFO64[1:] + "8Q"


def _raise(call: str, target: str | None = None):
    err = ctypes.get_errno()
    msg = f"{call}: {os.strerror(err)}"
    raise OSError(err, msg, target)


def _b(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def mount(source: str | None, target: str, fstype: str | None = None, flags: int = 0,
          data: str | None = None) -> None:
    if _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)) != 0:
        _raise("mount", target)


def mounted_path(target: str) -> str:
    """The path of what was just mounted on ``target``.

    A target given as ``/proc/self/fd/N`` (an fd resolved without following symlinks)
    still names the directory *under* the new mount afterwards; its path string names
    the new mount's root.
    """
    return os.readlink(target) if target.startswith("/proc/self/fd/") else target


def bind(source: str, target: str, flags: int = 0, recursive: bool = False) -> None:
    """Bind ``source`` onto ``target``, then apply per-mount ``flags`` (ro, nosuid, ...)."""
    mount(source, target, None, MS_BIND | (MS_REC if recursive else 0))
    if flags:
        mount(None, mounted_path(target), None, MS_REMOUNT | MS_BIND | flags)


def remount(target: str, flags: int) -> None:
    mount(None, target, None, MS_REMOUNT | MS_BIND | flags)


def make_propagation(target: str, kind: int, recursive: bool = False) -> None:
    mount(None, mounted_path(target), None, kind | (MS_REC if recursive else 0))


def umount(target: str, flags: int = MNT_DETACH | UMOUNT_NOFOLLOW) -> bool:
    """Unmount; True if something was unmounted, False if nothing was mounted there."""
    if _libc.umount2(_b(target), flags) != 0:
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return False
        _raise("umount", target)
    return True


def unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        _raise("unshare")


def setns(fd: int, nstype: int = 0) -> None:
    if _libc.setns(fd, nstype) != 0:
        _raise("setns")


def map_self(uid: int, gid: int, pid: int | str = "self") -> None:
    """Map ``uid``/``gid`` to themselves in the (new) user namespace of ``pid``, with
    setgroups denied (what an unprivileged user may write)."""
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(text)


def persist_user_ns(uid: int, gid: int, target: str) -> None:
    """Create a user namespace owned by ``uid`` mapping ``uid``/``gid`` to themselves
    (setgroups denied), and keep it alive by binding its nsfs file onto ``target`` (an
    existing empty file).  Processes of that user join it with setns() — as its owner they
    may — so that every task of a job on a node shares one namespace: same-user tasks in
    sibling namespaces can't ptrace or process_vm_readv each other (MPI's intra-node
    transports need that).  Unmounting ``target`` releases it."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(ready_r)
            os.close(done_w)
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            unshare(CLONE_NEWUSER)
            os.write(ready_w, b"1")
            os.read(done_r, 1)  # stay until the parent has bound the namespace
        finally:  # a forked child: it must never return into the caller's code
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise OSError(errno.EPERM, "can't create the job's user namespace (the helper process failed)")
        map_self(uid, gid, pid)
        mount(f"/proc/{pid}/ns/user", target, None, MS_BIND)
    finally:
        os.close(ready_r)
        os.close(done_w)
        os.waitpid(pid, 0)


PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent (``parent``) goes; exit now if it went already."""
    import signal  # start-up: its enums (~1 ms); setupRoot and the epilog import linux, never call this

    if _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        _raise("prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:  # called in a forked child (preexec_fn, the builder): nobody to return to
        os._exit(exit_codes.LAUNCH)


def no_new_privs() -> None:
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        _raise("prctl(PR_SET_NO_NEW_PRIVS)")


@contextlib.contextmanager
def loop_device(backing_fd: int, read_only: bool = True, autoclear: bool = True):
    """Attach ``backing_fd`` to a free loop device in one ioctl; yields ``/dev/loopN``.

    With autoclear the device frees itself at its last close: mount it inside the
    ``with`` block (the mount then holds it, and unmounting frees it); if anything fails
    before, leaving the block frees it, so a crash leaks nothing.
    """
    flags = (LO_FLAGS_READ_ONLY if read_only else 0) | (LO_FLAGS_AUTOCLEAR if autoclear else 0)
    config = struct.pack(_LOOP_CONFIG, backing_fd, 0, 0, 0, 0, 0, 0, 0, 0, 0, flags,
                         b"", b"", b"", 0, 0, *([0] * 8))
    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    fd = dev = None
    try:
        # Another process may configure the free device first (EBUSY): every racer got the
        # same number, and one wins per round.  A node's prologs (64 of them at once on the
        # local site, which shares one kernel) each need a device: retry with a random
        # pause, for up to LOOP_RETRY_SECONDS.
        deadline = time.monotonic() + LOOP_RETRY_SECONDS
        pause = 0.0005
        while True:
            number = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            dev = f"/dev/loop{number}"
            fd = os.open(dev, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
            try:
                fcntl.ioctl(fd, LOOP_CONFIGURE, config)
                break
            except OSError as e:
                os.close(fd)
                fd = None
                if e.errno != errno.EBUSY:
                    raise OSError(e.errno, f"LOOP_CONFIGURE {dev}: {e.strerror}") from None
                if time.monotonic() > deadline:
                    raise OSError(errno.EBUSY, f"no free loop device after {LOOP_RETRY_SECONDS:g} s of "
                                               "other processes taking each one first") from None
                time.sleep(pause * int.from_bytes(os.urandom(2), "little") / 65536)
                pause = min(pause * 2, 0.02)
    finally:
        os.close(ctl)
    try:
        yield dev
    finally:
        os.close(fd)


def _loop_backed_by(dev: int, real: str) -> bool:
    try:
        with open(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/loop/backing_file", "rb") as f:
            return f.read().rstrip(b"\n") == os.fsencode(real)
    except OSError:
        return False


def share_image(image_path: str, target: str, flags: int) -> bool:
    """Bind a squashfs mount of ``image_path`` that already exists on the node (the
    prepared UDI's, say: a loop device backed by the image, mounted at the image's root)
    on ``target``, with ``flags`` added (``bind_keep``): the container shares its
    superblock and warm caches.  Images are named by content, so the same file is the
    same image.  False if there is none (nothing changed).  After the bind, which holds
    the device, the device and its backing file are checked again."""
    real = os.path.realpath(image_path)
    with open("/proc/self/mountinfo", "rb") as f:
        lines = f.read().splitlines()
    for line in lines:
        fields = line.split()
        sep = fields.index(b"-")
        if fields[sep + 1] != b"squashfs" or fields[3] != b"/":
            continue
        major, minor = (int(x) for x in fields[2].split(b":"))
        dev = os.makedev(major, minor)
        if not _loop_backed_by(dev, real):
            continue
        try:
            bind_keep(_unescape(fields[4]), target, flags)
        except OSError:
            continue
        if os.stat(target).st_dev == dev and _loop_backed_by(dev, real):
            return True
        umount(target)
    return False


def mount_image(image_path: str, target: str, flags: int, share: bool = False) -> None:
    """Mount the squashfs ``image_path`` on ``target`` through a loop device (read-only,
    autoclear: unmounting frees it); with ``share``, the image's mount on the node if
    there is one (``share_image``)."""
    if share and share_image(image_path, target, flags):
        return
    fd = os.open(image_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with loop_device(fd, read_only=True) as dev:
            mount(dev, target, "squashfs", flags)
    finally:
        os.close(fd)


def mountinfo(options: bool = False) -> list[tuple]:
    """(mount point, fstype, source[, per-mount options]) of every mount in this
    mount namespace, in mount order."""
    out = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            sep = fields.index(b"-")
            row = (_unescape(fields[4]), fields[sep + 1].decode(), _unescape(fields[sep + 2]))
            out.append(row + (fields[5].decode().split(","),) if options else row)
    return out


def peer_groups() -> list[tuple[str, int | None]]:
    """(mount point, shared peer group id or None) of every mount, in mount order."""
    out = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            group = None
            for tag in fields[6:fields.index(b"-")]:
                if tag.startswith(b"shared:"):
                    group = int(tag[7:])
            out.append((_unescape(fields[4]), group))
    return out


def harden_tree(path: str, flags: int) -> None:
    """Add ``flags`` (e.g. nosuid) to every mount below ``path``, keeping read-only ones
    read-only: a remount of an rbind changes only its top mount."""
    prefix = path.rstrip("/") + "/"
    for mp, _, _, opts in mountinfo(options=True):
        if mp.startswith(prefix):
            mount(None, mp, None, MS_REMOUNT | MS_BIND | flags | (MS_RDONLY if "ro" in opts else 0))


def _unescape(field: bytes) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    if b"\\" in field:
        field = bytes(field.decode("latin-1").encode("latin-1").decode("unicode_escape"), "latin-1")
    return os.fsdecode(field)


#: source name of the anchor mounts (see ensure_anchor)
ANCHOR = "shifter-anchor"


def mounts_under(path: str, anchors: bool = False) -> list[str]:
    """Mount points at or below ``path``, deepest (and latest) first; a stacked mount
    point appears once per mount.  Anchors are left out unless asked for."""
    prefix = path.rstrip("/") + "/"
    found = [mp for mp, _, source in mountinfo()
             if (mp == path or mp.startswith(prefix)) and (anchors or source != ANCHOR)]
    return list(reversed(found))


def _anchored(path: str) -> bool:
    return any(mp == path and source == ANCHOR for mp, _, source in mountinfo())


def ensure_anchor(path: str, mode: int = 0o755) -> bool:
    """A tiny shared tmpfs at ``path`` for a UDI (or its image) to be mounted on; True
    if it was mounted now.

    Unmounting a mount propagates to the copies other mount namespaces hold only through
    its parent's peers.  With the host's / private, namespaces created after setup (a
    job's ``unshare -m``, a container runtime, a private launcher) would keep the UDI's
    top mounts, and the image's loop device, after teardown.  Mounted on a shared anchor,
    teardown reaches them.  The anchor stays (it holds nothing).

    Concurrent callers (the prologs of jobs starting together on a fresh node) take an
    exclusive flock on the parent directory: two anchors stacked at ``path`` would hide
    the job directories made in the first one."""
    if _anchored(path):
        return False
    fd = os.open(os.path.dirname(path.rstrip("/")) or "/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _anchored(path):
            return False
        mount(ANCHOR, path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"size=16k,mode={mode:o}")
        make_propagation(path, MS_SHARED)
        return True
    finally:
        os.close(fd)  # releases the lock


# ------------------------------------------------------------ unprivileged (user namespace) mounts
# In a mount namespace owned by a user namespace, the flags a mount copied from the host
# already has (ro, nosuid, nodev, noexec, atime) are locked: a remount must keep them all.
_ST_NOATIME, _ST_RELATIME = 1024, 4096  # statvfs f_flag bits that differ from MS_*
_OPT_FLAGS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
              "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}


def mount_flags(path: str) -> int:
    """The per-mount flags of the mount at ``path`` (statvfs) as MS_* bits, atime included."""
    f = os.statvfs(path).f_flag
    flags = f & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NODIRATIME)
    if f & _ST_NOATIME:
        flags |= MS_NOATIME
    elif not f & _ST_RELATIME:
        flags |= MS_STRICTATIME
    return flags


def _opts_flags(opts: list[str]) -> int:
    flags = 0
    for opt in opts:
        flags |= _OPT_FLAGS.get(opt, 0)
    if not flags & (MS_NOATIME | MS_RELATIME):
        flags |= MS_STRICTATIME
    return flags


def bind_keep(source: str, target: str, flags: int = 0, recursive: bool = False) -> None:
    """``bind``, then add ``flags`` to the flags the new mount already has (what a user
    namespace may do); with ``recursive``, every submount gets them too."""
    mount(source, target, None, MS_BIND | (MS_REC if recursive else 0))
    path = mounted_path(target)
    if recursive:
        remount_tree_keep(path, flags)
    elif flags:
        mount(None, path, None, MS_REMOUNT | MS_BIND | flags | mount_flags(path))


def remount_tree_keep(path: str, flags: int, below: int | None = None) -> None:
    """Add ``flags`` to the mount at ``path`` and ``below`` (default: ``flags``) to every
    mount under it, keeping each one's own flags (read from mountinfo, not statvfs,
    which would trigger automounts)."""
    _remount_tree_keep(path, flags, below)


def _remount_tree_keep(path: str, flags: int, below: int | None) -> None:
    prefix = path.rstrip("/") + "/"
    top: dict[str, list[str]] = {}
    for mp, _, _, opts in mountinfo(options=True):
        if mp == path or mp.startswith(prefix):
            top[mp] = opts  # later entries are stacked over earlier ones: keep the top
    for mp, opts in top.items():
        add = flags if mp == path or below is None else below
        try:
            mount(None, mp, None, MS_REMOUNT | MS_BIND | add | _opts_flags(opts))
        except PermissionError:
            # a submount below a directory the caller can't search (another user's
            # private dir under /tmp, say): out of the caller's reach anyway
            if mp == path or os.access(os.path.dirname(mp), os.X_OK):
                raise
