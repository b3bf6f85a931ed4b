"""tools/cluster itself: idempotent `up` that heals a dead slurmd and resumes a drained
node, `status`, and the environment file."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from shifter.tools import cluster as tool
from shifter.tools import daemons

pytestmark = pytest.mark.slurm


def _state(site, node):
    return tool.node_states(site).get(node, "")


def test_up_heals_a_dead_slurmd_and_resumes_a_drained_node(cluster):
    site = cluster
    pid = daemons.running(tool.slurmd_pidfile(site, "n2"), "slurmd")
    assert pid
    os.kill(pid, signal.SIGKILL)
    subprocess.run(["scontrol", "update", "nodename=n3", "state=drain", "reason=test"],
                   env=tool.slurm_env(site), check=True, capture_output=True)
    assert "drain" in _state(site, "n3")
    tool.up(site, images=False)
    assert daemons.running(tool.slurmd_pidfile(site, "n2"), "slurmd") not in (None, pid)
    assert {n: _state(site, n) for n in site.node_names()} == {n: "idle" for n in site.node_names()}


def test_up_twice_changes_nothing(cluster):
    site = cluster
    before = {n: daemons.running(tool.slurmd_pidfile(site, n), "slurmd") for n in site.node_names()}
    ctld = daemons.running(os.path.join(site.run, "slurmctld.pid"), "slurmctld")
    t0 = time.monotonic()
    tool.up(site, images=False)
    assert time.monotonic() - t0 < 10
    assert {n: daemons.running(tool.slurmd_pidfile(site, n), "slurmd") for n in site.node_names()} == before
    assert daemons.running(os.path.join(site.run, "slurmctld.pid"), "slurmctld") == ctld


def test_status_and_env_file(cluster):
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    res = subprocess.run([os.path.join(checkout, "tools", "cluster"), "status"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    for node in cluster.node_names():
        assert f"node {node:7} idle" in res.stdout
    assert "gateway" in res.stdout and "registry-5000" in res.stdout
    env = open(os.path.join(checkout, ".cluster", "env.sh")).read()
    assert f"SLURM_CONF={cluster.slurm_conf}" in env and "SHIFTER_CONFIG=" in env
    assert cluster.bindir in env
