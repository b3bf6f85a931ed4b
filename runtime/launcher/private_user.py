"""A private container for one process of an ordinary user: no root, no setuid.

``shifter`` comes here when no UDI prepared by setupRoot matches the request and the
caller is not root.  Three processes::

    launcher (the caller, stays in the host's namespaces)
     |- squashfuse helper   own session, host namespaces; waits for the /dev/fuse fd,
     |                      then execs ``squashfuse -f IMAGE /dev/fd/N``
     '- builder -> CMD      unshare(user+mount ns), maps the user to themselves, mounts,
                            chroot, no_new_privs, userhooks, exec CMD

The builder, in the user's shared user namespace on the node (``userns.enter``: joined,
or created with uid_map ``U U 1``, gid_map ``G G 1``, setgroups denied; MPI ranks in
separate private containers can then reach each other's memory) and a new mount
namespace (``/`` made rprivate), holds CAP_SYS_ADMIN over them until it execs.  The
builder and the helper die with the launcher (PR_SET_PDEATHSIG).  It mounts:

- a staging tmpfs on a fresh empty directory ``$TMPDIR/shifter.<uid>.<pid>.<random>``
  (the only thing ever created on the host; the launcher removes it at the end);
- the image: it opens /dev/fuse *in the new user namespace* (the kernel refuses a fd
  opened outside it), mounts ``fuse.squashfuse`` read-only, nosuid, nodev with
  ``fd=N,rootmode=40000,user_id=U,group_id=G,default_permissions`` and hands the fd to
  the helper over a socket.  ``default_permissions`` makes the kernel enforce the image's
  modes; the image's files belong to uid 0, which is not mapped in the namespace (they
  show as 65534), so a 0600 root file stays unreadable.  The helper lives outside the
  namespace: it does not keep it alive, and it exits when the FUSE mount goes away.
  When the node already has the image mounted (the prepared UDI's), that squashfs mount
  is bound instead (``linux.share_image``; the kernel enforces the modes there too) and
  the helper, given nothing, exits;
- the container root (a tmpfs) laid out by ``shifter.runtime.builder.planner`` (the user kind)
  and built by ``shifter.runtime.builder.execute``, as every container is:
  image entries bound read-only, /etc a read-only overlay of the site's files over the
  image's, /var and /opt directories with the image's entries (/var/tmp 1777), the
  host's /dev (rbind, nosuid), /proc and /sys (rbind, nosuid,nodev,noexec), /tmp (bind),
  siteFs and module siteFs binds, /opt/udiImage and module copyPath copies, the user's
  volumes (sources opened as the user), then the root read-only unless
  mountUdiRootWritable=1.  In a user namespace the flags a host mount already has
  (ro, nosuid, nodev, noexec, atime) are locked: every remount here keeps them and only
  adds; a bind whose source has locked submounts is made recursive (the kernel refuses
  a plain one), read-only all the way down when asked.

Then it chroots, sets no_new_privs, changes to ``cwd`` (``/`` with a warning if the
container lacks it), runs each userhook (``/bin/sh HOOK`` in the container, as the user)
and execs the command: 127 command not found, 126 not executable.  Its exec as a non-zero
uid clears every capability.

The launcher forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to the
command, except those the terminal sent (it already sent them to the whole foreground
process group, the command included) and those Slurm's step daemon sent (it signals
every process of the step).  squashfuse ignores them all (``HELPER_IGNORED``): a command
that handles SIGUSR1 or SIGTERM keeps its image.  When the command exits, its namespaces
die with it: the kernel unmounts everything, the FUSE connection ends and squashfuse
exits; the launcher reaps it (killing it if processes the command left behind still hold
the namespace after 1 s), removes the staging directory and returns the status (128+N for a
signal N).  An error while building is reported by the builder and raised here; the
namespace, and with it every mount, is already gone.

Not available without root, refused with one line and a hint: per-node caches
(``perNodeCache=``) and modules with a ``roothook``.  The site's ``sitePreMountHook``
and ``sitePostMountHook`` are not run (they are root's hooks); ``rootfsType`` is ignored
(tmpfs); per-map ``slave`` propagation has no effect (the namespace is private).
"""

from __future__ import annotations

import os
import signal
import socket
import time

