"""What the prolog/epilog know about the job: id, node, user and its shifter request.

The request arrives through the job-control environment (``SPANK_SHIFTER_*``), set at
submission by the plugin after validation.
"""

from __future__ import annotations

import os
from shifter.frozen import frozen

from shifter.runtime import envrequest as E
from shifter.spank.handle import SpankHandle

#: the job's request as the prolog and epilog see it (shifter.runtime.envrequest)
_IMAGE, _IMAGETYPE, _VOLUME, _MODULE, _CCM = (E.PROLOG_PREFIX + n for n in (E.IMAGE, E.IMAGETYPE, E.VOLUME, E.MODULE,
                                                                            E.CCM))
_REQUESTS = (E.PROLOG_PREFIX + E.IMAGEREQUEST, E.PROLOG_PREFIX + E.IMAGEREQUEST_OLD)


@frozen
class JobInfo:
    job_id: int | None
    node: str
    uid: int | None
    gid: int | None
    image_type: str | None
    image: str | None
    request: str | None
    volume: str | None
    module: str | None
    ccm: bool

    def describe(self) -> str:
        return (
            f"job={self.job_id} node={self.node} uid={self.uid} "
            f"imagetype={self.image_type or '-'} image={self.image or '-'} request={self.request or '-'}"
        )


def from_spank(sp: SpankHandle, options: dict[str, str], environ=os.environ) -> JobInfo:
    node = environ.get("SLURMD_NODENAME") or os.uname().nodename
    return JobInfo(
        job_id=sp.job_id(),
        node=node,
        uid=sp.job_uid(),
        gid=sp.job_gid(),
        image_type=environ.get(_IMAGETYPE) or None,
        image=environ.get(_IMAGE) or None,
        request=environ.get(_REQUESTS[0]) or environ.get(_REQUESTS[1]) or None,
        volume=environ.get(_VOLUME) or options.get("volume"),
        module=environ.get(_MODULE) or options.get("module"),
        ccm=environ.get(_CCM) == "1" or "ccm" in options,
    )


@frozen
class Allocation:
    """The job's nodes, its CPUs on each (its slots: ``/var/hostsfile``), and whether it
    has its nodes to itself (the job's sshd needs that)."""

    hosts: tuple[tuple[str, int], ...]
    exclusive: bool


class AllocationQuery:
    """A running ``scontrol show job -d -o JOB``: its pid and the read ends of its stdout
    and stderr.  Started with ``os.posix_spawn`` at the prolog's first line so the round
    trip to slurmctld overlaps the prolog's imports (``subprocess`` alone costs ~5 ms of
    import, and a query started later was waited for)."""

    def __init__(self, pid: int, out_fd: int, err_fd: int):
        self.pid, self.out_fd, self.err_fd = pid, out_fd, err_fd
        self.collected = False


_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"


def _find(name: str, path: str = _PATH) -> str:
    for d in path.split(":"):
        candidate = os.path.join(d, name)
        if os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(f"{name} is not in {path}")


def query_allocation(job_id: int, argv0: str = "scontrol", path: str = _PATH) -> AllocationQuery:
    """Start ``scontrol show job -d -o JOB`` (slurmctld knows the job's CPUs per node and
    whether it shares its nodes; the prolog's environment says neither).  ``read_allocation``
    collects it, so the prolog works meanwhile.  Raises OSError if it can't be started."""
    env = {"PATH": path}
    if os.environ.get("SLURM_CONF"):
        env["SLURM_CONF"] = os.environ["SLURM_CONF"]
    exe = _find(argv0, path)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        pid = os.posix_spawn(exe, [argv0, "show", "job", "-d", "-o", str(int(job_id))], env, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)])
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    return AllocationQuery(pid, out_r, err_r)


def _collect(query: AllocationQuery, timeout: float) -> tuple[int | None, bytes, bytes]:
    """Read the query's stdout and stderr to their ends and reap it; (None, ...) if that
    took longer than ``timeout`` (it is killed then).  Closes the pipes."""
    import select
    import signal
    import time

    query.collected = True
    bufs = {query.out_fd: bytearray(), query.err_fd: bytearray()}
    poller = select.poll()
    for fd in bufs:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    open_fds = set(bufs)
    try:
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(query.pid, signal.SIGKILL)
                os.waitpid(query.pid, 0)
                return None, bytes(bufs[query.out_fd]), bytes(bufs[query.err_fd])
            for fd, _ in poller.poll(left * 1000):
                chunk = os.read(fd, 65536)
                if chunk:
                    bufs[fd] += chunk
                else:
                    poller.unregister(fd)
                    open_fds.discard(fd)
    finally:
        os.close(query.out_fd)
        os.close(query.err_fd)
    _, status = os.waitpid(query.pid, 0)
    return os.waitstatus_to_exitcode(status), bytes(bufs[query.out_fd]), bytes(bufs[query.err_fd])


def read_allocation(query: AllocationQuery, timeout: float = 30.0) -> Allocation:
    from shifter.errors import ShifterError

    code, out, err = _collect(query, timeout)
    if code is None:
        raise ShifterError(f"scontrol show job did not answer within {timeout:.0f} s")
    text, etext = out.decode(errors="replace"), err.decode(errors="replace")
    if code != 0:
        raise ShifterError(f"scontrol show job failed: {etext.strip() or text.strip() or f'exit {code}'}")
    return parse_allocation(text)


def _count_cpus(ids: str) -> int:
    n = 0
    for part in ids.split(","):
        lo, dash, hi = part.partition("-")
        n += int(hi) - int(lo) + 1 if dash else 1
    return n


def parse_allocation(text: str) -> Allocation:
    """From ``scontrol show job -d -o``: ``NodeList=``, ``OverSubscribe=`` (``NO``: the
    nodes are the job's alone) and the detail groups ``Nodes=<list> CPU_IDs=<ids>``."""
    from shifter.errors import ShifterError
    from shifter.runtime import hostsfile

    words = text.split()
    fields = dict(w.split("=", 1) for w in words if "=" in w)
    nodelist = fields.get("NodeList")
    if not nodelist or nodelist == "(null)":
        raise ShifterError("scontrol show job gave no NodeList")
    cpus: dict[str, int] = {}
    for i, word in enumerate(words):
        if word.startswith("Nodes=") and i + 1 < len(words) and words[i + 1].startswith("CPU_IDs="):
            count = _count_cpus(words[i + 1][len("CPU_IDs="):])
            for host in hostsfile.expand_nodelist(word[len("Nodes="):]):
                cpus[host] = count
    hosts = hostsfile.expand_nodelist(nodelist)
    if set(hosts) - set(cpus):  # no detail: the job's CPUs spread evenly (Shifter's rule)
        per = max(1, int(fields.get("NumCPUs", "1").split("-")[0]) // max(1, len(hosts)))
        cpus = {h: cpus.get(h, per) for h in hosts}
    return Allocation(hosts=tuple((h, cpus[h]) for h in hosts), exclusive=fields.get("OverSubscribe") == "NO")

