"""The per-node sshd of a node-exclusive job's container (docs/sshd.md).

Three parts:

- **The bundle**: the host's OpenSSH (``sshd``, ``ssh``), every library they load and the
  dynamic loader, with the sshd and client configs and the client wrapper rendered from
  templates/, in ``/var/lib/shifter/sshd/<digest>`` (root's, read-only to others; files
  hard-linked from the host where they share a file system).  Made once, and again only
  when one of its source files changed (``bundle``: a stat of each source per call).  Every
  job's container gets it bound read-only at ``/opt/udiImage/ssh``, and runs its binaries
  through the injected loader, so it works in images without one (busybox-static).
- **The job's files** (``prepare``, during setupRoot, before the root goes read-only):
  in ``/var/shifter/sshd/`` of the container, an ed25519 host key made for this node
  (the user's, 0600), the user's public key as ``authorized_keys`` (root's) with a
  ``from=`` list of the job's nodes' addresses, and the node's own address.
- **The process** (``spawn``/``start``/``stop``): root listens on ``<node
  address>:<sshdPort>`` and forks the listener; it enters a session of its own, chroots
  into the container, takes the user's groups, gid and uid (no user namespace:
  root-owned directories stay root-owned, so OpenSSH's StrictModes passes), sets
  no_new_privs and runs OpenSSH's sshd in inetd mode for each connection.  Its pid and
  start time go to ``<udiMount>.jobs/<job>/sshd.pid`` (per job and node, in the node's
  anchor: a restarted slurmd's epilog finds it).  ``stop`` kills it and every
  process chrooted into the job's container in this node's mount namespace (the user's
  ssh sessions, what they left behind), pid file or not.

``start`` returns the sshd's pid and ``pids`` lists every process to kill, for callers that
put them into a cgroup.
"""

from __future__ import annotations

import base64
import binascii
import errno
import fcntl
import json
import os
import select  # imported here: the listener can't import once chrooted
import stat
import time

# The C modules, not ``socket`` and ``signal``: those wrap them in enums, ~4 ms of every
# image job's prolog (docs/dev.md, start-up rules).
import _signal as signal
import _socket as socket
from shifter.frozen import frozen

from shifter.errors import ConfigError, ShifterError, UsageError

DEFAULT_PORT = 1204
#: where the bundle is bound in a container, and its layout
IN_UDI = "/opt/udiImage/ssh"
BUNDLE_TOP = "/var/lib/shifter/sshd"
BUNDLE_VERSION = "2"
#: the job's own files in the container (the container's state directory: root's, the
#: job user may search it)
JOB_DIR = "var/shifter/sshd"
HOST_KEY = "ssh_host_ed25519_key"
AUTHORIZED_KEYS = "authorized_keys"
ADDRESS_FILE = "address"
#: the user's key pair, as Shifter names it (~/.udiRoot/id_rsa.key, whatever its type)
USER_KEY_DIR = ".udiRoot"
USER_KEY = "id_rsa.key"
PID_FILE = "sshd.pid"
LOG_FILE = "sshd.log"
PUBKEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")
PATH_IN_SESSIONS = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin:" + IN_UDI + "/bin"
SOURCES = ("/usr/sbin/sshd", "/usr/bin/ssh")
START_TIMEOUT = 10.0


@frozen
class Setup:
    """What setupRoot needs to prepare a container for the job's sshd (``prepare``)."""

    bundle: str  # the bundle directory (``bundle()``)
    pubkey: str  # the user's key, ``TYPE BASE64`` (``parse_pubkey``)
    address: str  # the node's address: the sshd listens there, the client binds to it
    allowed: tuple[str, ...] = ()  # the job's nodes' addresses: connections only from them
    port: int = DEFAULT_PORT
    #: with it, setupRoot also spawns the sshd (``spawn``; pid file and log there) as the
    #: user, once the files are there; the caller waits for it (``wait_ready``)
    state_dir: str | None = None
    username: str = ""


