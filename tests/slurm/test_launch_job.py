"""Inside a job whose nodes' prologs prepared its container, `srun -N3 shifter ...` runs in
the image on every node through the fast path; steps asking for something else get
private containers."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from helpers.site_jobs import batch, forget_node_plans
from tools import cluster as cluster_tool

pytestmark = pytest.mark.slurm


def _ns(site, node, argv, env=None):
    pid = open(cluster_tool.slurmd_pidfile(site, node)).read().strip()
    return subprocess.run(["nsenter", "-t", pid, "-m", "--", *argv], capture_output=True, text=True,
                          env={"SHIFTER_CONFIG": os.path.join(site.prefix, "etc", "udiRoot.conf"),
                               "PATH": "/usr/bin:/bin:/usr/sbin:/sbin", **(env or {})})


def test_srun_shifter_on_three_prepared_nodes(cluster, runner):
    """The prolog of every node prepared the job's container; `srun -N3 shifter` enters it
    through the compiled fast path (the command's parent is slurmstepd: no launcher or
    Python process stays, no private container is built)."""
    step = ("srun -N3 --ntasks-per-node=1 --label /opt/shifter/bin/shifter "
            "sh -c 'echo $(hostname) $(id -u) $(grep ^ID= /etc/os-release) "
            "$(test -r /var/shifter/launch.plan && echo prepared) "
            "$(tr \"\\0\" \" \" < /proc/$PPID/cmdline | cut -d\" \" -f1)'")
    output = batch(runner, ["-N3", "--image=docker:test/busybox:latest"], step)
    rows = sorted(ln.split(": ", 1)[1] for ln in output.splitlines() if ": " in ln)
    assert rows == [f"{n} 4242 ID=busybox prepared slurmstepd:" for n in ("n1", "n2", "n3")], output


def test_srun_shifter_private_containers_replay_their_plan(cluster, runner):
    """A step asking for other volumes than the job's prepared container gets a private
    one: the first `srun shifter` on each node builds it with Python and records it; the
    next identical step is built by the compiled launcher (the command's parent is no
    longer Python)."""
    forget_node_plans()
    step = ("srun -N3 --ntasks-per-node=1 --label env SHIFTER_VOLUME=/tmp:/scratch /opt/shifter/bin/shifter "
            "sh -c 'echo $(hostname) $(grep ^ID= /etc/os-release) $(tr \"\\0\" \" \" < /proc/$PPID/cmdline | cut -d\" \" -f1)'")
    output = batch(runner, ["-N3", "--image=docker:test/busybox:latest"], f"{step}; echo second; {step}")
    first, second = output.split("second\n")
    for text, parent in ((first, "/opt/shifter/bin/python"), (second, "/opt/shifter/bin/shifter")):
        rows = sorted(ln.split(": ", 1)[1] for ln in text.splitlines() if ": " in ln)
        assert rows == [f"{n} ID=busybox {parent}" for n in ("n1", "n2", "n3")], output


def test_a_signal_to_the_step_reaches_the_command_once_and_spares_the_image(cluster, runner):
    """`scancel -s USR1 JOB.STEP` makes slurmstepd signal every process of the step: the
    command handles it once (the launcher does not forward Slurm's signals) and keeps
    running from its image (the FUSE server ignores it)."""
    out = f"/tmp/shifter-job-{os.getpid()}.out"
    ready = f"/tmp/shifter-ready-{os.getpid()}"
    script = ("trap 'echo got-usr1' USR1; echo ready > " + ready + "; i=0; "
              "while [ $i -lt 30 ]; do /bin/sleep 0.1; i=$((i+1)); done; head -1 /etc/os-release")
    res = runner.run(["sbatch", "-N1", f"--output={out}", "--image=docker:test/busybox:latest", "--wrap",
                      "srun /opt/shifter/bin/shifter sh -c \"" + script.replace("$", "\\$") + "\""])
    assert res.returncode == 0, res.stderr
    job = re.search(r"(\d+)", res.stdout).group(1)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(ready):
            assert time.monotonic() < deadline, "the step did not start"
            time.sleep(0.1)
        subprocess.run(["scancel", "-s", "USR1", f"{job}.0"], env=runner.env(), check=True)
        while runner.run(["squeue", "-h", "-j", job], user=None).stdout.strip():
            assert time.monotonic() < deadline, "job did not finish"
            time.sleep(0.2)
        text = open(out).read()
        assert text.count("got-usr1") == 1, text
        assert "Bus error" not in text and 'NAME="BusyBox"' in text, text
    finally:
        subprocess.run(["scancel", job], env=runner.env())
        for path in (out, ready):
            if os.path.exists(path):
                os.unlink(path)


def test_mpi_ranks_in_private_containers_on_one_node(cluster, runner):
    """`srun --mpi=pmi2 -n2 shifter /app/mpi-hello` in a job whose node prepared nothing:
    each rank gets its own private container, in the user's one user namespace on the
    node, so MPI's shared memory between them works (in separate namespaces UCX fails
    with 'Shared memory error').  Twice: Python builds, then replays."""
    step = "srun --mpi=pmi2 -n2 /opt/shifter/bin/shifter /app/mpi-hello"
    text = batch(runner, ["-N1", "-n2", "--image=docker:test/debian:latest"], f"{step}; echo second; {step}")
    for part in text.split("second\n"):
        assert sorted(ln for ln in part.splitlines() if ln.startswith("hello")) == [
            "hello from rank 0 of 2 on n1", "hello from rank 1 of 2 on n1"], text
    assert "error" not in text.lower(), text


def test_shifter_job_script_volumes_from_submission_to_the_container(cluster, runner):
    """A Shifter job script's volumes: #SBATCH lines (Slurm expands no $USER there) with a
    trailing-slash source and a per-node cache with ro.  sbatch accepts them, says on its
    stderr what Shifter ignores, hands the job the canonical text; the node's setupRoot
    builds from it; `srun shifter` sees the user's directory and a writable XFS cache."""
    import pwd

    home = pwd.getpwnam("sftest1").pw_dir
    vol = os.path.join(home, f"shifter-vol-{os.getpid()}")
    os.makedirs(vol)
    os.chown(vol, 4242, 4242)
    with open(os.path.join(vol, "input"), "w") as f:
        f.write("job input\n")
    ready, out = f"/tmp/shifter-ready-{os.getpid()}", f"/tmp/shifter-job-{os.getpid()}.out"
    script = os.path.join(vol, "job.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\n#SBATCH -N1 -w n1\n#SBATCH --image=docker:test/busybox:latest\n"
                f"#SBATCH --volume={vol}/:/data/;/global/cscratch1/sd/$USER/:/mnt:perNodeCache=size=300M:ro\n"
                f"#SBATCH --output={out}\n"
                f"echo \"volume=$SLURM_SPANK_SHIFTER_VOLUME\"; while [ ! -e {ready} ]; do sleep 0.1; done\n"
                "srun -N1 /opt/shifter/bin/shifter sh -c "
                "'cat /data/input; echo w > /mnt/w && cat /mnt/w; grep -c \" /mnt xfs \" /proc/mounts'\n")
    res = runner.run(["sbatch", script])
    assert res.returncode == 0, res.stderr
    job = re.search(r"(\d+)", res.stdout).group(1)
    warnings = [ln for ln in res.stderr.splitlines() if "shifter: warning: volume map 2 " in ln]
    assert len(warnings) == 2, res.stderr
    assert "'$'" in warnings[0] and "'ro' ignored" in warnings[1], res.stderr
    canonical = f"/global/cscratch1/sd/USER:/mnt:perNodeCache=size=300M;{vol}:/data"
    try:
        deadline = time.monotonic() + 60
        while not (os.path.exists(out) and "volume=" in open(out).read()):
            assert time.monotonic() < deadline, "job did not start"
            time.sleep(0.2)
        assert open(out).read().splitlines()[0] == f"volume={canonical}"
        res = _ns(cluster, "n1", ["/opt/shifter/bin/setupRoot", "-U", "4242", "-v", canonical, "id",
                                  runner.run(["shifterimg", "lookup", "docker:test/busybox:latest"],
                                             check=True).stdout.strip()],
                  env={"SLURM_JOB_ID": job})
        assert res.returncode == 0 and "warning" not in res.stderr, res.stderr
        open(ready, "w").close()
        deadline = time.monotonic() + 60
        while runner.run(["squeue", "-h", "-j", job], user=None).stdout.strip():
            assert time.monotonic() < deadline, "job did not finish"
            time.sleep(0.2)
        # the step inherits the job's --volume: no second round of warnings
        assert open(out).read().splitlines()[1:] == ["job input", "w", "1"], open(out).read()
    finally:
        subprocess.run(["scancel", job], env=runner.env())
        _ns(cluster, "n1", ["/opt/shifter/bin/unsetupRoot"])
        for path in (ready, out):
            if os.path.exists(path):
                os.unlink(path)
        import shutil

        shutil.rmtree(vol)
