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

import contextlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import replace

import pytest

from helpers.prereq import USER1
from shifter.tools import cluster as cluster_tool
from shifter.tools.site import MEMORY_CGROUP

pytestmark = pytest.mark.slurm
IMAGE = "docker:test/busybox:latest"
UID1 = pwd.getpwnam(USER1).pw_uid if USER1 else 4242


def _jobs(runner) -> list[str]:
    return runner.run(["squeue", "-h", "-o", "%i"], user=None).stdout.split()


def _wait_gone(runner, job, timeout=90):
    deadline = time.monotonic() + timeout
    while runner.run(["squeue", "-h", "-j", job], user=None).stdout.strip():
        assert time.monotonic() < deadline, f"job {job} did not finish"
        time.sleep(0.2)


def _wait_running(runner, job, timeout=60):
    deadline = time.monotonic() + timeout
    while runner.run(["squeue", "-h", "-o", "%T", "-j", job], user=None).stdout.strip() != "RUNNING":
        assert time.monotonic() < deadline, f"job {job} did not start"
        time.sleep(0.2)


def _cgroup_jobs(mount=MEMORY_CGROUP) -> list[str]:
    top = os.path.join(mount, "shifter", f"uid_{UID1}")
    return sorted(os.listdir(top)) if os.path.isdir(top) else []


