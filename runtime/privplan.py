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

from shifter.runtime import envrequest, plandir

MAGIC = "SHIFTER_PRIVATE"
VERSION = "1"
KEY_VERSION = "shifter-private-1"
MAX_SIZE = 1 << 20
MAX_PLANS = 64  # per user and node; the least recently written go first
_ID = re.compile(r"id:[0-9a-f]{64}\Z")
#: records with their arity (the operations of ``shifter.runtime.builder.planner`` as ``execute`` ran them)
ARITY = {"key": 1, "kind": 1, "root": 1, "fuse": 1, "input": 2, "env": 1, "userhook": 1, "cmd": 1,
         "mkdir": 2, "mkdirp": 1, "chmod": 2, "symlink": 2, "touch": 2, "file": 3, "mount": 5, "umount": 2,
         "bindkeep": 4, "hardentree": 2, "treekeep": 3, "loopmount": 3, "fusemount": 3, "copytree": 2,
         "chdir": 1, "dropstaging": 2}
#: which strings of a record are paths (``@`` = the user kind's staging directory)
PATHS = {"root": (0,), "mkdir": (0,), "mkdirp": (0,), "chmod": (0,), "symlink": (1,), "touch": (0,), "file": (0,),
         "mount": (0, 1), "umount": (0,), "bindkeep": (0, 1), "hardentree": (0,), "treekeep": (0,),
         "loopmount": (0, 1), "fusemount": (0, 1), "copytree": (0, 1), "chdir": (0,), "dropstaging": (0, 1)}
#: the numbers of the operations: record -> ((index, base, max), ...); "-1" is also allowed
#: where max is negative (treekeep BELOW)
_U32 = 0xFFFFFFFF
NUMBERS = {"mkdir": ((1, 8, 0o7777),), "chmod": ((1, 8, 0o7777),), "touch": ((1, 8, 0o7777),),
           "file": ((1, 8, 0o7777),), "mount": ((3, 10, _U32),), "umount": ((1, 10, 0x7FFFFFFF),),
           "hardentree": ((1, 10, _U32),), "loopmount": ((2, 10, _U32),), "fusemount": ((2, 10, _U32),),
           "bindkeep": ((2, 10, _U32), (3, 10, 1)), "treekeep": ((1, 10, _U32), (2, 10, -_U32))}
_SETTINGS = ("key", "kind", "root", "fuse")


def fnv1a64(data: bytes) -> int:
    h = 0xcbf29ce484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def request_key(env, config_path: str, uid: int, gid: int, groups) -> str | None:
    """The request key of ``shifter CMD`` (no option) in ``env``, or None when the
    launcher would not replay it (not an ``id:`` image)."""
    spec = envrequest.env_image_spec(env)
    if spec is None or not _ID.match(spec):
        return None
    module = envrequest.env_module(env)
    return "\n".join([
        KEY_VERSION, f"uid={uid}", f"gid={gid}", "groups=" + ",".join(str(g) for g in sorted(set(groups))),
        f"config={config_path}", f"image={spec}",
        "volume=" + (envrequest.env_volume(env) or ""),
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
        """``ex``: the executor that built the container (``shifter.runtime.builder.execute``)."""
        if ex.unsaveable:
            return None
        try:
            data = self.dumps(ex.done, root, fuse)
            check(loads(data), self.key, self.uid)  # a plan the launcher would refuse: none
            return write(self.uid, self.key, data, self.directory)
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
    """The records of a plan (for tests and tools): tuples of bytes.  ``ValueError`` if it
    is malformed: not NUL-terminated strings, another magic or version, an unknown record,
    one cut short, no END or anything after it."""
    items = data.split(b"\0")
    if items[-1] != b"" or items[:2] != [MAGIC.encode(), VERSION.encode()]:
        raise ValueError("not a private plan")
    items = items[2:-1]
    out, i = [], 0
    while i < len(items):
        name = items[i].decode(errors="replace")
        if name == "END":
            if i != len(items) - 1:
                raise ValueError("records after END")
            return out
        n = ARITY.get(name)
        if n is None or i + n >= len(items):
            raise ValueError(f"bad record {name!r}")
        out.append((name, *items[i + 1:i + 1 + n]))
        i += 1 + n
    raise ValueError("no END")


def _number(text: bytes, base: int, top: int) -> bool:
    if top < 0 and text == b"-1":
        return True
    digits = b"01234567" if base == 8 else b"0123456789"
    return bool(text) and all(c in digits for c in text) and int(text, base) <= abs(top)


def check(records, key: str, uid: int) -> None:
    """``ValueError`` unless the launcher replays these records (``loads``) for a caller
    with this request key and uid (docs/private-plans.md, "Strictness"; the launcher's
    ``parse`` follows the same rule: tests/data/contracts/private_plan.json)."""
    seen: dict[str, bytes] = {}
    fusemounts = 0
    for rec in records:
        name = rec[0]
        if name in _SETTINGS:
            if name in seen:
                raise ValueError(f"{name} given twice")
            seen[name] = rec[1]
        for index, base, top in NUMBERS.get(name, ()):
            if not _number(rec[1 + index], base, top):
                raise ValueError(f"malformed {name} record")
        fusemounts += name == "fusemount"
    for name in ("key", "kind", "root"):
        if name not in seen:
            raise ValueError(f"no {name} record")
    if seen["key"] != key.encode(errors="surrogateescape"):
        raise ValueError("the plan is another request's")
    if seen["kind"] not in (b"root", b"user"):
        raise ValueError(f"unknown kind {seen['kind']!r}")
    user = seen["kind"] == b"user"
    if user != (uid != 0):
        raise ValueError("the plan is for another kind of caller")
    if fusemounts > 1 or ((fusemounts or "fuse" in seen) and not (user and "fuse" in seen)):
        raise ValueError("fuse and fusemount: a user plan's, one each")
    for rec in records:
        if rec[0] == "dropstaging" and not user:
            raise ValueError("dropstaging in a root plan")
        for index in PATHS.get(rec[0], ()):
            path = rec[1 + index]
            if path.startswith(b"@") and not (user and (path == b"@" or path.startswith(b"@/"))):
                raise ValueError(f"bad staging path {path!r}")
        if rec[0] == "input" and rec[1].startswith(b"@"):
            raise ValueError("an input in the staging directory")


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
