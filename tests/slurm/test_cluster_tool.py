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


def test_every_node_has_a_shared_root_like_a_systemd_host(cluster):
    """Outside review, item 14: the nodes' namespaces had a private /, which hid mounts
    propagating to the host.  Each node is private towards the machine, shared inside."""
    site = cluster
    for node in site.node_names():
        pid = daemons.running(tool.slurmd_pidfile(site, node), "slurmd")
        assert tool.node_root_shared(pid), node
        assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt"), node


def test_the_suite_itself_runs_on_a_shared_root():
    """tools/test runs pytest in its own mount namespace with / rshared (as CI does)."""
    from conftest import require

    require(tool.node_root_shared(os.getpid()), "pytest's / is not shared: run the suite with tools/test")