# --------------------------------------------------------------------------- keys
def parse_pubkey(text: str) -> str:
    """The user's public key as an authorized_keys entry ``TYPE BASE64`` (comment and
    options dropped).  One key of a known type whose blob names that type; anything
    else (a private key, several lines, options) is refused."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) != 1:
        raise UsageError(f"the ssh public key has {len(lines)} lines, not one")
    words = lines[0].split()
    if len(words) < 2 or words[0] not in PUBKEY_TYPES:
        raise UsageError("the ssh public key does not start with a key type",
                         f"one of {', '.join(PUBKEY_TYPES)}")
    try:
        blob = base64.b64decode(words[1], validate=True)
    except (binascii.Error, ValueError):
        raise UsageError("the ssh public key's data is not base64") from None
    kind = words[0].encode()
    if blob[:4] != len(kind).to_bytes(4, "big") or blob[4:4 + len(kind)] != kind:
        raise UsageError(f"the ssh public key's data is not a {words[0]} key")
    return f"{words[0]} {words[1]}"


def user_key_paths(home: str) -> tuple[str, str, str]:
    """(directory, private key, public key) of a user's container key pair."""
    d = os.path.join(home, USER_KEY_DIR)
    return d, os.path.join(d, USER_KEY), os.path.join(d, USER_KEY + ".pub")


def ensure_user_key(home: str) -> bool:
    """As the user (submission): make ``~/.udiRoot`` (0700) and the key pair (private
    0600) if missing; True if made.  Refuses (UsageError, one line) a home that does not
    allow it, and a private key others can read.  Concurrent submissions make one pair
    (a lock on the directory; the public key is in place before the private one)."""
    # start-up: ed25519 computes its curve constants at import (~1.5 ms); the prolog imports
    # this module for every image job, and only a new key or a job's sshd needs them
    from shifter.runtime import ed25519

    d, priv, pub = user_key_paths(home)
    hint = (f"fix the permissions of {d}, or make the pair yourself: "
            f"ssh-keygen -t ed25519 -N '' -f {priv}")
    if _check_user_key(priv, pub, hint):
        return False
    try:
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            dst = os.fstat(dfd)
            if dst.st_uid != os.getuid():
                raise OSError(errno.EPERM, "not a directory of yours", d)
            fcntl.flock(dfd, fcntl.LOCK_EX)
            if _check_user_key(priv, pub, hint):  # made meanwhile by another submission
                return False
            private, public = ed25519.generate(f"shifter@{os.uname().nodename}")
            name = os.path.basename(pub)
            fd = os.open(name + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o644, dir_fd=dfd)
            try:
                os.write(fd, public.encode())
            finally:
                os.close(fd)
            os.replace(name + ".tmp", name, src_dir_fd=dfd, dst_dir_fd=dfd)
            fd = os.open(os.path.basename(priv), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=dfd)
            try:
                os.write(fd, private)
            finally:
                os.close(fd)
        finally:
            os.close(dfd)
    except OSError as e:
        raise UsageError(f"can't create your container ssh key in {d}: {(e.strerror or str(e)).lower()}",
                         hint) from None
    return True


def _check_user_key(priv: str, pub: str, hint: str) -> bool:
    """True if the pair is there and usable; False if the private key is missing."""
    try:
        st = os.lstat(priv)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise UsageError(f"can't use your container ssh key {priv}: {(e.strerror or str(e)).lower()}", hint) from None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
        raise UsageError(f"can't use your container ssh key {priv}: not a regular file of yours", hint)
    if st.st_mode & 0o077:
        raise UsageError(f"can't use your container ssh key {priv}: others may read it "
                         f"(mode {stat.S_IMODE(st.st_mode):o})", f"chmod 600 {priv}")
    if not os.path.exists(pub):
        raise UsageError(f"can't use your container ssh key: {pub} is missing", f"ssh-keygen -y -f {priv} > {pub}")
    return True


def _with_fs_ids(uid: int, gid: int, gids, work):
    """Run ``work()`` with the user's file-system uid, gid and groups: the kernel checks
    every path it opens with the user's rights (root's file capabilities drop while the
    fs uid is not 0), and nothing needs a child process.  Restored after."""
    # start-up: ctypes (~3 ms); the submission imports this module (ensure_user_key) and must not pay it
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    saved_groups, saved_gid = os.getgroups(), os.getegid()
    os.setgroups(list(gids))
    try:
        libc.setfsgid(gid)
        libc.setfsuid(uid)
        if libc.setfsuid(uid) != uid or libc.setfsgid(gid) != gid:
            raise OSError(errno.EPERM, "can't take the user's file-system ids")
        return work()
    finally:
        libc.setfsuid(os.geteuid())
        libc.setfsgid(saved_gid)
        os.setgroups(saved_groups)


