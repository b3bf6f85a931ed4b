"""The node's hook server: the job prolog and epilog run here, in a process that has
already started Python and imported the runtime, instead of a cold interpreter per job.

Why: Slurm starts the SPANK ``job_prolog``/``job_epilog`` in a fresh ``slurmstepd`` for
every job on every node, and srun polls the job's readiness 0.1 s after asking, then 0.3 s:
a cold interpreter and the runtime's imports (~50 ms) push a job's prolog past the first
poll, which costs the job 0.2 s.  Here a request costs a fork.

How (docs/dev.md, "the node's hook server"):
- The C shim (spank/shim_python.c, hookd_client.c) connects to ``<RUN_DIR>/<node>.sock`` and sends the hook:
  NUL-separated ``key=value`` records (``hook``, ``ctx``, ``job``, ``uid``, ``gid``, one
  ``arg`` per plugstack argument, one ``opt=NAME=VALUE`` per job option, one ``env=K=V``
  per variable of the hook's environment), then ``end``.  Nothing answers it but this
  server (root's socket in a directory only root may enter; the peer must be root).
- The server forks a handler per connection, which forks the worker: the worker takes the
  hook's environment and runs ``shifter.spank.dispatch.run`` with a handle whose log lines
  go back on the connection (``I``/``E``/``V`` + text); the handler answers ``R <rc>``.
  If the shim goes away (Slurm's PrologTimeout killed it), the handler kills the worker:
  the epilog removes what it left, as after any prolog killed halfway.
- The server answers ``S`` (stale) and leaves when its code changed on disk since it
  started (an upgrade) or when the peer is in another mount or network namespace than the
  server (a restarted node); the shim then runs the hook in-process and starts a new server.
  The first prolog on a node starts it the same way: nothing to configure.
- It leaves after ``IDLE_EXIT`` seconds without a request.
"""

from __future__ import annotations

import importlib
import os
import select
import struct
import sys

import _signal as signal
import _socket as socket

from shifter import command
from shifter.errors import ConfigError, UsageError
from shifter.spank import dispatch
from shifter.wlm import hookcpu

RUN_DIR = "/run/shifter/hookd"
IDLE_EXIT = 3600.0
MAX_REQUEST = 1 << 20
#: imported before the first request: what the prolog and epilog use
PRELOAD = ("shifter.spank.dispatch", "shifter.spank.job_script", "shifter.wlm.prolog", "shifter.wlm.epilog", "shifter.wlm.jobinfo",
           "shifter.wlm.cgroup", "shifter.runtime.builder.udi", "shifter.runtime.builder.teardown", "shifter.runtime.builder.sshd",
           "shifter.runtime.hostsfile", "shifter.runtime.ed25519", "shifter.runtime.config",
           "shifter.runtime.volumes", "shifter.runtime.etcfiles", "shifter.runtime.jobpath",
           "shifter.runtime.image", "shifter.runtime.modules", "shifter.runtime.plandir", "shifter.asuser",
           "shifter.spawn", "shifter.files")


def socket_path(node: str) -> str:
    if not node or "/" in node or node.startswith(".") or len(node) > 64:
        raise ValueError(f"not a node name: {node!r}")
    return os.path.join(RUN_DIR, node + ".sock")


class RemoteSpank:
    """The SPANK handle of a hook run here: items from the request, log lines to the shim."""

    def __init__(self, fd: int, context: int, job_id, uid, gid):
        self._fd, self.context = fd, context
        self._job_id, self._uid, self._gid = job_id, uid, gid

    def job_id(self):
        return self._job_id

    def job_uid(self):
        return self._uid

    def job_gid(self):
        return self._gid

    def getenv(self, name):
        return os.environ.get(name)

    def setenv(self, name, value, overwrite=True):  # the prolog/epilog set nothing for tasks
        return False

    def job_control_setenv(self, name, value, overwrite=True):
        return False

    def _say(self, kind: str, msg: str) -> None:
        line = (kind + " " + msg.replace("\n", " ") + "\n").encode(errors="replace")
        try:
            os.write(self._fd, line)
        except OSError:
            pass  # the shim is gone: the handler kills this worker

    def error(self, msg):
        self._say("E", msg)

    def info(self, msg):
        self._say("I", msg)

    def verbose(self, msg):
        self._say("V", msg)


def parse_request(data: bytes) -> dict:
    """The records of one request; ValueError if it is not one."""
    req: dict = {"arg": [], "opt": {}, "env": {}}
    records = data.split(b"\0")
    if b"end" not in records:
        raise ValueError("incomplete request")
    for raw in records[:records.index(b"end")]:
        key, sep, value = raw.decode(errors="surrogateescape").partition("=")
        if not sep:
            raise ValueError(f"bad record {raw[:40]!r}")
        if key == "arg":
            req["arg"].append(value)
        elif key in ("opt", "env"):
            name, sep, val = value.partition("=")
            if not sep or not name:
                raise ValueError(f"bad {key} record")
            req[key][name] = val
        elif key in ("hook", "ctx", "job", "uid", "gid"):
            req[key] = value
        else:
            raise ValueError(f"unknown record {key!r}")
    if req.get("hook") not in ("job_prolog", "job_epilog") or not req.get("ctx", "").isdigit():
        raise ValueError("not a prolog or epilog request")
    return req


def _int(text):
    return int(text) if text and text.isdigit() else None


