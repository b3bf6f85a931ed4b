"""The contain configuration of the local site for slurm-tier tests: bringing it up for a
module and back, the jobs, cgroups and containers a job leaves, and the extern-step check
both cgroup hierarchies run."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import replace

from helpers.prereq import USER1
from tools import cluster as cluster_tool
from tools.site import MEMORY_CGROUP

IMAGE = "docker:test/busybox:latest"
UID1 = pwd.getpwnam(USER1).pw_uid if USER1 else 4242


def queued_jobs(runner) -> list[str]:
    return runner.run(["squeue", "-h", "-o", "%i"], user=None).stdout.split()


def wait_gone(runner, job, timeout=90):
    deadline = time.monotonic() + timeout
    while runner.run(["squeue", "-h", "-j", job], user=None).stdout.strip():
        assert time.monotonic() < deadline, f"job {job} did not finish"
        time.sleep(0.2)


def wait_running(runner, job, timeout=60):
    deadline = time.monotonic() + timeout
    while runner.run(["squeue", "-h", "-o", "%T", "-j", job], user=None).stdout.strip() != "RUNNING":
        assert time.monotonic() < deadline, f"job {job} did not start"
        time.sleep(0.2)


def cgroup_jobs(mount=MEMORY_CGROUP) -> list[str]:
    top = os.path.join(mount, "shifter", f"uid_{UID1}")
    return sorted(os.listdir(top)) if os.path.isdir(top) else []


def module_daemons() -> list[int]:
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


def node_pid(site, node):
    return open(cluster_tool.slurmd_pidfile(site, node)).read().strip()


def job_dirs(site, node) -> list[str]:
    res = subprocess.run(["nsenter", "-t", node_pid(site, node), "-m", "--", "ls", "-A", "/var/udiMount.jobs"],
                         capture_output=True, text=True)
    return [n for n in res.stdout.split() if n.isdigit()]


@contextlib.contextmanager
def contain_site(cluster, runner, cgroup_mount: str = ""):
    """The contain configuration (``cgroup_mount``: the job's cgroup hierarchy, default the
    v1 memory one), up for a module; the default one back afterwards (after every job of
    ours is gone, so no extern step outlives its Slurm)."""
    deadline = time.monotonic() + 180  # a job another test left to finish by itself
    while queued_jobs(runner):
        assert time.monotonic() < deadline, "the cluster is busy: the contain configuration restarts Slurm"
        time.sleep(1)
    site = replace(cluster, contain=True, cgroup_mount=cgroup_mount)
    cluster_tool.up(site, images=False)
    try:
        yield site
    finally:
        for job in queued_jobs(runner):
            runner.run(["scancel", job], user=None)
            wait_gone(runner, job)
        cluster_tool.up(replace(cluster, contain=False, cgroup_mount=""), images=False)
        remove_slurm_cgroups()
    assert cgroup_jobs(cgroup_mount or MEMORY_CGROUP) == [] and module_daemons() == []


def remove_slurm_cgroups():
    """proctrack/cgroup leaves its empty per-node roots (slurm_<node>) in the controllers
    it used; the default configuration does not use them."""
    for top in glob.glob("/sys/fs/cgroup/*/slurm_n*"):
        for path, _dirs, _files in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
            os.rmdir(path)


@contextlib.contextmanager
def user_workdir():
    """A directory of sftest1's in its home (jobs start there)."""
    home = pwd.getpwnam(USER1).pw_dir
    d = tempfile.mkdtemp(prefix="contain-", dir=home)
    os.chown(d, UID1, UID1)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def extern_pids(runner, job, node) -> set[int]:
    res = runner.run(["scontrol", "listpids", job, node], user=None)
    if res.returncode != 0:  # the extern step is not up yet
        return set()
    return {int(f[0]) for f in (ln.split() for ln in res.stdout.splitlines()[1:])
            if len(f) >= 3 and f[2] == "extern" and f[0].isdigit() and int(f[0]) > 0}


def extern_step_holds_the_cgroup_and_cancel_leaves_nothing(contain, runner, slurmd_logs, workdir, mount):
    """What the prolog leaves running is in the job's cgroup under ``mount`` on each node, adopted
    by the extern step, extern_setup ran; cancelled, the job leaves nothing."""
    res = runner.run(["sbatch", "--parsable", "-N2", f"--image={IMAGE}", "--module=daemon",
                      "--output=/dev/null", "--wrap", "sleep 120"], cwd=workdir)
    assert res.returncode == 0, res.stderr
    job = res.stdout.strip()
    wait_running(runner, job)
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
            held = extern_pids(runner, job, node) if pids else set()
            if pids and pids <= held or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert pids and pids <= held, (node, pids, held)
        assert all(open(f"/proc/{p}/cmdline", "rb").read() == b"sleep\x00100000\x00" for p in pids)
        assert slurmd_logs.wait_for(lambda n=node: any(
            f"shifter: extern_setup: job {job}: site extern_setup ran for job {job} as uid 0" in ln
            for ln in slurmd_logs.new_lines(n))), node
    runner.run(["scancel", job], user=None)
    wait_gone(runner, job)
    deadline = time.monotonic() + 30
    while (f"job_{job}" in cgroup_jobs(mount) or module_daemons()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert f"job_{job}" not in cgroup_jobs(mount) and module_daemons() == []
    for node in nodes:
        assert job not in job_dirs(contain, node)
