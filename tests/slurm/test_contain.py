"""The contain configuration of the local site (``tools/cluster up --contain``), brought up
for this module and the default one restored after it: PrologFlags=Alloc,Contain,
proctrack/cgroup, the plugin's --ccm, memory_cgroup (a level per node: the nodes share one
kernel), extern_cgroup and extern_setup.

- ``--ccm`` jobs run in a container of the host's own root, entered by the C shim in
  slurmstepd (no Python), never seeing other jobs' containers; ``--ccm --image`` is one
  error line at submission;
- the job's cgroup holds what the prolog left running (the test module ``daemon``'s
  roothook leaves a process, as the per-node sshd does); the extern step adopts it
  (``scontrol listpids``), extern_setup runs there; the epilog kills it and removes the
  cgroup, after normal ends, 50 jobs and a cancelled job alike.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time

import pytest

from helpers.prereq import USER1
from helpers.site_contain import (IMAGE, UID1, cgroup_jobs, contain_site,
                                  extern_step_holds_the_cgroup_and_cancel_leaves_nothing, job_dirs,
                                  module_daemons, user_workdir, wait_gone, wait_running)
from tools.site import MEMORY_CGROUP

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def contain(cluster, runner):
    with contain_site(cluster, runner) as site:
        yield site


@pytest.fixture
def workdir():
    with user_workdir() as d:
        yield d


def _root_source(mountinfo: str) -> set[str]:
    """Sources of the mounts at "/" as a task sees them (its root is the container's)."""
    out = set()
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 6 and fields[4] == "/" and "-" in fields:
            out.add(fields[fields.index("-") + 2])
    return out


# ------------------------------------------------------------------------------ --ccm
def test_ccm_tasks_run_in_the_host_root_entered_without_python(contain, runner, workdir):
    """srun --ccm -N3: every task is in its node's host-root container (the container's
    tmpfs is its "/", the host's programs are there), in its working directory, with the
    job's SHIFTER_CCM; slurmstepd never maps libpython for it."""
    marker = os.path.join(workdir, "ppid")
    script = (f"echo $(hostname) $(pwd) SHIFTER_CCM=$SHIFTER_CCM SHIFTER_IMAGETYPE=$SHIFTER_IMAGETYPE "
              f"$(test -x /usr/bin/srun && echo host-srun); "
              f"cat /proc/self/mountinfo > {workdir}/mounts.$(hostname); echo $PPID > {marker}.$(hostname); sleep 3")
    proc = subprocess.Popen(
        ["setpriv", f"--reuid={UID1}", "--regid=4242", "--init-groups", "--", "srun", "--ccm", "-N3",
         "/bin/sh", "-c", script], cwd=workdir, env=runner.env(USER1), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        python = {}
        deadline = time.monotonic() + 60
        while len(python) < 3 and time.monotonic() < deadline and proc.poll() is None:
            for node in ("n1", "n2", "n3"):
                path = f"{marker}.{node}"
                if node not in python and os.path.exists(path) and open(path).read().strip():
                    with open(f"/proc/{open(path).read().strip()}/maps") as f:
                        python[node] = "libpython" in f.read()
            time.sleep(0.05)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert python == {"n1": False, "n2": False, "n3": False}
    lines = sorted(out.splitlines())
    assert lines == [f"n{i} {workdir} SHIFTER_CCM=1 SHIFTER_IMAGETYPE=local host-srun"
                     for i in (1, 2, 3)], (out, err)
    for node in ("n1", "n2", "n3"):
        assert _root_source(open(os.path.join(workdir, f"mounts.{node}")).read()) == {"shifter-udi"}


def test_an_exclusive_ccm_job_reaches_its_other_nodes_over_the_jobs_sshd(contain, runner, workdir):
    """Cray CCM's point: ssh from one node of a --ccm job to another lands in the same
    job's host-root container there (the job's per-node sshd, docs/sshd.md).  In the host's
    root, `ssh` is the host's own client (port 22): the job's is /opt/udiImage/ssh/bin/ssh."""
    out = os.path.join(workdir, "ccm-ssh.out")
    script = ("srun -N1 -w n1 sh -c 'for n in n2 n3; do /opt/udiImage/ssh/bin/ssh -o BatchMode=yes $n "
              "\"echo \\$(hostname) \\$(stat -f -c %T /)\"; done'")
    res = runner.run(["sbatch", "--wait", "--ccm", "--exclusive", "-N3", f"--output={out}", "--wrap", script],
                     cwd=workdir, timeout=180)
    text = open(out).read() if os.path.exists(out) else ""
    assert res.returncode == 0, res.stderr + text
    assert text.split("\n")[:2] == ["n2 tmpfs", "n3 tmpfs"], text


def test_ccm_batch_script_runs_in_the_host_root(contain, runner, workdir):
    out = os.path.join(workdir, "batch.out")
    res = runner.run(["sbatch", "--parsable", "--ccm", "-N1", f"--output={out}", "--wrap",
                      "pwd; cat /proc/self/mountinfo"], cwd=workdir)
    assert res.returncode == 0, res.stderr
    wait_gone(runner, res.stdout.strip())
    text = open(out).read()
    assert text.splitlines()[0] == workdir and _root_source(text) == {"shifter-udi"}, text


def test_salloc_ccm_steps_run_in_the_host_root(contain, runner, workdir):
    res = runner.run(["salloc", "--ccm", "-N2", "srun", "-N2", "/bin/sh", "-c",
                      "echo $(hostname) $(pwd) SHIFTER_CCM=$SHIFTER_CCM; cat /proc/self/mountinfo"], cwd=workdir)
    assert res.returncode == 0, res.stderr
    assert sorted(ln for ln in res.stdout.splitlines() if "SHIFTER_CCM" in ln) == \
        [f"n1 {workdir} SHIFTER_CCM=1", f"n2 {workdir} SHIFTER_CCM=1"], res.stdout
    assert _root_source(res.stdout) == {"shifter-udi"}


def test_ccm_in_a_job_without_it_is_refused_and_a_leaked_variable_changes_nothing(contain, runner, workdir):
    """A step's --ccm in a job submitted without it is one error line at srun; a plain
    job whose environment carries SLURM_SPANK_SHIFTER_CCM=1 (submitted from a --ccm
    job's shell, say) runs as usual, outside any container."""
    res = runner.run(["salloc", "-N1", "srun", "--ccm", "true"], cwd=workdir)
    assert res.returncode != 0
    ours = [ln for ln in res.stderr.splitlines() if "shifter:" in ln]
    assert len(ours) == 1 and "shifter: --ccm can't be used in job " in ours[0], res.stderr
    plain = runner.run(["srun", "-N1", "--export=ALL,SLURM_SPANK_SHIFTER_CCM=1", "/bin/sh", "-c",
                        "echo $SLURM_SPANK_SHIFTER_CCM; cat /proc/self/mountinfo"], cwd=workdir)
    assert plain.returncode == 0 and "shifter:" not in plain.stderr, plain.stderr
    assert plain.stdout.splitlines()[0] == "1" and "shifter-udi" not in _root_source(plain.stdout)


def test_ccm_tasks_do_not_see_other_jobs_containers(contain, runner, workdir):
    """An image job runs on n1; a --ccm task on n1 sees neither the jobs' anchors nor
    that job's container, though the host's /var holds them."""
    res = runner.run(["sbatch", "--parsable", "-w", "n1", f"--image={IMAGE}", "--output=/dev/null",
                      "--wrap", "sleep 60"], cwd=workdir)
    assert res.returncode == 0, res.stderr
    other = res.stdout.strip()
    try:
        wait_running(runner, other)
        # RUNNING may come before n1's prolog has finished the container: wait for it
        deadline = time.monotonic() + 30
        while other not in job_dirs(contain, "n1") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert other in job_dirs(contain, "n1")
        probe = runner.run(["srun", "--ccm", "-w", "n1", "-N1", "/bin/sh", "-c",
                            f"ls /var/udiMount.jobs /var/udiLoopMount.jobs /var/udiMount.jobs/{other}/root/bin; "
                            "ls /var"], cwd=workdir)
        assert "/var/udiMount.jobs': No such file or directory" in probe.stdout + probe.stderr, probe
        assert "/var/udiLoopMount.jobs': No such file or directory" in probe.stdout + probe.stderr
        assert "busybox" not in probe.stdout
        assert "udiMount.jobs" not in probe.stdout.split() and "lib" in probe.stdout.split()
    finally:
        runner.run(["scancel", other], user=None)
        wait_gone(runner, other)


def test_ccm_working_directory_missing_in_the_container_goes_to_tmp_and_says_so(contain, runner, workdir):
    """The host's /var/tmp is not the container's (a fresh one): a step started there
    lands in /tmp, with shifter's message (as in Shifter)."""
    host_dir = tempfile.mkdtemp(prefix="ccm-cwd-", dir="/var/tmp")
    os.chown(host_dir, UID1, UID1)
    try:
        res = runner.run(["srun", "--ccm", "-N1", f"--chdir={host_dir}", "pwd"], cwd=workdir)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == "/tmp"
        assert (f"shifter: ccm: can't enter the working directory {host_dir} in the host-root container "
                "(No such file or directory): going to /tmp instead") in res.stderr, res.stderr
    finally:
        os.rmdir(host_dir)


@pytest.mark.parametrize("command", ["sbatch", "salloc", "srun"])
def test_ccm_with_image_is_refused_with_one_line(contain, runner, command, workdir):
    name = f"refused-ccm-{command}-{os.getpid()}"
    argv = [command, f"--job-name={name}", "--ccm", f"--image={IMAGE}"] + \
        (["--wrap", "true"] if command == "sbatch" else ["true"])
    res = runner.run(argv, cwd=workdir, timeout=60)
    assert res.returncode != 0
    ours = [ln for ln in res.stderr.splitlines() if "shifter:" in ln]
    assert len(ours) == 1 and (f"shifter: --ccm can't be used with --image={IMAGE}: a --ccm job runs in the "
                               "host's own root, not in an image") in ours[0], res.stderr
    assert not runner.run(["squeue", "-h", "-n", name], user=None).stdout.strip()  # no job at all


# --------------------------------------------------------------- cgroups, extern step
def test_the_extern_step_holds_the_job_cgroups_processes_and_cancel_leaves_nothing(
        contain, runner, slurmd_logs, workdir):
    """What the prolog leaves running (the daemon module's roothook: a process, as the
    sshd) is in the job's cgroup of each node, adopted into the job's extern step
    (scontrol listpids), and extern_setup ran there (slurmd log).  Cancelled mid-run,
    the job leaves no process, cgroup or container."""
    extern_step_holds_the_cgroup_and_cancel_leaves_nothing(contain, runner, slurmd_logs, workdir, MEMORY_CGROUP)


def test_fifty_jobs_leave_no_process_cgroup_or_container(contain, runner, workdir):
    jobs = []
    for i in range(50):
        args = ["--ccm"] if i % 2 else [f"--image={IMAGE}"]
        res = runner.run(["sbatch", "--parsable", "-N3", "--module=daemon", *args, "--output=/dev/null",
                          "--wrap", "srun -N3 true"], cwd=workdir)
        assert res.returncode == 0, res.stderr
        jobs.append(res.stdout.strip())
    for job in jobs:
        wait_gone(runner, job, timeout=300)
    deadline = time.monotonic() + 30
    while (cgroup_jobs() or module_daemons()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cgroup_jobs() == [] and module_daemons() == []
    for node in ("n1", "n2", "n3"):
        assert job_dirs(contain, node) == []
    # nor did Slurm's own cgroups of the jobs' steps stay (proctrack/cgroup, per node)
    left = [top for top, dirs, _ in os.walk("/sys/fs/cgroup/freezer") if re.search(r"/job_\d+$", top)
            and "/slurm_n" in top]
    assert left == []