def _namespaces(pid: int | str) -> tuple:
    return tuple(os.stat(f"/proc/{pid}/ns/{ns}").st_ino for ns in ("mnt", "net", "pid", "uts"))


def _code_stamp() -> dict:
    """The loaded files of the shifter package (this one too, run as ``__main__``)."""
    top = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    stamp = {}
    for mod in list(sys.modules.values()):
        path = getattr(mod, "__file__", None)
        if path and os.path.abspath(path).startswith(top):
            try:
                st = os.stat(path)
                stamp[path] = (st.st_ino, st.st_mtime_ns, st.st_size)
            except OSError:
                stamp[path] = None
    return stamp


def _stale(stamp: dict) -> bool:
    for path, was in stamp.items():
        try:
            st = os.stat(path)
            now = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            now = None
        if now != was:
            return True
    return False


def _read_request(fd: int) -> bytes:
    data = b""
    while b"\0end\0" not in data and not data.startswith(b"end\0"):
        chunk = os.read(fd, 65536)
        if not chunk or len(data) > MAX_REQUEST:
            break
        data += chunk
    return data


def _work(fd: int, req: dict) -> int:  # pragma: no cover - runs in the forked worker
    hookcpu.IN_HOOK_SERVER = True
    os.environ.clear()
    os.environ.update(req["env"])
    sp = RemoteSpank(fd, int(req["ctx"]), _int(req.get("job")), _int(req.get("uid")), _int(req.get("gid")))
    return dispatch.run(sp, req["hook"], req["arg"], req["opt"])


def handle(fd: int) -> None:  # pragma: no cover - runs in the forked handler
    """One connection: read the request, run it in a worker, answer its result; kill the
    worker if the shim goes away first."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        req = parse_request(_read_request(fd))
    except (ValueError, OSError) as e:
        os.write(fd, f"E shifter: the hook server refused a request: {e}\nR -1\n".encode())
        return
    pid = os.fork()
    if pid == 0:
        rc = -1
        try:
            rc = _work(fd, req)
        except BaseException as e:  # noqa: BLE001 - dispatch.run maps errors; this is a last resort
            try:
                os.write(fd, f"E shifter: internal error in the hook server: {e!r}\n".encode(errors="replace"))
            except OSError:
                pass
        finally:  # the forked worker: never back into the handler's code
            os._exit(0 if rc == 1 else 1)
    poller = select.poll()
    poller.register(fd, select.POLLHUP | select.POLLERR)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        for _, events in poller.poll(20):
            if events & (select.POLLHUP | select.POLLERR):  # the shim is gone
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
    ok = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    try:
        os.write(fd, b"R 1\n" if ok else b"R -1\n")
    except OSError:
        pass


def serve(node: str) -> int:  # pragma: no cover - the daemon (tests/slurm/test_hookd.py)
    for name in PRELOAD:
        importlib.import_module(name)
    os.makedirs(RUN_DIR, mode=0o700, exist_ok=True)
    st = os.lstat(RUN_DIR)
    if st.st_uid != 0 or st.st_mode & 0o077 or not os.path.isdir(RUN_DIR) or os.path.islink(RUN_DIR):
        raise ConfigError(f"{RUN_DIR} is not root's alone (owner {st.st_uid}, mode {st.st_mode & 0o7777:o})",
                          "remove it: the next image job's prolog makes it again, mode 0700")
    path = socket_path(node)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return 0  # one is serving this node already
    except OSError:
        pass
    finally:
        probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = f"{path}.{os.getpid()}"
    sock.bind(tmp)
    os.chmod(tmp, 0o600)
    sock.listen(64)
    os.rename(tmp, path)
    mine = os.stat(path).st_ino
    stamp, own_ns = _code_stamp(), _namespaces("self")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # handlers are reaped by the kernel
    signal.signal(signal.SIGTERM, _leave)  # tools/cluster down: the socket goes too
    try:
        while True:
            ready, _, _ = select.select([sock.fileno()], [], [], IDLE_EXIT)
            if not ready:
                return 0
            try:
                conn, _ = sock._accept()
            except OSError:
                continue
            try:
                cred = socket.socket(fileno=os.dup(conn))
                pid, uid, _ = _peer(cred)
                cred.close()
                if uid != 0:
                    continue
                if _stale(stamp) or _namespaces(pid) != own_ns:
                    os.write(conn, b"S\n")
                    return 0
                if os.fork() == 0:
                    try:
                        sock.close()
                        handle(conn)
                    finally:  # the forked handler: never back into the server's loop
                        os._exit(0)
            except OSError:
                continue
            finally:
                os.close(conn)
    finally:
        try:
            if os.stat(path).st_ino == mine:
                os.unlink(path)
        except OSError:
            pass


def _leave(signum, frame):  # pragma: no cover - the daemon's SIGTERM
    raise SystemExit(0)


def _peer(sock) -> tuple[int, int, int]:
    SO_PEERCRED = 17
    return struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, SO_PEERCRED, 12))


def main(argv=None) -> int:  # pragma: no cover - started by the shim
    def body(args):
        if len(args) != 1:
            raise UsageError("one argument: the node's name", "python -m shifter.spank.hookd NODE")
        socket_path(args[0])  # a ValueError for a name that is not one: an internal error line
        return serve(args[0])

    return command.run("shifter-hookd", body, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
