"""The job epilog on every node (root): removes every trace of the job's containers."""

from __future__ import annotations

from shifter.wlm import jobinfo


def run(sp, plugstack, options) -> None:
    job = jobinfo.from_spank(sp, options)
    sp.info(f"shifter: epilog: {job.describe()}")
