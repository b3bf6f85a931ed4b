"""Private plans: the recording of a private container's build, for the compiled
launcher to replay without Python (format and rules: docs/private-plans.md).

``request_key`` says whether a request is one the launcher replays (``shifter CMD``
with no option, an ``id:`` image) and gives its key; ``Saver`` writes the plan once the
build succeeded (called in the process that built, before it enters the container), in
the caller's plan directory on the node (``plandir``).
"""

from __future__ import annotations

import os
import re
import sys

from shifter.runtime import plandir

MAGIC = "SHIFTER_PRIVATE"
VERSION = "1"
KEY_VERSION = "shifter-private-1"
MAX_SIZE = 1 << 20
MAX_PLANS = 64  # per user and node; the least recently written go first
_ID = re.compile(r"id:[0-9a-f]{64}\Z")
#: records with their arity (the operations of ``shifter.runtime.planner`` as ``execute`` ran them)
ARITY = {"key": 1, "kind": 1, "root": 1, "fuse": 1, "input": 2, "env": 1, "userhook": 1, "cmd": 1,
         "mkdir": 2, "mkdirp": 1, "chmod": 2, "symlink": 2, "touch": 2, "file": 3, "mount": 5, "umount": 2,
         "bindkeep": 4, "hardentree": 2, "treekeep": 3, "loopmount": 3, "fusemount": 3, "copytree": 2,
         "chdir": 1, "dropstaging": 2}


def fnv1a64(data: bytes) -> int:
    h = 0xcbf29ce484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def request_key(env, config_path: str, uid: int, gid: int, groups) -> str | None:
    """The request key of ``shifter CMD`` (no option) in ``env``, or None when the
    launcher would not replay it (not an ``id:`` image)."""
    from shifter.runtime.launch import env_image_spec, first_set

    spec = env_image_spec(env)
    if spec is None or not _ID.match(spec):
        return None
    module = first_set(env, "SHIFTER_MODULE", "SLURM_SPANK_SHIFTER_MODULE")
    return "\n".join([
        KEY_VERSION, f"uid={uid}", f"gid={gid}", "groups=" + ",".join(str(g) for g in sorted(set(groups))),
        f"config={config_path}", f"image={spec}",
        "volume=" + (first_set(env, "SHIFTER_VOLUME", "SLURM_SPANK_SHIFTER_VOLUME") or ""),
        "module-default" if module is None else f"module={module}",
    ])


def plan_name(key: str) -> str:
    return f"{fnv1a64(key.encode(errors='surrogateescape')):016x}.plan"