from shifter import exit_codes
from shifter.errors import CommandNotRun, ConfigError, ShifterError, UsageError
from shifter.runtime.builder import destinations, execute, planner
from shifter.runtime import devices, etcfiles, linux, volumes
from shifter.runtime.launcher import entry, userns
from shifter.runtime.modules import select_modules

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
#: FUSE servers, in order of preference (the low-level one is faster)
SQUASHFUSE = ("squashfuse_ll", "squashfuse")
HELPER_GRACE = 1.0  # seconds squashfuse gets to exit by itself after the command
#: hints for what a private container can't do: only setupRoot, run as root, builds a
#: container with it (nothing else in this code path would, so promise nothing else)
ROOT_HINT = "only a container that setupRoot builds as root can have it: leave it out of this request"
_OR_PREPARED = "or use a container that setupRoot prepares as root"
_SI_KERNEL = 0x80  # si_code of signals the kernel (e.g. a terminal's ^C) generated
_SI_USER, _SI_QUEUE = 0, -1  # kill(2), sigqueue(3)
#: what the image's server ignores: it must outlive every signal the command may get and
#: handle (Slurm signals all of a step's processes); without it the image is SIGBUS
HELPER_IGNORED = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2,
                  signal.SIGPIPE, signal.SIGALRM, signal.SIGVTALRM, signal.SIGPROF, signal.SIGXCPU, signal.SIGXFSZ)


def run(config, image_path: str, image_meta, request, argv: list[str], env: dict[str, str], cwd: str,
        userhooks: tuple[str, ...] = (), save_plan=None, cover=(), *, warn) -> int:
    """Build a private UDI for the calling (non-root) user in a new user+mount namespace,
    run argv inside it as the user, tear everything down, return the exit status
    (128+N if killed by signal N).

    Raises ``ShifterError`` (``UsageError``, ``ConfigError``) with a one-line message
    when the container can't be built; nothing is left behind then either.  Refused
    (they need root): per-node caches and modules with a roothook.  The site's
    sitePreMountHook and sitePostMountHook are not run.  See the module docstring.

    ``save_plan(executor, root, fuse)``: called in the builder once the container is
    built, with the executor that built it (its records: see ``shifter.runtime.privplan``).
    ``cover``: device files covered before the command runs (``shifter.runtime.devices``).
    ``warn(line)``: says what went wrong but does not stop the command (the caller prints).
    """
    uid, gid = os.getuid(), os.getgid()
    _check(config, image_path, image_meta, request, argv, uid, gid)
    modules = _private_modules(config, request)
    gids = tuple(request.gids) or tuple(etcfiles.user_groups(request.username, gid, config.maxGroupCount))
    local = request.image.type == "local"
    prog = None if local else find_squashfuse(config)

    base = _make_base(uid)
    launcher = os.getpid()
    waitset = (*FORWARDED, signal.SIGCHLD)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, waitset)
    old_chld = _default_sigchld()
    helper = builder = log = None
    ours: list[int] = []  # fds to close in the launcher
    sock = err = None
    status = None
    message = b""
    try:
        if prog:
            log = os.memfd_create("shifter-squashfuse-stderr", os.MFD_CLOEXEC)
            ours.append(log)
            sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            helper = os.fork()
            if helper == 0:  # pragma: no cover - child
                _helper_main(prog, image_path, sock, log, old_mask, launcher)
        err = os.pipe()
        ours += list(err)
        builder = os.fork()
        if builder == 0:  # pragma: no cover - child
            _builder_main(config, image_path, request, modules, gids, argv, env, cwd, userhooks, base,
                          prog, sock, err, old_mask, save_plan, launcher, cover, warn)
        os.close(err[1])
        ours.remove(err[1])
        if sock:
            for s in sock:
                s.close()
            sock = None
        status = _supervise(builder, waitset)
        message = _read_all(err[0])
        if message.startswith(_FUSE_EXITED.encode() + b"\0") and log is not None:
            message += b"\0" + _tail(log)
    finally:
        if sock:
            for s in sock:
                s.close()
        for fd in ours:
            os.close(fd)
        if builder is not None and status is None:  # interrupted here: don't leave it running
            _kill_and_reap(builder)
        if helper is not None:
            _stop_helper(helper)
        _remove_base(base, warn)
        while signal.sigtimedwait(FORWARDED, 0) is not None:  # arrived after the command ended
            pass
        if old_chld is not None:
            signal.signal(signal.SIGCHLD, old_chld)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    if message:
        raise _decode_error(message)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _private_modules(config, request):
    """The request's modules; one with a roothook is refused (it needs root)."""
    modules = select_modules(config, request.modules)
    for module in modules:
        if module.roothook:
            raise UsageError(f"can't use module {module.name!r} in a private container: its roothook needs root",
                             ROOT_HINT)
    return modules