def read_user_pubkey(home: str, uid: int, gid: int, gids) -> str:
    """The user's public key, opened with the user's rights (never a path root follows
    with its own: ``_with_fs_ids``), no symlink as the last component."""
    _, _, pub = user_key_paths(home)

    def work():
        fd = os.open(pub, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", pub)
            return os.read(fd, 16384)
        finally:
            os.close(fd)

    try:
        data = _with_fs_ids(uid, gid, gids, work)
    except OSError as e:
        raise UsageError(f"can't read the user's container ssh key {pub}: {(e.strerror or str(e)).lower()}",
                         "the job's submission makes it (with enable_sshd=1)") from None
    return parse_pubkey(data.decode(errors="replace"))


# --------------------------------------------------------------------------- the bundle
def _check_root_dir(path: str) -> None:
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise ConfigError(f"can't use {path} for the sshd bundle: not a directory of root's alone")


def _bundle_parent() -> str:
    parent = os.path.dirname(BUNDLE_TOP)
    for path in (parent, BUNDLE_TOP):
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            pass
        _check_root_dir(path)
    return BUNDLE_TOP


def _stamp(path: str) -> list:
    st = os.stat(path)
    return [path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def _libraries(binaries) -> tuple[tuple[str, str], list[tuple[str, str]]]:
    """The loader and the libraries the binaries load, as ``ldd`` lists them: (the name
    they are loaded by, the file's real path) pairs."""
    import subprocess  # start-up: ~6 ms; only a bundle build runs ldd

    loader, libs = None, {}
    for binary in binaries:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=30,
                             env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})
        if out.returncode != 0:
            raise ConfigError(f"can't list the libraries of {binary}: {out.stderr.strip() or out.stdout.strip()}")
        for line in out.stdout.splitlines():
            words = line.split()
            if "=>" in words:
                target = words[words.index("=>") + 1]
                if target.startswith("/"):
                    libs[os.path.basename(words[0])] = os.path.realpath(target)
                elif target == "not":
                    raise ConfigError(f"can't bundle {binary}: {line.strip()}")
            elif words and words[0].startswith("/"):
                loader = (os.path.basename(words[0]), os.path.realpath(words[0]))
    if loader is None:
        raise ConfigError(f"can't bundle {binaries[0]}: no dynamic loader in its ldd listing")
    return loader, sorted(libs.items())


def _place(src: str, dst: str) -> None:
    """Hard-link ``src`` (same file system) or copy it; read-only, root's."""
    import shutil  # start-up: ~3 ms (bz2, lzma); only a bundle build copies

    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
        os.chmod(dst, 0o755)


def _current_name(port: int) -> str:
    return os.path.join(BUNDLE_TOP, f"current-{port}")


def bundle(port: int = DEFAULT_PORT) -> str:
    """The directory of the current sshd bundle for ``port`` (made or remade if needed)."""
    try:
        with open(_current_name(port)) as f:
            name = f.read().strip()
        path = os.path.join(BUNDLE_TOP, name)
        with open(os.path.join(path, "manifest.json")) as f:
            manifest = json.load(f)
        if manifest.get("version") == BUNDLE_VERSION and all(_stamp(s[0]) == s for s in manifest["sources"]):
            return path
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return _build_bundle(port)


