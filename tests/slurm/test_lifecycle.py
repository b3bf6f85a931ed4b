"""The job lifecycle on the real cluster: every node's prolog prepares the job's container
(at the job's own path, ``shifter.runtime.jobpath``), `srun shifter` enters it, the epilog
removes every trace; a user's mistake found on the node is recorded for the job's steps
and never drains the node."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time

import pytest

from conftest import USER1, USER2
from shifter.runtime import config as udiconfig
from shifter.tools import cluster as cluster_tool

pytestmark = pytest.mark.slurm
PROBE = ("echo $(hostname) $(id -u) $(test -r /var/shifter/launch.plan && echo prepared) "
         "$(stat -f -c %T /tmp) $(ls /input)")


def _node_pid(site, node):
    return open(cluster_tool.slurmd_pidfile(site, node)).read().strip()


def _node_mounts(site, node, needle):
    with open(f"/proc/{_node_pid(site, node)}/mountinfo") as f:
        return [ln.split()[4] for ln in f if needle in ln.split()[4]]


def _wait_gone(runner, job, timeout=90):
    deadline = time.monotonic() + timeout
    while runner.run(["squeue", "-h", "-j", job], user=None).stdout.strip():
        assert time.monotonic() < deadline, f"job {job} did not finish"
        time.sleep(0.2)


@pytest.fixture
def userdirs():
    home = pwd.getpwnam(USER1).pw_dir
    d = tempfile.mkdtemp(prefix="lifecycle-", dir=home)
    for sub in ("in", "out"):
        os.mkdir(os.path.join(d, sub))
    open(os.path.join(d, "in", "input-file"), "w").close()
    for root, dirs, files in os.walk(d):
        for name in [root, *(os.path.join(root, f) for f in dirs + files)]:
            os.chown(name, 4242, 4242)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_the_prolog_prepares_every_node_and_the_epilog_leaves_nothing(cluster, runner, userdirs):
    """Shifter's standard job: #SBATCH --image and --volume with a per-node cache on /tmp,
    `srun -N2 shifter ...`: every step runs in the container the prolog prepared."""
    config = udiconfig.load(cluster.udiroot_conf)
    out = os.path.join(userdirs, "job.out")
    script = (f"#!/bin/sh\n#SBATCH -N2\n#SBATCH --image=docker:test/busybox:latest\n"
              f"#SBATCH --volume={userdirs}/in:/input;{userdirs}/out:/output;"
              f"/scratch/cache:/tmp:perNodeCache=size=300M\n"
              f"srun -N2 --ntasks-per-node=1 shifter sh -c '{PROBE}'\n")
    path = os.path.join(userdirs, "job.sh")
    with open(path, "w") as f:
        f.write(script)
    res = runner.run(["sbatch", f"--output={out}", path], cwd=userdirs)
    assert res.returncode == 0, res.stderr
    job = re.search(r"(\d+)", res.stdout).group(1)
    _wait_gone(runner, job)
    rows = sorted(ln for ln in open(out).read().splitlines() if ln.strip())
    assert rows == [f"{n} 4242 prepared xfs input-file" for n in ("n1", "n2")], open(out).read()
    for node in ("n1", "n2"):
        assert _node_mounts(cluster, node, f".jobs/{job}") == [], node
    caches = [n for n in os.listdir(config.perNodeCachePath) if f".{job}." in n]
    assert caches == []


def test_another_users_job_container_is_closed(cluster, runner, userdirs):
    ready = os.path.join(userdirs, "ready")
    res = runner.run(["sbatch", "-N1", "-w", "n1", "--image=docker:test/busybox:latest",
                      f"--volume={userdirs}/in:/input", "--output=/dev/null",
                      "--wrap", f"touch {ready}; sleep 60"], cwd=userdirs)
    assert res.returncode == 0, res.stderr
    job = re.search(r"(\d+)", res.stdout).group(1)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(ready):
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.2)
        pid = _node_pid(cluster, "n1")
        jobdir = f"{cluster_tool_udi_mount(cluster)}.jobs/{job}"

        def as_user(user, argv):
            return subprocess.run(["nsenter", "-t", pid, "-m", "--", "setpriv", f"--reuid={user}",
                                   f"--regid={user}", "--clear-groups", *argv], capture_output=True, text=True)

        st = subprocess.run(["nsenter", "-t", pid, "-m", "--", "stat", "-c", "%u %a", jobdir],
                            capture_output=True, text=True)
        assert st.stdout.split() == ["0", "710"], st.stdout  # 0700 + the job user's search ACL
        theirs = as_user(4243, ["ls", f"{jobdir}/root/input"])
        assert theirs.returncode != 0 and "Permission denied" in theirs.stderr
        assert as_user(4243, ["chroot", f"{jobdir}/root", "true"]).returncode != 0
        mine = as_user(4242, ["cat", f"{jobdir}/root/var/shifter/launch.plan"])
        assert mine.returncode == 0
        assert as_user(4242, ["cat", f"{jobdir}/root/var/shifter/udi.json"]).returncode != 0
    finally:
        subprocess.run(["scancel", job], env=runner.env())
        _wait_gone(runner, job)


def cluster_tool_udi_mount(site) -> str:
    return udiconfig.load(site.udiroot_conf).udiMount


def test_a_users_mistake_on_the_node_is_recorded_and_the_node_stays_up(cluster, runner, userdirs):
    """The volume source vanishes between submission and the prolog: the prolog records it,
    every `shifter` of the job's own request prints that line (compiled launcher and
    Python alike) and fails, a step asking for something else still runs, no node drains."""
    gone = os.path.join(userdirs, "gone")
    os.mkdir(gone)
    os.chown(gone, 4242, 4242)
    out = os.path.join(userdirs, "mistake.out")
    steps = ("shifter true; echo rc=$?; "
             "SHIFTER_NO_FAST_PATH=1 shifter true; echo rc=$?; "
             f"shifter --volume={userdirs}/in:/input echo private-ok; echo rc=$?")
    res = runner.run(["sbatch", "-N1", "-w", "n2", "--hold", f"--output={out}",
                      "--image=docker:test/busybox:latest", f"--volume={gone}:/data", "--wrap", steps],
                     cwd=userdirs)
    assert res.returncode == 0, res.stderr
    job = re.search(r"(\d+)", res.stdout).group(1)
    os.rmdir(gone)
    subprocess.run(["scontrol", "release", job], env=runner.env(), check=True, capture_output=True)
    _wait_gone(runner, job)
    text = open(out).read()
    lines = text.splitlines()
    errors = [ln for ln in lines if ln.startswith("shifter:")]
    assert len(errors) == 2 and errors[0] == errors[1] and gone in errors[0], text
    assert [ln for ln in lines if ln.startswith("rc=")] == ["rc=125", "rc=125", "rc=0"], text
    assert "private-ok" in lines
    state = runner.run(["sinfo", "-h", "-n", "n2", "-o", "%T"], user=None).stdout.strip()
    assert "drain" not in state, state
    assert _node_mounts(cluster, "n2", f".jobs/{job}") == []


def test_a_batch_script_run_by_shifter_runs_in_the_prepared_container(cluster, runner, userdirs):
    """`#!/usr/bin/shifter /bin/bash` as the script's first line, with #SBATCH --image: the
    whole script runs in the job's container (the local site's /usr/bin/shifter and its
    siteFs of the slurmd spool, where Slurm keeps the script)."""
    out = os.path.join(userdirs, "script.out")
    path = os.path.join(userdirs, "inside.sh")
    with open(path, "w") as f:
        f.write("#!/usr/bin/shifter /bin/bash\n#SBATCH -N1\n#SBATCH --image=docker:test/debian:latest\n"
                "grep ^ID= /etc/os-release\ntest -r /var/shifter/launch.plan && echo prepared\n"
                "echo \"$BASH_VERSION\" | cut -c1\n")
    res = runner.run(["sbatch", f"--output={out}", path], cwd=userdirs)
    assert res.returncode == 0, res.stderr
    _wait_gone(runner, re.search(r"(\d+)", res.stdout).group(1))
    assert open(out).read().split() == ["ID=debian", "prepared", "5"], open(out).read()