# --------------------------------------------------------------------------- launcher side
def _check(config, image_path, image_meta, request, argv, uid, gid) -> None:
    if uid == 0:
        raise ShifterError("can't build a user's private container as root",
                           "root builds private containers with shifter.runtime.builder.udi.setup_root")
    if (request.uid, request.gid) != (uid, gid):
        raise ShifterError(f"can't build a private container for uid {request.uid} as uid {uid}")
    if not argv:
        raise UsageError("no command to run")
    gids = set(request.gids or os.getgroups()) | {gid}
    if not image_meta.allows(uid, gids):
        raise UsageError(f"can't use image {request.image}: it is private and uid {uid} is not allowed",
                         "ask the image's owner to add you (shifterimg pull --user/--group)")
    for v in request.volumes:
        if v.per_node_cache is not None:
            raise UsageError(f"can't create the per-node cache at {v.destination} in a private container: "
                             "it needs root", ROOT_HINT + " (a directory you own can stand in: -V DIR:"
                             f"{v.destination})")
    volumes.destination_conflicts(request.volumes)
    if request.image.type == "local":
        if not os.path.isdir(image_path):
            raise UsageError(f"can't use image {request.image}: {image_path} is not a directory")
        return
    if not os.access(image_path, os.R_OK):
        raise UsageError(f"can't use image {request.image}: {image_path} is not readable (as uid {uid})",
                         "check the permissions of imagePath, or ask the site")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise ShifterError(f"can't build a private container: /dev/fuse is not usable (as uid {uid})",
                           "the site must allow FUSE (/dev/fuse mode 0666), " + _OR_PREPARED)


def find_squashfuse(config) -> str:
    """Path of the FUSE server for squashfs images (see ``SQUASHFUSE``)."""
    dirs = [os.path.join(config.udiRootPath, "bin"), "/usr/bin", "/usr/local/bin", "/bin"]
    for name in SQUASHFUSE:
        for d in dirs:
            path = os.path.join(d, name)
            if os.access(path, os.X_OK):
                return path
    raise ConfigError("can't build a private container: squashfuse is not installed",
                      "install it (apt-get install squashfuse), " + _OR_PREPARED)


def _make_base(uid: int) -> str:
    tmp = os.environ.get("TMPDIR") or "/tmp"
    if not tmp.startswith("/") or not os.path.isdir(tmp):
        tmp = "/tmp"
    _sweep(tmp, uid)
    base = os.path.join(tmp, f"shifter.{uid}.{os.getpid()}.{os.urandom(4).hex()}")
    try:
        os.mkdir(base, 0o700)
    except OSError as e:
        raise ShifterError(f"can't build a private container: can't create {base}: {e.strerror}",
                           "set TMPDIR to a directory you can write") from None
    return base


