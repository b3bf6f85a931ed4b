"""The Python executor: runs the operations ``shifter.runtime.builder.planner`` made.

``Executor(...).run(ops)`` performs each operation in order and returns the private-plan
records of what it did (``Executor.done``): the planner's records as they are, and each
operation the executor resolves (``planner.EXPANDED``) replaced by the records it became
(one ``merge`` -> a ``mkdir`` and a bind per image entry, say).  That list is what a
private plan holds and what the compiled executor (runtime/launcher/replay.c) replays.  When an
operation no record can express ran (``planner.PYTHON_ONLY``, a per-node cache, a
state directory given to a user), ``Executor.unsaveable`` says why, and no plan is
written.

Values only the executing process knows are its own: the volume sources opened as the
user (``sources``), the FUSE server's socket, the staging directory (``@``), the loop
device, the job sshd's host key.  The prolog, setupRoot and every first launch use this
executor (Python is already running there); a repeated private launch is replayed by
the compiled one, without Python (docs/dev.md).
"""

from __future__ import annotations

import errno
import os
import stat
import time

from shifter import files
from shifter.errors import ShifterError
from shifter.runtime import devices, etcfiles, jobpath, linux, plan
from shifter.runtime.builder import planner, sitemount

RO, SAFE = planner.RO, planner.SAFE
FAULT_FILE = ".fault"


class FuseExited(ShifterError):
    """The FUSE server of a user's private container died before serving the image."""


