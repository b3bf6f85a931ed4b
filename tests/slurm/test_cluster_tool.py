"""tools/cluster itself: idempotent `up` that heals a dead slurmd (inside the namespace
its node kept) and resumes a drained node, the nodes' namespace holders, `status`, and
the environment file."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import replace

import pytest

from tools import cluster as tool
from tools import daemons

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


def _pids(site):
    return {n: (daemons.running(tool.slurmd_pidfile(site, n), "slurmd"), tool.holder_running(site, n))
            for n in site.node_names()}


def test_up_twice_changes_nothing(cluster):
    site = cluster
    before = _pids(site)
    assert all(slurmd and holder for slurmd, holder in before.values()), before
    ctld = daemons.running(os.path.join(site.run, "slurmctld.pid"), "slurmctld")
    t0 = time.monotonic()
    tool.up(site, images=False)
    assert time.monotonic() - t0 < 10
    assert _pids(site) == before
    assert daemons.running(os.path.join(site.run, "slurmctld.pid"), "slurmctld") == ctld


def _in_node(pid, *argv, check=True):
    res = subprocess.run(["nsenter", f"--target={pid}", "--mount", "--uts", "--", *argv],
                         capture_output=True, text=True)
    assert res.returncode == 0 or not check, res.stderr
    return res


def _mountpoints(pid):
    with open(f"/proc/{pid}/mountinfo") as f:
        return {line.split()[4] for line in f}


def test_a_dead_slurmd_restarts_inside_the_namespace_its_node_kept(cluster):
    """On the local site slurmd used to be the only process holding its node's mount
    namespace: a restarted slurmd saw a new one, without the mounts the node's jobs had
    made.  The node's holder keeps it, and `up` restarts slurmd inside."""
    site = cluster
    node = "n2"
    pid = daemons.running(tool.slurmd_pidfile(site, node), "slurmd")
    holder = tool.holder_running(site, node)
    ns = tool.mount_ns(pid)
    assert holder and tool.mount_ns(holder) == ns != tool.mount_ns(os.getpid())
    where = tempfile.mkdtemp(prefix="shifter-node-mount-")
    try:
        _in_node(pid, "mount", "-t", "tmpfs", "-o", "size=1m", "shifter-test", where)
        _in_node(pid, "sh", "-c", f"echo made-before > {where}/marker")
        assert not os.path.exists(os.path.join(where, "marker"))  # the node's own mount
        os.kill(pid, signal.SIGKILL)
        daemons.wait_for(lambda: daemons.running(tool.slurmd_pidfile(site, node), "slurmd") is None, 10,
                         "the killed slurmd to go")
        tool.up(site, images=False)
        new = daemons.running(tool.slurmd_pidfile(site, node), "slurmd")
        assert new not in (None, pid)
        assert tool.mount_ns(new) == ns
        assert tool.holder_running(site, node) == holder
        assert where in _mountpoints(new)
        assert _in_node(new, "cat", f"{where}/marker").stdout == "made-before\n"
        assert _in_node(new, "hostname").stdout.strip() == node
        assert {n: _state(site, n) for n in site.node_names()} == {n: "idle" for n in site.node_names()}
    finally:
        _in_node(holder, "umount", where, check=False)
        os.rmdir(where)


def test_a_dead_holder_is_replaced_inside_the_living_slurmds_namespace(cluster):
    """A holder killed while its slurmd lives: `up` leaves slurmd alone and starts a new
    holder in slurmd's namespace (making a new one would lose the node's mounts at the
    next slurmd restart)."""
    site = cluster
    node = "n3"
    slurmd = daemons.running(tool.slurmd_pidfile(site, node), "slurmd")
    holder = tool.holder_running(site, node)
    os.kill(holder, signal.SIGKILL)
    daemons.wait_for(lambda: tool.holder_running(site, node) is None, 10, "the killed holder to go")
    tool.up(site, images=False)
    new = tool.holder_running(site, node)
    assert new not in (None, holder)
    assert daemons.running(tool.slurmd_pidfile(site, node), "slurmd") == slurmd
    assert tool.mount_ns(new) == tool.mount_ns(slurmd)
    assert _in_node(new, "hostname").stdout.strip() == node


@pytest.mark.root
def test_a_node_namespace_has_what_a_node_has_and_down_stops_its_holder():
    """The helpers on a scratch site: a new node namespace gets its hostname, the hosts
    file, a boot id of its own and a shared / private towards us; setting it up again
    mounts nothing twice; nodes_down stops the holder by its pidfile."""
    with tempfile.TemporaryDirectory(prefix="shifter-site-") as root:
        site = replace(tool.Site(), root=root, nodes=1)
        for d in (site.run, site.log, site.etc):
            os.makedirs(d)
        with open(os.path.join(site.etc, "hosts"), "w") as f:
            f.write("127.0.1.1\tn1\n")
        holder = tool.start_holder(site, "n1")
        try:
            assert tool.holder_running(site, "n1") == holder
            tool.node_setup(site, "n1", holder, fresh=True)
            tool.node_setup(site, "n1", holder)
            assert _in_node(holder, "hostname").stdout.strip() == "n1"
            assert _in_node(holder, "cat", "/etc/hosts").stdout == "127.0.1.1\tn1\n"
            boot_id = _in_node(holder, "cat", tool.BOOT_ID).stdout
            assert boot_id == open(tool.boot_id_file(site, "n1")).read()
            assert boot_id != open(tool.BOOT_ID).read()
            mounts = [line.split()[4] for line in open(f"/proc/{holder}/mountinfo")]
            assert mounts.count("/etc/hosts") == 1 and mounts.count(tool.BOOT_ID) == 1, mounts
            assert tool.node_root_shared(holder)
            assert tool.mount_ns(holder) != tool.mount_ns(os.getpid())
        finally:
            tool.nodes_down(site)
        assert tool.holder_running(site, "n1") is None
        assert daemons.live_argv(holder) is None
        assert not os.path.exists(tool.holder_pidfile(site, "n1"))
        assert not os.path.exists(tool.boot_id_file(site, "n1"))


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
    from helpers.prereq import require

    require(tool.node_root_shared(os.getpid()), "pytest's / is not shared: run the suite with tools/test")