def _build_bundle(port: int) -> str:
    # start-up: a bundle is built once per node and sshd version; these (jinja2 above all,
    # ~80 ms) would weigh on every prolog and submission that imports this module
    import hashlib
    import shutil
    import tempfile

    from shifter import templates

    for src in SOURCES:
        if not os.access(src, os.X_OK):
            raise ConfigError(f"can't start the job's sshd: {src} is missing",
                              "install openssh-server and openssh-client on the node")
    top = _bundle_parent()
    loader, libs = _libraries(SOURCES)
    sources = [_stamp(p) for p in (*SOURCES, loader[1], *(real for _, real in libs))]
    manifest = {"version": BUNDLE_VERSION, "port": port, "sources": sources}
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:24]
    final = os.path.join(top, digest)
    if not os.path.isdir(final):
        work = tempfile.mkdtemp(prefix=".build-", dir=top)
        try:
            for sub in ("libexec", "lib", "bin", "etc"):
                os.mkdir(os.path.join(work, sub), 0o755)
            for src in SOURCES:
                _place(src, os.path.join(work, "libexec", os.path.basename(src)))
            for name, src in (loader, *libs):
                _place(src, os.path.join(work, "lib", name))
            ctx = {"port": port, "authorized_keys": "/" + JOB_DIR + "/" + AUTHORIZED_KEYS,
                   "path": PATH_IN_SESSIONS, "key_name": USER_KEY,
                   "loader": f"{IN_UDI}/lib/{loader[0]}", "libdir": f"{IN_UDI}/lib",
                   "ssh": f"{IN_UDI}/libexec/ssh", "config": f"{IN_UDI}/etc/ssh_config",
                   "address_file": "/" + JOB_DIR + "/" + ADDRESS_FILE}
            for name, rel, mode in (("sshd_config", "etc/sshd_config", 0o644), ("ssh_config", "etc/ssh_config", 0o644),
                                    ("udi-ssh", "bin/ssh", 0o755)):
                with open(os.path.join(work, rel), "w") as f:
                    f.write(templates.render(name, **ctx))
                os.chmod(os.path.join(work, rel), mode)
            manifest["loader"] = loader[0]
            with open(os.path.join(work, "manifest.json"), "w") as f:
                json.dump(manifest, f, indent=1)
            os.chmod(work, 0o755)
            try:
                os.rename(work, final)
            except OSError as e:  # another node's prolog made it meanwhile
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        finally:
            if os.path.isdir(work):
                shutil.rmtree(work, ignore_errors=True)
    tmp = f"{_current_name(port)}.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(digest + "\n")
    os.replace(tmp, _current_name(port))
    return final


def loader_of(bundle_dir: str) -> str:
    with open(os.path.join(bundle_dir, "manifest.json")) as f:
        return json.load(f)["loader"]


# --------------------------------------------------------------------------- the job's files
def node_address(node: str) -> str:
    """The IPv4 address the node's name resolves to on the node (the local site's nodes:
    127.0.1.N from their own /etc/hosts)."""
    try:
        return socket.gethostbyname(node)
    except OSError as e:
        raise ConfigError(f"can't start the job's sshd: node name {node!r} does not resolve on the node ({e})",
                          "the node's /etc/hosts or DNS must know the node names") from None


def authorized_keys_line(pubkey: str, allowed: list[str]) -> str:
    """The user's key, accepted only from the job's nodes' addresses."""
    for a in allowed:
        if not all(c.isalnum() or c in ".:" for c in a):
            raise ConfigError(f"not an address: {a!r}")
    return f'from="{",".join(allowed)}" {pubkey}\n' if allowed else pubkey + "\n"


def prepare(udi: str, bundle_dir: str, uid: int, gid: int, pubkey: str, address: str,
            allowed: list[str]) -> None:
    """Bind the bundle at /opt/udiImage/ssh and write the job's files (during setupRoot,
    before the root goes read-only)."""
    # start-up: linux loads libc through ctypes (~3 ms), not on the submission's path; ed25519
    # as in ensure_user_key
    from shifter.runtime import ed25519, linux

    target = os.path.join(udi, IN_UDI.lstrip("/"))
    os.makedirs(target, mode=0o755, exist_ok=True)
    linux.bind(bundle_dir, target, linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV)
    linux.make_propagation(target, linux.MS_SLAVE)  # nothing mounted there reaches the host
    d = os.path.join(udi, JOB_DIR)
    os.mkdir(d, 0o755)
    private, public = ed25519.generate(f"shifter-host@{address}")

    def write(name: str, data: bytes, mode: int, owner: int | None = None) -> None:
        fd = os.open(os.path.join(d, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode)
        try:
            os.write(fd, data)
            if owner is not None:
                os.fchown(fd, owner, gid)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)

    write(HOST_KEY, private, 0o600, owner=uid)
    write(HOST_KEY + ".pub", public.encode(), 0o644)
    write(AUTHORIZED_KEYS, authorized_keys_line(pubkey, allowed).encode(), 0o644)
    write(ADDRESS_FILE, (address + "\n").encode(), 0o644)