class Executor:
    """Runs operations for one container; see the module docstring.

    ``kind``: ``root`` or ``user``; ``base``: the user kind's staging directory (``@``);
    ``sources``: O_PATH fds of the plain volume sources, opened as the user, in the
    order of the ``volumes`` operation; ``share``: a root
    ``loopmount`` may share the image's mount on the node; ``sock``/``prog``: the user
    kind's FUSE server; ``config``, ``gids``, ``uid``/``gid``: the request's;
    ``records``: whether anyone saves the records (the /etc files are read back for
    them)."""

    def __init__(self, kind: str, config, uid: int, gid: int, gids, *, base: str | None = None, sources=(),
                 share: bool = False, sock=None, prog: str | None = None, t0: float | None = None,
                 records: bool = True):
        self.kind, self.config, self.uid, self.gid, self.gids = kind, config, uid, gid, tuple(gids)
        self.base, self.sources, self.share = base, list(sources), share
        self.sock, self.prog = sock, prog
        self.records = records  # False: nobody saves a plan (the prolog): what costs I/O is skipped
        self.t0 = time.perf_counter() if t0 is None else t0
        self.done: list[tuple] = []
        self.unsaveable: str | None = None
        self.state: dict | None = None

    # ------------------------------------------------------------ names
    def real(self, path: str) -> str:
        """A plan path as the process uses it (``@`` -> the staging directory)."""
        if self.base and (path == "@" or path.startswith("@/")):
            return self.base + path[1:]
        return path

    def name(self, path: str) -> str:
        """A real path (or ``/proc/self/fd/N``) as a plan writes it."""
        if path.startswith("/proc/self/fd/"):
            path = os.readlink(path)
        if self.base and (path == self.base or path.startswith(self.base + "/")):
            return "@" + path[len(self.base):]
        return path

    def cannot_save(self, why: str) -> None:
        if self.unsaveable is None:
            self.unsaveable = why

    def _at(self, dir_fd: int, name: str) -> str:
        return self.name(os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), name))

    def _created(self, kind: str, dir_fd: int, name: str) -> None:
        self.done.append((kind, self._at(dir_fd, name), "644" if kind == "touch" else "755"))

    # ------------------------------------------------------------ running
    def run(self, ops) -> list[tuple]:
        for op in ops:
            handler = getattr(self, "op_" + op[0], None)
            if handler is None:
                raise ValueError(f"unknown operation {op[0]!r}")
            handler(*op[1:])
        return self.done

    def one(self, op: tuple) -> None:
        self.run([op])

    # ------------------------------------------------------------ plan records
    def op_mkdir(self, path, mode):
        try:
            os.mkdir(self.real(path), int(mode, 8))
        except FileExistsError:
            pass
        self.done.append(("mkdir", path, mode))

    def op_mkdirp(self, path):
        os.makedirs(self.real(path), mode=0o755, exist_ok=True)
        self.done.append(("mkdirp", path))

    def op_chmod(self, path, mode):
        os.chmod(self.real(path), int(mode, 8))
        self.done.append(("chmod", path, mode))

    def op_symlink(self, target, path):
        os.symlink(target, self.real(path))
        self.done.append(("symlink", target, path))

    def op_touch(self, path, mode):
        os.close(os.open(self.real(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         int(mode, 8)))
        self.done.append(("touch", path, mode))

    def op_file(self, path, mode, content):
        data = content if isinstance(content, bytes) else content.encode()
        fd = os.open(self.real(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, int(mode, 8))
        finally:
            os.close(fd)
        if b"\0" in data:
            self.cannot_save(f"{path} contains a NUL byte")
        self.done.append(("file", path, mode, data))

    def op_mount(self, src, target, fstype, flags, data):
        linux.mount(self.real(src) if src else None, self.real(target), fstype or None, int(flags), data or None)
        self.done.append(("mount", src, target, fstype, flags, data))

    def op_umount(self, path, flags):
        if linux.umount(self.real(path), int(flags)):
            self.done.append(("umount", path, flags))

    def op_bindkeep(self, src, target, flags, rec):
        linux.bind_keep(self.real(src), self.real(target), int(flags), recursive=rec == "1")
        self.done.append(("bindkeep", src, target, flags, rec))

    def op_hardentree(self, path, flags):
        linux.harden_tree(self.real(path), int(flags))
        self.done.append(("hardentree", path, flags))

    def op_treekeep(self, path, flags, below):
        linux.remount_tree_keep(self.real(path), int(flags), None if below == "-1" else int(below))
        self.done.append(("treekeep", path, flags, below))

    def op_loopmount(self, image, target, flags):
        linux.mount_image(image, self.real(target), int(flags), share=self.share)
        self.done.append(("loopmount", image, target, flags))

    def op_fusemount(self, image, target, flags):
        _fuse_mount(image, self.real(target), int(flags), self.prog, self.sock, self.uid, self.gid)
        self.done.append(("fusemount", image, target, flags))

    def op_copytree(self, src, dst):
        import shutil  # start-up: ~3 ms (bz2, lzma), only containers with optUdiImage or a module's copyPath

        shutil.copytree(src, self.real(dst), symlinks=True, dirs_exist_ok=True)
        self.done.append(("copytree", src, dst))

    def op_chdir(self, path):
        os.chdir(self.real(path))
        self.done.append(("chdir", path))

    def op_dropstaging(self, target, src):
        """After a recursive bind of ``src``: the copy of the staging mount it brought along."""
        base, real_src = self.base, self.real(src).rstrip("/")
        if base and (base == real_src or base.startswith(real_src + "/")):
            linux.umount(self.real(target).rstrip("/") + base[len(real_src):])
        self.done.append(("dropstaging", target, src))

    # ------------------------------------------------------------ resolved by the executor
    def op_anchor(self, path):
        if linux.ensure_anchor(self.real(path)):
            self.done += [planner._mount(linux.ANCHOR, path, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC,
                                         "size=16k,mode=755"), planner._prop(path, linux.MS_SHARED)]

    def op_bind(self, src, target, flags):
        self.bind(src, target, int(flags))

    def bind(self, src: str, target: str, flags: int, recursive: bool = False, src_name: str | None = None) -> None:
        """A bind the kind's way (sources and targets: plan paths or /proc/self/fd/N;
        ``src_name``: how the plan names the source, a volume's as the user wrote it).
        Root: bind, then the flags.  User: keep the source's locked flags; recursive when
        the source has locked submounts (the kernel refuses a plain bind then), without
        the staging directory's copy."""
        s, t = src_name or self.name(src), self.name(target)
        if self.kind == "root":
            linux.mount(self.real(src), self.real(target), None, linux.MS_BIND | (linux.MS_REC if recursive else 0))
            self.done.append(planner._mount(s, t, "", linux.MS_BIND | (linux.MS_REC if recursive else 0)))
            if flags:
                self.one(planner._mount("", t, "", linux.MS_REMOUNT | linux.MS_BIND | flags))
            return
        if not recursive:
            try:
                linux.bind_keep(self.real(src), self.real(target), flags)
                self.done.append(("bindkeep", s, t, str(flags), "0"))
                return
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
        linux.bind_keep(self.real(src), self.real(target), flags, recursive=True)
        self.done.append(("bindkeep", s, t, str(flags), "1"))
        self.op_dropstaging(t, s)

    def op_merge(self, image_dir, target, skip, hide):
        """Each entry of ``image_dir`` into the tmpfs dir ``target``: directories and files
        bound read-only, symlinks copied.  An image whose /var or /opt is a symlink gets an
        empty one: the link would resolve on the host.  Entries whose path is in ``hide``
        are left out (a local image: shifter's own anchors); sockets, fifos and device
        nodes of an image too."""
        real = self.real(image_dir)
        if os.path.islink(real):
            return
        try:
            entries = list(os.scandir(real))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.name in skip or os.path.normpath(entry.path) in hide:
                continue
            dst = os.path.join(target, entry.name)
            src = os.path.join(image_dir, entry.name)
            if entry.is_symlink():
                self.op_symlink(os.readlink(entry.path), dst)
            elif entry.is_dir():
                self.op_mkdir(dst, "755")
                self.bind(src, dst, RO | SAFE)
            elif entry.is_file():
                self.op_touch(dst, "644")
                self.bind(src, dst, RO | SAFE)

    def op_etcmount(self, overlay, image_etc, fallback):
        real = self.real(image_etc)
        self.one(overlay if os.path.isdir(real) and not os.path.islink(real) else fallback)

    def op_etc(self, directory, etc_path, uid, username, gids, image_root):
        real = self.real(directory)
        check = None
        if image_root is not None:
            top = self.real(image_root)
            check = lambda shell: _in_image(top, shell)  # noqa: E731
        etcfiles.build(real, etc_path or None, uid, username, list(gids), shell_exists=check)
        if not self.records:
            self.cannot_save("the executor kept no records")
            return
        for name in sorted(os.listdir(real)):
            path = os.path.join(real, name)
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                self.cannot_save(f"{path} is not a regular file")
                continue
            with open(path, "rb") as f:
                data = f.read()
            if b"\0" in data:
                self.cannot_save(f"{path} contains a NUL byte")
            self.done.append(("file", os.path.join(directory, name), f"{st.st_mode & 0o7777:o}", data))

    def op_copyopt(self, src, dst):
        if os.path.isdir(src):
            self.op_copytree(src, dst)

    def op_state(self, path, data, final):
        if data is not None:
            self.state = dict(data)
        if final:
            self.state["complete"] = True
            self.state["setup_seconds"] = round(time.perf_counter() - self.t0, 4)
        real = self.real(path)
        text = planner.state_text(self.state)
        with open(real + ".tmp", "w") as f:
            f.write(text)
        os.chmod(real + ".tmp", 0o600)
        os.replace(real + ".tmp", real)
        self.done.append(("file", path, "600", text.encode()))

    def op_site(self, udi, v, what, image_root, style):
        sitemount.site(self, udi, v, what, image_root, style)

    def op_volumes(self, udi, plain, caches, job_id):
        sitemount.volumes(self, udi, plain, caches, job_id)

    # ------------------------------------------------------------ Python only
    def op_stateacl(self, path, uid):
        """The UDI's state directory (udi.json, the launch plan, the user namespace handle):
        root's, searchable by the job's user alone (POSIX ACL), by no one else."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            files.set_acl(fd, 0o700, uids=(uid,) if uid else (), perm=1)
        finally:
            os.close(fd)
        if uid:
            self.cannot_save("the build gave its state directory to a user")
        self.done.append(("chmod", path, "700"))

    def op_hook(self, script, cwd, what, env):
        from shifter.runtime import proc  # start-up: subprocess (~6 ms), only for sites with hooks

        self.cannot_save(f"the build ran a site hook ({what})")
        proc.run(["/bin/sh", script], what, cwd=cwd, timeout=300,
                 env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env})

    def op_sshd(self, udi, setup):
        from shifter.runtime.builder import sshd  # start-up: ~1 ms, only jobs with their sshd

        self.cannot_save("the build prepared a job's sshd")
        sshd.prepare(udi, setup.bundle, self.uid, self.gid, setup.pubkey, setup.address, list(setup.allowed))
        if setup.state_dir:  # as early as it can run: its start-up (~10 ms of loading
            # libraries) overlaps the rest of the build
            sshd.spawn(setup.state_dir, udi, setup.bundle, self.uid, self.gid, self.gids, setup.username,
                       setup.address, setup.port)

    def op_blankdev(self, udi):
        self.cannot_save("a module has per-GPU devices (each step covers those not its own)")
        devices.make_blank(self.real(udi))

    def op_launchplan(self, udi, launch):
        self.cannot_save("the build wrote a launch plan")
        plan.write(udi, launch)

    def op_userns(self, path, uid, gid):
        self.cannot_save("the build kept a user namespace")
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o444))
        linux.persist_user_ns(uid, gid, path)

    def op_fault(self, name):
        self.cannot_save("a prolog's fault point")
        fault_point(self.config, name)


def _in_image(image_root: str, path: str) -> bool:
    """Whether ``path`` (an absolute path in the image, e.g. a login shell) is there: a
    symbolic link counts (the image's /bin/sh often is one); nothing is followed."""
    if not path.startswith("/") or "\0" in path:
        return False
    try:
        os.lstat(os.path.join(image_root, path.lstrip("/")))
        return True
    except (OSError, ValueError):
        return False


def _fuse_mount(image: str, target: str, flags: int, prog: str, sock, uid: int, gid: int) -> None:
    """The user kind's image: the node's mount of it shared if there is one (the helper,
    given nothing, exits), else a FUSE mount whose /dev/fuse fd goes to the helper."""
    import socket  # start-up: its enums (~2 ms), only a user's private container (never the prolog)

    hint = "the site must allow FUSE, or use a container that setupRoot prepares as root"
    try:
        fuse = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise ShifterError(f"can't build a private container: can't open /dev/fuse: {e.strerror}", hint) from None
    if linux.share_image(image, target, flags):
        os.close(fuse)
        sock.close()
        return
    try:
        linux.mount(image, target, "fuse." + os.path.basename(prog), flags,
                    f"fd={fuse},rootmode=40000,user_id={uid},group_id={gid},default_permissions")
        socket.send_fds(sock, [b"fd"], [fuse])
    finally:
        os.close(fuse)
        sock.close()
    try:
        os.stat(target)  # answers once squashfuse serves the mount
    except OSError as e:
        if e.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.ENODEV):
            raise FuseExited(f"can't mount the image {image}: {os.path.basename(prog)} failed") from None
        raise


def fault_point(config, name: str) -> None:
    """The prolog's fault-injection point, for tests: if the node's jobs anchor holds a
    file ``.fault`` (root's: only root can write there) whose text is ``kill-NAME``, the
    process kills itself here with SIGKILL, as a prolog killed halfway (by Slurm's
    PrologTimeout, say) would be.  One failed stat otherwise."""
    path = os.path.join(jobpath.jobs_root(config.udiMount), FAULT_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        wanted = os.fstat(fd).st_uid == 0 and os.read(fd, 64).decode(errors="replace").strip() == f"kill-{name}"
    finally:
        os.close(fd)
    if wanted:
        import signal  # start-up: its enums (~1 ms), only when the tests' fault file is there

        os.kill(os.getpid(), signal.SIGKILL)

