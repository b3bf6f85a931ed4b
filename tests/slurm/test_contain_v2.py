"""The contain configuration with memory_cgroup on the cgroup v2 hierarchy
(/sys/fs/cgroup/unified here, which has no controllers): the prolog puts what it leaves
running in the job's v2 cgroup, the extern step adopts it, a cancelled job leaves nothing
(the epilog uses cgroup.kill).  The default configuration is restored afterwards."""

from __future__ import annotations

import os

import pytest

from helpers.prereq import require
from helpers.site_contain import contain_site, extern_step_holds_the_cgroup_and_cancel_leaves_nothing, user_workdir

pytestmark = pytest.mark.slurm
V2 = "/sys/fs/cgroup/unified"


@pytest.fixture(scope="module")
def contain_v2(cluster, runner):
    require(os.path.exists(os.path.join(V2, "cgroup.controllers")), f"needs a cgroup v2 hierarchy at {V2}")
    with contain_site(cluster, runner, cgroup_mount=V2) as site:
        yield site


@pytest.fixture
def workdir():
    with user_workdir() as d:
        yield d


def test_v2_the_extern_step_holds_the_job_cgroups_processes_and_cancel_leaves_nothing(
        contain_v2, runner, slurmd_logs, workdir):
    extern_step_holds_the_cgroup_and_cancel_leaves_nothing(contain_v2, runner, slurmd_logs, workdir, V2)
