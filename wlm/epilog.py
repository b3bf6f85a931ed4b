"""The job epilog on every node (root): removes every trace of the job's containers."""

from __future__ import annotations

from shifter.wlm import hookcpu, jobinfo


def run(sp, plugstack, options) -> None:
    job = jobinfo.from_spank(sp, options)
    sp.info(f"shifter: epilog: {job.describe()}")
    release_cgroup(sp, plugstack, job)
    if job.image and job.image_type:
        remove_container(sp, plugstack, job)


def release_cgroup(sp, plugstack, job: jobinfo.JobInfo) -> None:
    """With ``memory_cgroup``: kill every process in the job's cgroup on this node (the
    sshd, anything it started) and remove its levels (``shifter.wlm.cgroup``), before the
    container goes.  Idempotent; failing to is a site fault (raised: the node drains)."""
    # start-up: re and signal (~12 ms); spank.job_script imports this module beside the prolog,
    # and a prolog must not pay for the epilog's imports
    from shifter.wlm import cgroup

    cg = cgroup.for_job(plugstack, job)
    if cg is None:
        return
    killed = cg.kill()
    removed = cg.remove()
    if killed or removed:
        sp.info(f"shifter: epilog: job={job.job_id} node={job.node}: killed {killed} process(es) in "
                f"{cg.path}, removed {len(removed)} cgroup level(s)")


def remove_container(sp, plugstack, job: jobinfo.JobInfo) -> None:
    """Remove the job's container on this node (``udi.teardown_job``: idempotent, after a
    full, failed or killed prolog).  Failing to is a site fault: raised (the node drains)."""
    # start-up: the runtime (~25 ms cold), image jobs only (and never in a prolog, see above)
    from shifter.runtime import config as udiconfig
    from shifter.runtime import jobpath
    from shifter.runtime.builder import udi

    if not jobpath.valid_job_id(job.job_id):
        return
    config = udiconfig.load(plugstack.shifter_config)

    udi.teardown_job(config, job.job_id, log=lambda m: sp.info(f"shifter: epilog: job={job.job_id} "
                                                                f"node={job.node}: {m} ({hookcpu.cpu_time()})"))