# --------------------------------------------------------------------------- the process
def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    return None if fields[0] in (b"Z", b"X") else fields[19].decode()


def _listening(address: str, port: int) -> bool:
    want = f"{socket.htonl(int.from_bytes(socket.inet_aton(address), 'big')):08X}:{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            return any(line.split()[1] == want and line.split()[3] == "0A" for line in f)
    except OSError:
        return False


def command(bundle_dir: str, username: str) -> list[str]:
    """The sshd's command line inside the container, for one connection on its stdin
    (inetd mode)."""
    loader = f"{IN_UDI}/lib/{loader_of(bundle_dir)}"
    return [loader, "--library-path", f"{IN_UDI}/lib", f"{IN_UDI}/libexec/sshd", "-i", "-e",
            "-f", f"{IN_UDI}/etc/sshd_config", "-h", f"/{JOB_DIR}/{HOST_KEY}", "-o", f"AllowUsers={username}"]


def start(state_dir: str, udi: str, bundle_dir: str, uid: int, gid: int, gids, username: str,
          address: str, port: int = DEFAULT_PORT, timeout: float = START_TIMEOUT) -> int:
    """Start the job's sshd in the container at ``udi``; its pid (and start time) goes to
    ``state_dir``/sshd.pid, its log to ``state_dir``/sshd.log.  Returns its pid once it
    listens."""
    pid = spawn(state_dir, udi, bundle_dir, uid, gid, gids, username, address, port)
    wait_ready(state_dir, pid, address, port, timeout)
    return pid


def spawn(state_dir: str, udi: str, bundle_dir: str, uid: int, gid: int, gids, username: str,
          address: str, port: int = DEFAULT_PORT) -> int:
    """Listen on ``address:port`` and fork the job's sshd listener: in a session of its
    own, chrooted into the container, with the user's groups, gid and uid and
    no_new_privs, it accepts each connection and runs OpenSSH's sshd for it in inetd
    mode (``sshd -i``: what the prolog pays is a socket and a fork; each connection pays
    the sshd's start-up, ~10-30 ms of loading its libraries).  The socket listens before
    this returns.  Returns the listener's pid."""
    from shifter.runtime import linux  # start-up: ctypes (~3 ms), not on the submission's path

    argv = command(bundle_dir, username)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise ShifterError(f"can't listen on {address}:{port} for the job's sshd: {e.strerror or e}") from None
    log = os.open(os.path.join(state_dir, LOG_FILE), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
                  | os.O_CLOEXEC, 0o600)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.setsid()
                # out of 0-2 first: a prolog may run with those closed, so either could be one
                high_sock = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)
                high_log = fcntl.fcntl(log, fcntl.F_DUPFD_CLOEXEC, 10)
                null = os.open("/dev/null", os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(high_log, 1)
                os.dup2(high_log, 2)
                listen_fd = os.dup2(high_sock, 3, inheritable=False)
                os.closerange(4, 65536)
                for sig in (signal.SIGPIPE, signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                            signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2):
                    signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, [])
                os.chroot(udi)
                os.chdir("/")
                os.setgroups(list(gids))
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
                linux.no_new_privs()
                _serve(listen_fd, argv)
            except BaseException as e:  # noqa: BLE001 - report in the log, then leave
                try:  # a forked daemon: its stderr is the sshd's log, and it must _exit, never return
                    os.write(2, f"shifter: the job's sshd listener stopped: {e}\n".encode())
                except OSError:
                    pass
            os._exit(126)  # the forked listener's end: never back into the prolog's code
    finally:
        os.close(log)
        sock.close()
    _write_pid(state_dir, pid)
    return pid


