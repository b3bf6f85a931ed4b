"""What the prolog/epilog know about the job: id, node, user and its shifter request.

The request arrives through the job-control environment (``SPANK_SHIFTER_*``), set at
submission by the plugin after validation.
"""

from __future__ import annotations

import os
from shifter.frozen import frozen

from shifter.errors import ShifterError
from shifter.runtime import envrequest as E

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


def from_spank(sp, options: dict[str, str], environ=os.environ) -> JobInfo:
    """The job as a prolog or epilog sees it: ``sp`` is the hook's SPANK handle (the
    interface ``shifter.spank.handle.SpankHandle``, passed down by the SPANK layer)."""
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


_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"


def query_allocation(job_id: int, path: str = _PATH):
    """Start ``scontrol show job -d -o JOB`` (slurmctld knows the job's CPUs per node and
    whether it shares its nodes; the prolog's environment says neither) and return it
    running (``shifter.spawn.Child``): the prolog starts it at its first line so the round
    trip overlaps its imports, and ``read_allocation`` collects it.  OSError if it can't
    be started."""
    # start-up: spawn (~1 ms with select), image jobs only: every job's prolog and epilog
    # import this module
    from shifter import spawn

    env = {"PATH": path}
    if os.environ.get("SLURM_CONF"):
        env["SLURM_CONF"] = os.environ["SLURM_CONF"]
    return spawn.start(["scontrol", "show", "job", "-d", "-o", str(int(job_id))], env)


def read_allocation(query, timeout: float = 30.0) -> Allocation:
    from shifter import spawn  # start-up: as in query_allocation (which imported it already)

    code, out, err = spawn.collect(query, timeout)
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
    from shifter.runtime import hostsfile  # start-up: re (~10 ms), only an image job's prolog parses this

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

