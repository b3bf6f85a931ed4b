"""The job prolog on every node of the allocation (root, PrologFlags=Alloc).

Policy (for everything that lands here later): raise (-> -1 -> Slurm drains the node)
only for a site fault; a problem caused by the user is cleaned up, recorded for the
job's own steps to report, and the prolog succeeds.

It makes the job user's plan directory on the node (``shifter.runtime.plandir``:
``/var/lib/shifter/users/<node>/<uid>``), where their private plans and the rendezvous
of their shared user namespace live.  It is kept after the job (the epilog leaves it):
the user's tasks in other jobs and outside jobs on the node share it.  A failure there
is logged and does not drain the node: the user's tasks use their home directory's.
"""

from __future__ import annotations

from shifter.errors import ShifterError
from shifter.wlm import jobinfo


def run(sp, plugstack, options) -> None:
    job = jobinfo.from_spank(sp, options)
    sp.info(f"shifter: prolog: {job.describe()}")
    make_plan_dir(sp, job)


def make_plan_dir(sp, job: jobinfo.JobInfo) -> None:
    from shifter.runtime import plandir

    if job.uid is None or job.gid is None:
        return
    try:
        plandir.prepare(job.uid, job.gid)
    except (ShifterError, OSError) as e:
        sp.error(f"shifter: prolog: {e}")