def _sweep(tmp: str, uid: int) -> None:
    """Remove the caller's staging directories left by launchers that were killed
    (SIGKILL at the end of a job, say): empty, and their launcher's pid is gone."""
    prefix = f"shifter.{uid}."
    try:
        names = [n for n in os.listdir(tmp) if n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        pid = name[len(prefix):].split(".")[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive (or another user's pid: EPERM below)
        except ProcessLookupError:
            pass
        except OSError:
            continue
        try:
            os.rmdir(os.path.join(tmp, name))  # only if empty; only the caller's (sticky /tmp)
        except OSError:
            pass


def _remove_base(base: str, warn) -> None:
    try:
        os.rmdir(base)
    except FileNotFoundError:
        pass
    except OSError as e:
        warn(f"can't remove {base}: {e.strerror}")


def _default_sigchld():
    """SIGCHLD must not be ignored (children would reap themselves); returns what to restore."""
    try:
        old = signal.getsignal(signal.SIGCHLD)
        if old == signal.SIG_IGN:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            return old
    except ValueError:  # not the main thread: leave it
        pass
    return None


def _supervise(builder: int, waitset) -> int:
    """Forward signals to the builder (later: the command) until it exits; its wait status."""
    while True:
        info = signal.sigwaitinfo(waitset)
        if info.si_signo == signal.SIGCHLD:
            pid, status = os.waitpid(builder, os.WNOHANG)
            if pid:
                return status
        elif info.si_code != _SI_KERNEL and not _from_step_daemon(info):
            # not the terminal's (it signalled the command too), not Slurm's (likewise)
            try:
                os.kill(builder, info.si_signo)
            except ProcessLookupError:
                pass


def _from_step_daemon(info) -> bool:
    """Sent by Slurm's step daemon, which signals every process of the step (the
    command included): forwarding it would deliver it twice."""
    if info.si_code not in (_SI_USER, _SI_QUEUE):
        return False
    try:
        with open(f"/proc/{info.si_pid}/comm", "rb") as f:
            return f.read() == b"slurmstepd\n"
    except OSError:
        return False


def _wait_child(pid: int, timeout: float | None):
    """Reap ``pid`` within ``timeout`` seconds (None: wait); its status, or None."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if deadline is None:
            signal.sigtimedwait([signal.SIGCHLD], 1.0)
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        signal.sigtimedwait([signal.SIGCHLD], left)


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        _wait_child(pid, None)
    except ChildProcessError:
        pass


def _stop_helper(helper: int) -> None:
    """squashfuse exits by itself when the namespace (and so the FUSE mount) is gone;
    if processes the command left behind keep it alive, stop it: they lose the image."""
    try:
        if _wait_child(helper, HELPER_GRACE) is not None:
            return
    except ChildProcessError:
        return
    _kill_and_reap(helper)  # it ignores the other signals (_helper_main)


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


_KINDS = {"UsageError": UsageError, "ConfigError": ConfigError}
_NOT_RUN = {exit_codes.NOT_FOUND: "NotFound", exit_codes.NOT_EXECUTABLE: "NotExecutable"}
_FUSE_EXITED = "FuseExited"  # the launcher adds squashfuse's last words


class _FuseExited(ShifterError):
    pass


def _decode_error(message: bytes) -> ShifterError:
    kind, text, hint, *more = message.decode(errors="replace").split("\0") + ["", ""]
    if kind == _FUSE_EXITED:
        text += ": " + (more[0] or "no error output")
    if kind in _NOT_RUN.values():
        return CommandNotRun(text, hint or None, missing=kind == _NOT_RUN[exit_codes.NOT_FOUND])
    return _KINDS.get(kind, ShifterError)(text, hint or None)


def _tail(fd: int) -> bytes:
    """The last line squashfuse wrote to its stderr (a memfd)."""
    data = os.pread(fd, 65536, max(0, os.fstat(fd).st_size - 65536))
    lines = [ln.strip() for ln in data.splitlines() if ln.strip()]
    return lines[-1].replace(b"\0", b" ") if lines else b""


# --------------------------------------------------------------------------- children
def _child_signals(old_mask) -> None:
    """Python's handlers and ignored SIGPIPE/SIGXFSZ back to the defaults, the caller's mask."""
    for sig in (*FORWARDED, signal.SIGCHLD):
        if callable(signal.getsignal(sig)):
            signal.signal(sig, signal.SIG_DFL)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _helper_main(prog: str, image_path: str, sock, log: int, old_mask,
                 launcher: int) -> None:  # pragma: no cover - child
    """Wait for the mounted /dev/fuse fd, then become squashfuse serving it (its stderr
    goes to ``log``: shown only if it fails to start; its complaints when the mount goes
    away are noise)."""
    try:
        linux.die_with_parent(launcher)
        os.setsid()  # the terminal's ^C is for the command, not for the image's server
        sock[0].close()
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(log, 2)
        _child_signals(old_mask)
        for sig in HELPER_IGNORED:  # stays ignored in squashfuse (libfuse keeps ignored ones)
            signal.signal(sig, signal.SIG_IGN)
        try:
            _, fds, _, _ = socket.recv_fds(sock[1], 16, 1)
        except OSError:
            fds = []
        if not fds:  # the builder gave up before mounting: this forked child just leaves
            os._exit(0)
        os.set_inheritable(fds[0], True)
        os.execv(prog, [os.path.basename(prog), "-f", image_path, f"/dev/fd/{fds[0]}"])
    except BaseException as e:  # noqa: BLE001 - report, never return into the caller
        try:  # a forked child: its stderr is the memfd the launcher shows if the mount fails
            os.write(2, f"shifter: can't start {prog}: {e}\n".encode())
        except BaseException:  # noqa: BLE001
            pass
    finally:  # a forked child: it must never return into the launcher's code
        os._exit(exit_codes.NOT_FOUND)


def _builder_main(config, image_path, request, modules, gids, argv, env, cwd, userhooks, base, prog, sock, err,
                  old_mask, save_plan, launcher: int, cover=(), warn=None) -> None:  # pragma: no cover - child
    """Build the container, exec the command; report a failure to the launcher."""
    try:
        linux.die_with_parent(launcher)  # like the single process of the other paths
        os.close(err[0])
        if sock:
            sock[1].close()
        _child_signals(old_mask)
        b = _Builder(config, image_path, request, modules, gids, base, prog, sock[0] if sock else None)
        ex = b.build(records=save_plan is not None)
        if save_plan is not None:
            save_plan(ex, "@/root", prog)
        b.enter(cwd, env, userhooks, cover, warn)
        entry.exec_command(argv, env)
    except BaseException as e:  # noqa: BLE001 - everything becomes one line for the launcher
        if isinstance(e, _FuseExited):
            kind, text, hint = _FUSE_EXITED, e.what, ""
        elif isinstance(e, CommandNotRun):
            kind, text, hint = _NOT_RUN[e.exit_code], e.what, e.hint or ""
        elif isinstance(e, ShifterError):
            kind, text, hint = type(e).__name__, e.what, e.hint or ""
            if not isinstance(e, (UsageError, ConfigError)):
                kind = "ShifterError"
        elif isinstance(e, OSError):
            kind, hint = "ShifterError", ""
            text = f"can't build the private container: {e.strerror or e}" + (f": {e.filename}" if e.filename else "")
        else:
            kind, text, hint = "ShifterError", f"can't build the private container: {type(e).__name__}: {e}", ""
        try:
            os.write(err[1], "\0".join((kind, text, hint)).encode(errors="replace"))
        except BaseException:  # noqa: BLE001
            pass
    finally:  # a forked child: the launcher reads its report and raises it
        os._exit(exit_codes.LAUNCH)


class _Builder:
    """Runs in the builder process: namespaces, mounts, chroot."""

    def __init__(self, config, image_path, request, modules, gids, base, prog, sock):
        self.config, self.image_path, self.request = config, image_path, request
        self.modules, self.gids, self.base, self.prog, self.sock = modules, gids, base, prog, sock
        self.uid, self.gid = os.getuid(), os.getgid()
        self.root = os.path.join(base, "root")

    # ---------------------------------------------------------------- namespaces
    def build(self, records: bool = True) -> execute.Executor:
        """Enter the namespaces, then plan and run the container's layout; the executor
        (its ``done`` records are the private plan's)."""
        try:
            userns.enter(self.uid, self.gid)  # the user's shared one (MPI ranks: CMA, shared memory)
        except OSError as e:
            raise ShifterError(f"can't build a private container: can't create a user namespace: "
                               f"{os.strerror(e.errno)}",
                               "unprivileged user namespaces must be enabled (sysctl user.max_user_namespaces, "
                               "kernel.unprivileged_userns_clone), " + _OR_PREPARED) from None
        linux.make_propagation("/", linux.MS_PRIVATE, recursive=True)
        plain = [v for v in self.request.volumes if v.per_node_cache is None]
        sources = self._open_sources(plain)  # before anything is mounted: the host's view
        target = planner.Target("user", "@/root", loop="@/image", image=None if self.prog else self.image_path)
        ops = planner.plan(self.config, self.request, target, self.image_path, self.modules, self.gids)
        ex = execute.Executor("user", self.config, self.uid, self.gid, self.gids, base=self.base, sources=sources,
                              sock=self.sock, prog=self.prog, records=records)
        try:
            ex.run(ops)
        except execute.FuseExited as e:
            raise _FuseExited(e.message) from None
        return ex

    def _open_sources(self, plain) -> list[int]:
        """Open each volume source (O_PATH) and check the user may read it.  In this
        namespace the user's capabilities reach only their own files."""
        fds = []
        for v in plain:
            try:
                fds.append(destinations.open_source(v.source))
            except OSError as e:
                raise UsageError(f"can't mount volume source {v.source}: {(e.strerror or str(e)).lower()} "
                                 f"(as uid {self.uid})", "use a directory or file you can read") from None
        return fds

    # ---------------------------------------------------------------- entering
    def enter(self, cwd: str, env: dict[str, str], userhooks, cover=(), warn=None) -> None:
        os.chdir(self.root)
        os.chroot(".")
        os.chdir("/")
        devices.restrict(cover, new_namespace=False)  # this namespace is the command's own
        linux.no_new_privs()
        entry.start(cwd, env, userhooks, warn=warn or (lambda line: None))