def signature(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "-"
    return ":".join(str(x) for x in (st.st_dev, st.st_ino, st.st_size, int(st.st_mtime), st.st_mtime_ns % 10**9,
                                      int(st.st_ctime), st.st_ctime_ns % 10**9))


def inputs(config, config_path: str, image_path: str) -> list[str]:
    """The files a build read whose change makes its plan stale (the site's etc files,
    the user and group databases, the image and its metadata, the configuration, this
    installation).
    Directories the build copies or binds (optUdiImage, copyPath, siteFs, volumes) are
    read again by every replay."""
    paths = [config_path, image_path, image_path[:-len(".squashfs")] + ".meta"
             if image_path.endswith(".squashfs") else image_path, "/etc/passwd", "/etc/group",
             # this installation: a reinstall (another layout, say) makes every plan stale
             os.path.dirname(os.path.abspath(__file__)), os.path.join(sys.prefix, "bin", "shifter")]
    if config.etcPath:
        paths.append(config.etcPath)
        try:
            paths += [os.path.join(config.etcPath, n) for n in sorted(os.listdir(config.etcPath))]
        except OSError:
            pass
    return list(dict.fromkeys(paths))


class Saver:
    """Writes the plan of one request once its build succeeded (best effort: a plan
    that can't be written only means the next launch builds with Python again)."""

    def __init__(self, key: str, kind: str, uid: int, input_paths: list[str], env_ops, userhooks, cmd,
                 directory: tuple[int, str] | None = None):
        self.key, self.kind, self.uid = key, kind, uid
        #: the plan directory, opened before the build: in the user's namespace, where
        #: the plan is written, root's directories show as nobody's (``plandir.open_dir``)
        self.directory = directory
        # signatures now, before the build: a file changed meanwhile makes the plan stale
        self.inputs = [(p, signature(p)) for p in input_paths]
        self.env_ops, self.userhooks, self.cmd = list(env_ops), list(userhooks), list(cmd)

    def __call__(self, ex, root: str, fuse: str | None = None) -> str | None:
        """``ex``: the executor that built the container (``shifter.runtime.execute``)."""
        if ex.unsaveable:
            return None
        try:
            return write(self.uid, self.key, self.dumps(ex.done, root, fuse), self.directory)
        except (OSError, ValueError):
            return None

    def dumps(self, ops, root: str, fuse: str | None) -> bytes:
        records: list[tuple] = [("key", self.key), ("kind", self.kind), ("root", root)]
        if fuse:
            records.append(("fuse", fuse))
        records += [("input", p, s) for p, s in self.inputs]
        records += [("env", e) for e in self.env_ops]
        records += [("userhook", h) for h in self.userhooks]
        records += [("cmd", c) for c in self.cmd]
        records += ops
        return dumps(records)


def dumps(records) -> bytes:
    out = [MAGIC.encode(), VERSION.encode()]
    for rec in records:
        if ARITY.get(rec[0]) != len(rec) - 1:
            raise ValueError(f"bad private plan record {rec!r}")
        for item in rec:
            data = item if isinstance(item, bytes) else item.encode(errors="surrogateescape")
            if b"\0" in data:
                raise ValueError(f"NUL byte in private plan record {rec[0]}")
            out.append(data)
    out.append(b"END")
    return b"\0".join(out) + b"\0"


def loads(data: bytes) -> list[tuple]:
    """The records of a plan (for tests and tools): tuples of bytes."""
    items = data.split(b"\0")
    if items[-1] != b"" or items[:2] != [MAGIC.encode(), VERSION.encode()]:
        raise ValueError("not a private plan")
    items = items[2:-1]
    out, i = [], 0
    while i < len(items):
        name = items[i].decode()
        if name == "END":
            return out
        n = ARITY.get(name)
        if n is None or i + n >= len(items):
            raise ValueError(f"bad record {name!r}")
        out.append((name, *items[i + 1:i + 1 + n]))
        i += 1 + n
    raise ValueError("no END")


def _prune(dfd: int) -> None:
    """Keep the newest ``MAX_PLANS`` plans (requests of jobs long gone go first)."""
    names = [n for n in os.listdir(dfd) if n.endswith(".plan")]
    if len(names) <= MAX_PLANS:
        return
    ages = []
    for n in names:
        try:
            ages.append((os.stat(n, dir_fd=dfd, follow_symlinks=False).st_mtime, n))
        except OSError:
            pass
    for _, n in sorted(ages)[:len(ages) - MAX_PLANS]:
        try:
            os.unlink(n, dir_fd=dfd)
        except OSError:
            pass


def write(uid: int, key: str, data: bytes, directory: tuple[int, str] | None = None) -> str | None:
    """Write a plan into ``directory`` (an open plan directory and its path; kept open),
    else into the caller's plan directory (opened here)."""
    if len(data) > MAX_SIZE:
        return None
    found = directory or plandir.open_dir(uid, create=True)
    if found is None:
        return None
    dfd, path = found
    name = plan_name(key)
    tmp = f".{name}.{os.getpid()}.{os.urandom(4).hex()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        _prune(dfd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dfd)
        except OSError:
            pass
        raise
    finally:
        if directory is None:
            os.close(dfd)
    return os.path.join(path, name)
