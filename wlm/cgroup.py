"""The job's cgroup on a node (plugstack ``memory_cgroup=<mount>``).

The prolog makes ``<mount>/shifter/uid_<uid>/job_<job id>`` (plus ``/<node>`` with
``cgroup_per_node=1``: where several nodes share one kernel, as on the local site, the
path would otherwise be the same for every node of a job and the first epilog would kill
every node's processes) and moves itself into it, so the container's setup and what it
leaves running (the per-node sshd) are there.  The epilog kills every process in it and
removes the levels it made (a level still used by another job stays).

cgroup v1 (a controller's hierarchy, e.g. ``/sys/fs/cgroup/memory``) and v2 (the unified
hierarchy, e.g. ``/sys/fs/cgroup`` or ``/sys/fs/cgroup/unified``) are both handled:

- processes join through ``cgroup.procs`` (both);
- v2 kills the whole cgroup at once with ``cgroup.kill`` (Linux 5.14+); v1 has no such
  file: the epilog sends SIGKILL to every pid listed, again until the list is empty
  (a process forking meanwhile is caught by the next round);
- memory limits: v1 has ``memory.limit_in_bytes`` in every level (the site sets it on
  ``<mount>/shifter`` or on a level below; hierarchical when ``memory.use_hierarchy=1``);
  v2 has ``memory.max`` only where the parent enables the controller in
  ``cgroup.subtree_control`` (the prolog enables what the parent offers in each level it
  makes).  A v2 hierarchy without controllers still contains and kills.

The path rule is one contract with the C shim, which adopts the cgroup's processes into
the job's extern step (``spank/cgroup_path.h``; vectors ``tests/data/contracts/job_cgroup.json``).
"""

from __future__ import annotations

import errno
import os
import re
import signal
import time
from shifter.frozen import frozen

from shifter.errors import ConfigError

_NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def levels(uid: int, job_id: int, node: str | None = None) -> tuple[str, ...]:
    """The levels below the mount: ``shifter``, ``uid_<uid>``, ``job_<job>``[, ``<node>``]."""
    if not (isinstance(uid, int) and uid >= 0 and isinstance(job_id, int) and job_id > 0):
        raise ValueError(f"bad uid {uid!r} or job id {job_id!r} for a cgroup")
    out = ("shifter", f"uid_{uid}", f"job_{job_id}")
    if node is not None:
        if not _NODE_RE.match(node):
            raise ValueError(f"node name {node!r} can't be a cgroup level")
        out += (node,)
    return out


def job_path(mount: str, uid: int, job_id: int, node: str | None = None) -> str:
    """``<mount>/shifter/uid_<uid>/job_<job>[/<node>]`` (mount's trailing '/' dropped)."""
    return "/".join((mount.rstrip("/"), *levels(uid, job_id, node)))


def version(mount: str, mountinfo: str = "/proc/self/mountinfo") -> int:
    """1 or 2: the type of the cgroup filesystem mounted at ``mount`` (the deepest mount
    point at or above it); ConfigError when it is no cgroup filesystem."""
    mount = os.path.realpath(mount)
    best, fstype = "", None
    with open(mountinfo) as f:
        for line in f:
            fields = line.split()
            point = fields[4].replace("\\040", " ")
            kind = fields[fields.index("-") + 1]
            if (mount == point or mount.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                best, fstype = point, kind
    if fstype == "cgroup2":
        return 2
    if fstype == "cgroup":
        return 1
    raise ConfigError(f"memory_cgroup={mount} is not a cgroup hierarchy (it is on {fstype or 'nothing'})",
                      "point memory_cgroup at a mounted cgroup v1 controller (/sys/fs/cgroup/memory) or "
                      "the cgroup v2 hierarchy")


@frozen
class JobCgroup:
    mount: str
    uid: int
    job_id: int
    node: str | None = None  # with cgroup_per_node=1

    @property
    def path(self) -> str:
        return job_path(self.mount, self.uid, self.job_id, self.node)

    def _level_paths(self) -> list[str]:
        out, here = [], self.mount.rstrip("/") or "/"
        for name in levels(self.uid, self.job_id, self.node):
            here = os.path.join(here, name)
            out.append(here)
        return out

    def create(self) -> str:
        """Make every missing level (root's, 0755); v2: enable in each new level's parent
        the controllers it offers (memory, pids, ...), so limits can be set below."""
        if not os.path.isdir(self.mount):
            raise ConfigError(f"memory_cgroup={self.mount} does not exist",
                              "mount the cgroup hierarchy or fix memory_cgroup in plugstack.conf")
        v2 = version(self.mount) == 2
        parent = self.mount
        for path in self._level_paths():
            if v2:
                _enable_controllers(parent)
            try:
                os.mkdir(path, 0o755)
            except FileExistsError:
                pass
            parent = path
        return self.path

    def join(self, pid: int = 0) -> None:
        """Move ``pid`` (0: this process) into the job's cgroup."""
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(f"{pid or os.getpid()}\n")

    def pids(self) -> list[int]:
        """The processes in the job's cgroup and below it ([] when it is gone)."""
        out: list[int] = []
        for top, _dirs, _files in os.walk(self.path):
            try:
                with open(os.path.join(top, "cgroup.procs")) as f:
                    out += [int(x) for x in f.read().split()]
            except FileNotFoundError:
                continue
        return out

    def kill(self, timeout: float = 10.0) -> int:
        """SIGKILL every process in the job's cgroup; returns how many were listed at
        first.  v2: ``cgroup.kill``; v1 (or an older kernel): every pid, until none is left."""
        first = self.pids()
        if not first:
            return 0
        kill_file = os.path.join(self.path, "cgroup.kill")
        if os.path.exists(kill_file):
            with open(kill_file, "w") as f:
                f.write("1\n")
        deadline = time.monotonic() + timeout
        while True:
            left = self.pids()
            if not left:
                return len(first)
            if time.monotonic() > deadline:
                raise OSError(errno.EBUSY, f"processes {left[:10]} survive SIGKILL in {self.path}")
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)

    def remove(self) -> list[str]:
        """Remove the job's levels, deepest first: the job's (and node's) always (after
        ``kill``), ``uid_<uid>`` and ``shifter`` only when no other job uses them.  Returns
        the paths removed."""
        removed = []
        for path in reversed(self._level_paths()):
            for _ in range(50):  # a killed process may take a moment to leave the cgroup
                try:
                    os.rmdir(path)
                    removed.append(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno not in (errno.EBUSY, errno.ENOTEMPTY) or not path.startswith(self.path):
                        return removed  # a shared level still in use: keep it
                    time.sleep(0.02)
            else:
                raise OSError(errno.EBUSY, f"can't remove {path}: still in use")
        return removed


def _enable_controllers(parent: str) -> None:
    try:
        with open(os.path.join(parent, "cgroup.controllers")) as f:
            offered = f.read().split()
        with open(os.path.join(parent, "cgroup.subtree_control")) as f:
            enabled = set(f.read().split())
    except OSError:
        return
    for name in offered:
        if name not in enabled:
            try:
                with open(os.path.join(parent, "cgroup.subtree_control"), "w") as f:
                    f.write(f"+{name}\n")
            except OSError:
                pass  # a controller the parent can't hand down (processes in it, say)


def for_job(plugstack, job) -> JobCgroup | None:
    """The job's cgroup on this node, or None when the site has no ``memory_cgroup``."""
    if not plugstack.memory_cgroup or job.uid is None or job.job_id is None:
        return None
    return JobCgroup(plugstack.memory_cgroup, job.uid, job.job_id,
                     job.node if plugstack.cgroup_per_node else None)