def _daemons() -> list[int]:
    """The test module's daemons (`sleep 100000` left by its roothook) on the machine."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read() == b"sleep\x00100000\x00":
                    out.append(int(pid))
        except OSError:
            pass
    return out


def _node_pid(site, node):
    return open(cluster_tool.slurmd_pidfile(site, node)).read().strip()


def _job_dirs(site, node) -> list[str]:
    res = subprocess.run(["nsenter", "-t", _node_pid(site, node), "-m", "--", "ls", "-A", "/var/udiMount.jobs"],
                         capture_output=True, text=True)
    return [n for n in res.stdout.split() if n.isdigit()]


@contextlib.contextmanager
def contain_site(cluster, runner, cgroup_mount: str = ""):
    """The contain configuration (``cgroup_mount``: the job's cgroup hierarchy, default the
    v1 memory one), up for a module; the default one back afterwards (after every job of
    ours is gone, so no extern step outlives its Slurm)."""
    deadline = time.monotonic() + 180  # a job another test left to finish by itself
    while _jobs(runner):
        assert time.monotonic() < deadline, "the cluster is busy: the contain configuration restarts Slurm"
        time.sleep(1)
    site = replace(cluster, contain=True, cgroup_mount=cgroup_mount)
    cluster_tool.up(site, images=False)
    try:
        yield site
    finally:
        for job in _jobs(runner):
            runner.run(["scancel", job], user=None)
            _wait_gone(runner, job)
        cluster_tool.up(replace(cluster, contain=False, cgroup_mount=""), images=False)
        _remove_slurm_cgroups()
    assert _cgroup_jobs(cgroup_mount or MEMORY_CGROUP) == [] and _daemons() == []


@pytest.fixture(scope="module")
def contain(cluster, runner):
    with contain_site(cluster, runner) as site:
        yield site


def _remove_slurm_cgroups():
    """proctrack/cgroup leaves its empty per-node roots (slurm_<node>) in the controllers
    it used; the default configuration does not use them."""
    import glob

    for top in glob.glob("/sys/fs/cgroup/*/slurm_n*"):
        for path, _dirs, _files in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
            os.rmdir(path)


@pytest.fixture
def workdir():
    home = pwd.getpwnam(USER1).pw_dir
    d = tempfile.mkdtemp(prefix="contain-", dir=home)
    os.chown(d, UID1, UID1)
    yield d
    shutil.rmtree(d, ignore_errors=True)


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
    _wait_gone(runner, res.stdout.strip())
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
        _wait_running(runner, other)
        assert other in _job_dirs(contain, "n1")
        probe = runner.run(["srun", "--ccm", "-w", "n1", "-N1", "/bin/sh", "-c",
                            f"ls /var/udiMount.jobs /var/udiLoopMount.jobs /var/udiMount.jobs/{other}/root/bin; "
                            "ls /var"], cwd=workdir)
        assert "/var/udiMount.jobs': No such file or directory" in probe.stdout + probe.stderr, probe
        assert "/var/udiLoopMount.jobs': No such file or directory" in probe.stdout + probe.stderr
        assert "busybox" not in probe.stdout
        assert "udiMount.jobs" not in probe.stdout.split() and "lib" in probe.stdout.split()
    finally:
        runner.run(["scancel", other], user=None)
        _wait_gone(runner, other)


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
def _extern_pids(runner, job, node) -> set[int]:
    res = runner.run(["scontrol", "listpids", job, node], user=None)
    if res.returncode != 0:  # the extern step is not up yet
        return set()
    return {int(f[0]) for f in (ln.split() for ln in res.stdout.splitlines()[1:])
            if len(f) >= 3 and f[2] == "extern" and f[0].isdigit() and int(f[0]) > 0}


def test_the_extern_step_holds_the_job_cgroups_processes_and_cancel_leaves_nothing(
        contain, runner, slurmd_logs, workdir):
    """What the prolog leaves running (the daemon module's roothook: a process, as the
    sshd) is in the job's cgroup of each node, adopted into the job's extern step
    (scontrol listpids), and extern_setup ran there (slurmd log).  Cancelled mid-run,
    the job leaves no process, cgroup or container."""
    extern_step_holds_the_cgroup_and_cancel_leaves_nothing(contain, runner, slurmd_logs, workdir, MEMORY_CGROUP)


def extern_step_holds_the_cgroup_and_cancel_leaves_nothing(contain, runner, slurmd_logs, workdir, mount):
    res = runner.run(["sbatch", "--parsable", "-N2", f"--image={IMAGE}", "--module=daemon",
                      "--output=/dev/null", "--wrap", "sleep 120"], cwd=workdir)
    assert res.returncode == 0, res.stderr
    job = res.stdout.strip()
    _wait_running(runner, job)
    nodelist = runner.run(["squeue", "-h", "-o", "%N", "-j", job], user=None).stdout.strip()
    nodes = sorted(runner.run(["scontrol", "show", "hostnames", nodelist], user=None).stdout.split())
    assert len(nodes) == 2
    for node in nodes:
        procs = os.path.join(mount, "shifter", f"uid_{UID1}", f"job_{job}", node, "cgroup.procs")
        deadline = time.monotonic() + 20
        while True:  # (a job is RUNNING before its prolog is done)
            try:
                pids = {int(p) for p in open(procs).read().split()}
            except FileNotFoundError:
                pids = set()
            held = _extern_pids(runner, job, node) if pids else set()
            if pids and pids <= held or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert pids and pids <= held, (node, pids, held)
        assert all(open(f"/proc/{p}/cmdline", "rb").read() == b"sleep\x00100000\x00" for p in pids)
        assert slurmd_logs.wait_for(lambda n=node: any(
            f"shifter: extern_setup: job {job}: site extern_setup ran for job {job} as uid 0" in ln
            for ln in slurmd_logs.new_lines(n))), node
    runner.run(["scancel", job], user=None)
    _wait_gone(runner, job)
    deadline = time.monotonic() + 30
    while (f"job_{job}" in _cgroup_jobs(mount) or _daemons()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert f"job_{job}" not in _cgroup_jobs(mount) and _daemons() == []
    for node in nodes:
        assert job not in _job_dirs(contain, node)


def test_fifty_jobs_leave_no_process_cgroup_or_container(contain, runner, workdir):
    jobs = []
    for i in range(50):
        args = ["--ccm"] if i % 2 else [f"--image={IMAGE}"]
        res = runner.run(["sbatch", "--parsable", "-N3", "--module=daemon", *args, "--output=/dev/null",
                          "--wrap", "srun -N3 true"], cwd=workdir)
        assert res.returncode == 0, res.stderr
        jobs.append(res.stdout.strip())
    for job in jobs:
        _wait_gone(runner, job, timeout=300)
    deadline = time.monotonic() + 30
    while (_cgroup_jobs() or _daemons()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _cgroup_jobs() == [] and _daemons() == []
    for node in ("n1", "n2", "n3"):
        assert _job_dirs(contain, node) == []
    # nor did Slurm's own cgroups of the jobs' steps stay (proctrack/cgroup, per node)
    left = [top for top, dirs, _ in os.walk("/sys/fs/cgroup/freezer") if re.search(r"/job_\d+$", top)
            and "/slurm_n" in top]
    assert left == []
