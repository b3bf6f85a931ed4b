"""The job prolog on every node of the allocation (root, PrologFlags=Alloc).

Policy (for everything that lands here later): raise (-> -1 -> Slurm drains the node)
only for a site fault; a problem caused by the user is cleaned up, recorded for the
job's own steps to report, and the prolog succeeds.
"""

from __future__ import annotations

from shifter.wlm import jobinfo


def run(sp, plugstack, options) -> None:
    job = jobinfo.from_spank(sp, options)
    sp.info(f"shifter: prolog: {job.describe()}")
