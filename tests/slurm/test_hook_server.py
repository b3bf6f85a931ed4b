"""The node's hook server on the cluster (shifter.spank.hookd, docs/dev.md): the first image
job's prolog on a node starts it; later prologs and epilogs run in it; a server whose code
changed, or that died, is replaced without the job noticing; only root reaches it."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time

import pytest

from helpers.prereq import USER1
from tools import cluster as cluster_tool
from shifter.spank import hookd

pytestmark = pytest.mark.slurm
NODE = "n2"


def _servers(node: str) -> list[int]:
    return cluster_tool.hook_servers([node])


def _job(runner, image_id, slurmd_logs) -> str:
    """An image job on NODE, its epilog done (the next request then is the test's)."""
    res = runner.run(["srun", "-N1", "-w", NODE, f"--image=id:{image_id}", "sh", "-c", "echo $SLURM_JOB_ID"],
                     check=True)
    job = res.stdout.strip()
    _hook_lines(slurmd_logs, job, "epilog")
    return job


def _hook_lines(slurmd_logs, job: str, hook: str) -> list[str]:
    pattern = f"shifter: {hook}: job={job} node={NODE}: "
    assert slurmd_logs.wait_for(lambda: any(pattern in l and "(cpu " in l for l in slurmd_logs.new_lines(NODE)))
    return [line for line in slurmd_logs.new_lines(NODE) if pattern in line and "(cpu " in line]


def _wait_server(old: set[int], timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = set(_servers(NODE)) - old
        if new and os.path.exists(hookd.socket_path(NODE)):
            return new.pop()
        time.sleep(0.05)
    pytest.fail(f"no new hook server for {NODE} (running: {_servers(NODE)})")


@pytest.fixture(scope="module")
def image_id(cluster, runner):
    return runner.run(["shifterimg", "lookup", "docker:test/busybox:latest"], check=True).stdout.strip()


def test_prologs_and_epilogs_run_in_the_nodes_hook_server(cluster, runner, slurmd_logs, image_id):
    _job(runner, image_id, slurmd_logs)  # starts one if none runs
    (pid,) = _servers(NODE)
    job = _job(runner, image_id, slurmd_logs)
    for hook in ("prolog", "epilog"):
        lines = _hook_lines(slurmd_logs, job, hook)
        assert lines and all("in the node's hook server" in line for line in lines), lines
    st = os.lstat(hookd.RUN_DIR)
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o700
    st = os.lstat(hookd.socket_path(NODE))
    assert stat.S_ISSOCK(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600
    slurmd = open(cluster_tool.slurmd_pidfile(cluster, NODE)).read().strip()
    for ns in ("mnt", "net"):  # it builds the node's containers in the node's namespaces
        assert os.stat(f"/proc/{pid}/ns/{ns}").st_ino == os.stat(f"/proc/{slurmd}/ns/{ns}").st_ino


def test_a_server_whose_code_changed_or_that_died_is_replaced(cluster, runner, slurmd_logs, image_id):
    _job(runner, image_id, slurmd_logs)
    old = set(_servers(NODE))
    assert old
    os.utime(hookd.__file__)  # an upgrade: the installed code is newer than the server's
    job = _job(runner, image_id, slurmd_logs)
    lines = _hook_lines(slurmd_logs, job, "prolog")
    assert all("before the hook" in line for line in lines), lines  # run in-process, not in the old code
    new = _wait_server(old)
    assert not set(_servers(NODE)) & old  # the stale one left
    job = _job(runner, image_id, slurmd_logs)
    assert all("in the node's hook server" in line for line in _hook_lines(slurmd_logs, job, "prolog"))

    os.kill(new, 9)  # a dead server: its socket is still there
    job = _job(runner, image_id, slurmd_logs)
    assert all("before the hook" in line for line in _hook_lines(slurmd_logs, job, "prolog"))
    _wait_server({new})
    state = subprocess.run(["scontrol", "show", "node", NODE], capture_output=True, text=True,
                           env=runner.env()).stdout
    assert "State=IDLE" in state or "State=ALLOCATED" in state or "State=MIXED" in state, state


def test_only_root_reaches_the_server(cluster, runner, slurmd_logs, image_id):
    _job(runner, image_id, slurmd_logs)
    probe = ("import socket; s = socket.socket(socket.AF_UNIX)\n"
             f"try:\n    s.connect({hookd.socket_path(NODE)!r}); print('connected')\n"
             "except OSError as e:\n    print(type(e).__name__)")
    res = runner.run([f"{cluster.prefix}/bin/python", "-c", probe], user=USER1, check=True)
    assert res.stdout.strip() == "PermissionError"


def test_hook_server_0_runs_the_hooks_in_slurmstepd(cluster, runner, slurmd_logs, image_id):
    """plugstack.conf ``hook_server=0``: a site that wants no long-lived process gets the
    prolog and epilog in slurmstepd's own Python, with a server running or not."""
    import re
    import shutil

    _job(runner, image_id, slurmd_logs)  # a server runs on NODE
    assert _servers(NODE)
    with open(cluster.plugstack_conf) as f:
        text = re.sub(r"^(required .*)$", r"\1 hook_server=0", f.read(), count=1, flags=re.M)
    conf, plug = cluster_tool.private_slurm_conf(cluster, text)
    os.chmod(plug, 0o644)
    pid = open(cluster_tool.slurmd_pidfile(cluster, NODE)).read().strip()
    subprocess.run(["nsenter", "-t", pid, "-m", "--", "mount", "--bind", plug, cluster.plugstack_conf], check=True)
    try:
        job = _job(runner, image_id, slurmd_logs)
        for hook in ("prolog", "epilog"):
            lines = _hook_lines(slurmd_logs, job, hook)
            assert lines and all("before the hook" in line for line in lines), lines
    finally:
        subprocess.run(["nsenter", "-t", pid, "-m", "--", "umount", cluster.plugstack_conf], check=False)
        shutil.rmtree(os.path.dirname(conf), ignore_errors=True)
    job = _job(runner, image_id, slurmd_logs)  # and back
    assert all("in the node's hook server" in line for line in _hook_lines(slurmd_logs, job, "prolog"))
