"""The contain configuration with memory_cgroup on the cgroup v2 hierarchy
(/sys/fs/cgroup/unified here, which has no controllers): the prolog puts what it leaves
running in the job's v2 cgroup, the extern step adopts it, a cancelled job leaves nothing
(the epilog uses cgroup.kill).  The default configuration is restored afterwards."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from conftest import require
from shifter.tools import cluster as cluster_tool
from test_contain import (_cgroup_jobs, _daemons, _jobs, _remove_slurm_cgroups, _wait_gone,  # noqa: F401
                          extern_step_holds_the_cgroup_and_cancel_leaves_nothing, workdir)

pytestmark = pytest.mark.slurm
V2 = "/sys/fs/cgroup/unified"


@pytest.fixture(scope="module")
def contain_v2(cluster, runner):
    require(os.path.exists(os.path.join(V2, "cgroup.controllers")), f"needs a cgroup v2 hierarchy at {V2}")
    import time

    deadline = time.monotonic() + 180
    while _jobs(runner):
        assert time.monotonic() < deadline, "the cluster is busy: the contain configuration restarts Slurm"
        time.sleep(1)
    site = replace(cluster, contain=True, cgroup_mount=V2)
    cluster_tool.up(site, images=False)
    try:
        yield site
    finally:
        for job in _jobs(runner):
            runner.run(["scancel", job], user=None)
            _wait_gone(runner, job)
        cluster_tool.up(replace(cluster, contain=False, cgroup_mount=""), images=False)
        _remove_slurm_cgroups()
    assert _cgroup_jobs(V2) == [] and _daemons() == []


def test_v2_the_extern_step_holds_the_job_cgroups_processes_and_cancel_leaves_nothing(
        contain_v2, runner, slurmd_logs, workdir):  # noqa: F811
    extern_step_holds_the_cgroup_and_cancel_leaves_nothing(contain_v2, runner, slurmd_logs, workdir, V2)