def _serve(listen_fd: int, argv: list[str]) -> None:  # pragma: no cover - runs in the listener
    """Accept forever; each connection gets ``argv`` (sshd -i) with it as stdin and
    stdout.  Reaps what ended every few seconds."""
    env = {"PATH": "/usr/bin:/bin", "LANG": "C"}
    listener = socket.socket(fileno=listen_fd)
    while True:
        ready, _, _ = select.select([listen_fd], [], [], 5.0)
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        if not ready:
            continue
        try:
            conn, _ = listener._accept()  # _socket's: the fd
        except OSError:
            continue
        try:
            if os.fork() == 0:
                try:
                    os.dup2(conn, 0)
                    os.dup2(conn, 1)
                    os.execve(argv[0], argv, env)
                finally:  # a forked child: it must never return into the listener's loop
                    os._exit(127)
        finally:
            os.close(conn)


def wait_ready(state_dir: str, pid: int, address: str, port: int = DEFAULT_PORT,
               timeout: float = START_TIMEOUT) -> None:
    """Return once the sshd listener ``pid`` (a child of this process) is there and its
    socket listens; raise if it exited or does not listen within ``timeout`` (it is
    killed then)."""
    deadline = time.monotonic() + timeout
    delay = 0.0002
    while not _listening(address, port):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            raise ShifterError(f"the job's sshd exited at start ({_status(status)}): {last_log_line(state_dir)}")
        if time.monotonic() > deadline:
            kill(pid)
            raise ShifterError(f"the job's sshd did not listen on {address}:{port} within {timeout:.0f} s: "
                               f"{last_log_line(state_dir)}")
        time.sleep(delay)


def _status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"status {os.waitstatus_to_exitcode(status)}"


def last_log_line(state_dir: str) -> str:
    try:
        with open(os.path.join(state_dir, LOG_FILE), "rb") as f:
            lines = [ln for ln in f.read()[-4096:].decode(errors="replace").splitlines() if ln.strip()]
        return lines[-1] if lines else "(nothing logged)"
    except OSError:
        return "(no log)"


def _write_pid(state_dir: str, pid: int) -> None:
    path = os.path.join(state_dir, PID_FILE)
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, f"{pid} {_start_time(pid) or '-'}\n".encode())
    finally:
        os.close(fd)
    os.replace(path + ".tmp", path)


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def spawned_pid(state_dir: str) -> int | None:
    """The pid the pid file names, alive or not (the prolog waits for its own child)."""
    try:
        with open(os.path.join(state_dir, PID_FILE)) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def recorded_pid(state_dir: str) -> int | None:
    """The sshd of the pid file, if that process still is the one started."""
    try:
        with open(os.path.join(state_dir, PID_FILE)) as f:
            pid_text, started = f.read().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    return pid if pid > 1 and _start_time(pid) == started else None


def pids(state_dir: str, udi: str) -> list[int]:
    """Every process of the job's container on this node: the recorded sshd and every
    process whose root is the container's (in this mount namespace): sessions, what they
    started, an sshd whose pid was never recorded (a prolog killed halfway)."""
    out = set()
    own = recorded_pid(state_dir)
    if own is not None:
        out.add(own)
    try:
        my_ns = os.stat("/proc/self/ns/mnt").st_ino
    except OSError:
        my_ns = None
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{name}/root") != udi:
                continue
            if my_ns is not None and os.stat(f"/proc/{name}/ns/mnt").st_ino != my_ns:
                continue
        except OSError:
            continue
        out.add(int(name))
    out.discard(os.getpid())
    return sorted(out)


def stop(state_dir: str, udi: str, log=lambda msg: None) -> list[int]:
    """Kill the job's sshd and every process in the job's container on this node, until
    none is left; remove the pid file and log.  Idempotent.  Returns the pids killed."""
    killed: list[int] = []
    for _ in range(100):
        found = pids(state_dir, udi)
        if not found:
            break
        for pid in found:
            kill(pid)
        killed += [p for p in found if p not in killed]
        time.sleep(0.005)
    else:
        raise ShifterError(f"can't stop the processes of the job's container at {udi}: they keep reappearing")
    for name in (PID_FILE, LOG_FILE, PID_FILE + ".tmp"):
        try:
            os.unlink(os.path.join(state_dir, name))
        except FileNotFoundError:
            pass
        except NotADirectoryError:
            pass
    if killed:
        log(f"stopped the job's sshd and its sessions (pids {' '.join(map(str, killed))})")
    return killed
