"""The job's sshd and /var/hostsfile on the real cluster (docs/sshd.md).

The local site runs the plugin with ``enable_sshd=1`` (tools/cluster.py).  On a site
brought up before that, the ``sshd_on`` fixture lays a plugstack.conf with it over the
site's in every node's namespace, and the tests submit with a slurm.conf naming it.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from helpers.prereq import USER1, USER2
from shifter.runtime import config as udiconfig
from shifter.runtime import hostsfile
from tools import cluster as cluster_tool

pytestmark = pytest.mark.slurm
BUSYBOX, DEBIAN = "docker:test/busybox:latest", "docker:test/debian:latest"
PORT = 1204


def _node_pid(site, node) -> str:
    return open(cluster_tool.slurmd_pidfile(site, node)).read().strip()


def _in_node(site, node, *argv) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", "-t", _node_pid(site, node), "-m", "-u", "--", *argv],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def sshd_on(cluster):
    """The slurm.conf to submit with, sshd enabled on every node."""
    with open(cluster.plugstack_conf) as f:
        text = f.read()
    if re.search(r"^required .*\benable_sshd=1\b", text, re.M):
        yield cluster.slurm_conf
        return
    text = re.sub(r"^(required .*)$", r"\1 enable_sshd=1", text, count=1, flags=re.M)
    conf, plug = cluster_tool.private_slurm_conf(cluster, text)
    os.chmod(os.path.dirname(conf), 0o755)
    os.chmod(conf, 0o644)
    os.chmod(plug, 0o644)
    bound = []
    try:
        for node in cluster.node_names():
            res = _in_node(cluster, node, "mount", "--bind", plug, cluster.plugstack_conf)
            assert res.returncode == 0, res.stderr
            bound.append(node)
        yield conf
    finally:
        for node in bound:
            _in_node(cluster, node, "umount", cluster.plugstack_conf)
        shutil.rmtree(os.path.dirname(conf), ignore_errors=True)


@pytest.fixture
def workdir():
    home = pwd.getpwnam(USER1).pw_dir
    d = tempfile.mkdtemp(prefix="sshd-", dir=home)
    os.chown(d, 4242, 4242)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _submit(runner, conf, argv, user=USER1, cwd=None) -> str:
    res = runner.run(["sbatch", "--parsable", *argv], user=user, cwd=cwd, env={"SLURM_CONF": conf})
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().split(";")[0]


def _wait_gone(runner, job, timeout=120, drained_ok=False):
    deadline = time.monotonic() + timeout
    while runner.run(["squeue", "-h", "-j", job], user=None).stdout.strip():
        assert time.monotonic() < deadline, f"job {job} did not finish"
        if not drained_ok:  # a failed prolog drains its nodes: say why at once
            reasons = runner.run(["sinfo", "-h", "-R", "-o", "%N %E"], user=None).stdout.strip()
            assert not reasons, f"job {job}: nodes drained: {reasons}"
        time.sleep(0.2)


def _wait_file(path, timeout=90):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)


def _script(workdir, name, text) -> str:
    path = os.path.join(workdir, name)
    with open(path, "w") as f:
        f.write(text)
    os.chown(path, 4242, 4242)
    return path


def _run_job(runner, conf, argv, workdir, user=USER1, timeout=180) -> tuple[str, str]:
    out = os.path.join(workdir, f"job-{time.monotonic_ns()}.out")
    job = _submit(runner, conf, [f"--output={out}", *argv], user=user, cwd=workdir)
    _wait_gone(runner, job, timeout)
    return job, open(out).read() if os.path.exists(out) else ""


def _leftovers(site) -> list[str]:
    """What a job's sshd could leave: a listener on the port, a process in a job's
    container, a job directory, a pid file."""
    found = []
    with open("/proc/net/tcp") as f:
        for line in list(f)[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and local.endswith(f":{PORT:04X}"):
                found.append(f"listener {local}")
    udi_mount = udiconfig.load(site.udiroot_conf).udiMount
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                root = os.readlink(f"/proc/{name}/root")
            except OSError:
                continue
            if root.startswith(udi_mount + ".jobs/"):
                found.append(f"process {name} in {root}")
    for node in site.node_names():
        res = _in_node(site, node, "sh", "-c", f"ls -A {udi_mount}.jobs/ 2>/dev/null")
        found += [f"{node}: {udi_mount}.jobs/{n}" for n in res.stdout.split() if n != ".fault"]
    return found


@pytest.mark.parametrize("image", [BUSYBOX, DEBIAN], ids=["busybox", "debian"])
def test_ssh_between_every_pair_of_a_jobs_containers(cluster, runner, sshd_on, workdir, image):
    """From each node's container, `ssh nJ` lands in the job's container on nJ (the
    injected client on PATH, node names resolving, the user's key), for every pair."""
    probe = _script(workdir, "probe.sh", (
        "for h in n1 n2 n3; do\n"
        "  echo \"$(hostname)->$(ssh $h 'echo $(hostname) $(id -un) $(cat /var/hostsfile | wc -l) "
        "$(test -e /etc/debian_version && echo debian || echo busybox)' 2>&1)\"\n"
        "done\n"))
    job, out = _run_job(runner, sshd_on, ["-N3", "--exclusive", f"--image={image}", "--wrap",
                                          f"srun -N3 --ntasks-per-node=1 shifter sh {probe}"], workdir)
    kind = "debian" if image == DEBIAN else "busybox"
    rows = sorted(ln for ln in out.splitlines() if "->" in ln)
    assert rows == sorted(f"{a}->{b} {USER1} 6 {kind}" for a in ("n1", "n2", "n3") for b in ("n1", "n2", "n3")), out
    assert _leftovers(cluster) == []


def test_mpich_over_ssh_with_the_hostsfile(cluster, runner, sshd_on, workdir):
    """MPICH's own launcher inside the container: one rank on each node."""
    job, out = _run_job(runner, sshd_on, [
        "-N3", "--exclusive", f"--image={DEBIAN}", "--wrap",
        "shifter mpiexec -f /var/hostsfile -launcher ssh -ppn 1 -n 3 /app/mpi-hello"], workdir)
    rows = sorted(ln for ln in out.splitlines() if ln.startswith("hello"))
    assert rows == [f"hello from rank {r} of 3 on n{r + 1}" for r in range(3)], out


def test_the_hostsfile_has_one_line_per_cpu_of_the_job(cluster, runner, sshd_on, workdir):
    """Shifter's format, against Slurm's own SLURM_JOB_NODELIST/SLURM_JOB_CPUS_PER_NODE,
    in a job that shares its nodes (so it gets no sshd)."""
    job, out = _run_job(runner, sshd_on, [
        "-N2", "-n3", f"--image={BUSYBOX}", "--wrap",
        "echo \"slurm $SLURM_JOB_NODELIST $SLURM_JOB_CPUS_PER_NODE\"; shifter cat /var/hostsfile; "
        "shifter sh -c 'test -e /var/shifter/sshd && echo sshd || echo no-sshd'"], workdir)
    lines = out.splitlines()
    _, nodelist, cpus = lines[0].split()
    want = [h for h, n in hostsfile.from_slurm(nodelist, cpus) for _ in range(n)]
    assert lines[1:-1] == want, out
    assert lines[-1] == "no-sshd", out


def test_another_users_key_is_refused(cluster, runner, sshd_on, workdir):
    ready = os.path.join(workdir, "ready")
    job = _submit(runner, sshd_on, ["-N3", "--exclusive", f"--image={BUSYBOX}", "--output=/dev/null",
                                    "--wrap", f"touch {ready}; sleep 120"], cwd=workdir)
    try:
        _wait_file(ready)
        made = runner.run([sys.executable, "-c", "import pwd, os; from shifter.runtime.builder import sshd; "
                           "sshd.ensure_user_key(pwd.getpwuid(os.getuid()).pw_dir)"], user=USER2)
        assert made.returncode == 0, made.stderr

        def ssh(user):
            home = pwd.getpwnam(user).pw_dir
            return runner.run(["ssh", "-F", "/dev/null", "-p", str(PORT), "-b", "127.0.1.2",
                               "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                               "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                               "-i", f"{home}/.udiRoot/id_rsa.key", "-l", USER1, "127.0.1.1",
                               "cat /var/hostsfile"], user=user, timeout=30)
        mine = ssh(USER1)
        assert mine.returncode == 0 and mine.stdout.split() == ["n1", "n1", "n2", "n2", "n3", "n3"], mine.stderr
        theirs = ssh(USER2)
        assert theirs.returncode == 255 and "Permission denied (publickey)" in theirs.stderr, theirs
    finally:
        subprocess.run(["scancel", job], env=runner.env())
        _wait_gone(runner, job)
    assert _leftovers(cluster) == []


def test_a_connection_into_another_jobs_container_is_refused(cluster, runner, sshd_on, workdir):
    """The same user, two jobs: from job B's container, its own nodes answer, job A's
    node does not (its sshd accepts only its job's nodes)."""
    ready = os.path.join(workdir, "ready")
    a = _submit(runner, sshd_on, ["-N1", "-w", "n1", "--exclusive", f"--image={BUSYBOX}", "--output=/dev/null",
                                  "--wrap", f"touch {ready}; sleep 120"], cwd=workdir)
    try:
        _wait_file(ready)
        probe = _script(workdir, "probe.sh", "for h in n3 n1; do ssh $h hostname >/dev/null 2>&1 "
                                             "&& echo $h:ok || echo $h:refused; done\n")
        job, out = _run_job(runner, sshd_on, ["-N2", "-w", "n[2-3]", "--exclusive", f"--image={BUSYBOX}",
                                              "--wrap", f"srun -N1 -w n2 shifter sh {probe}"], workdir)
        assert out.split() == ["n3:ok", "n1:refused"], out
    finally:
        subprocess.run(["scancel", a], env=runner.env())
        _wait_gone(runner, a)
    assert _leftovers(cluster) == []


def test_a_cancelled_job_leaves_no_sshd_or_session(cluster, runner, sshd_on, workdir):
    """A session left running in the background on n2 (setsid, nohup), then scancel."""
    ready = os.path.join(workdir, "ready")
    probe = _script(workdir, "probe.sh", "ssh n2 'setsid nohup sleep 1000 </dev/null >/dev/null 2>&1 &'\n"
                                         f"touch {ready}\nsleep 1000\n")
    job = _submit(runner, sshd_on, ["-N3", "--exclusive", f"--image={BUSYBOX}", "--output=/dev/null",
                                    "--wrap", f"shifter sh {probe}"], cwd=workdir)
    _wait_file(ready)
    during = _leftovers(cluster)
    assert any(x.startswith("listener") for x in during) and any(x.startswith("process") for x in during), during
    subprocess.run(["scancel", job], env=runner.env())
    _wait_gone(runner, job)
    deadline = time.monotonic() + 30
    while _leftovers(cluster) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _leftovers(cluster) == []


def test_fifty_consecutive_sshd_jobs_leave_nothing(cluster, runner, sshd_on, workdir):
    jobs = [_submit(runner, sshd_on, ["-N3", "--exclusive", f"--image={BUSYBOX}", "--output=/dev/null",
                                      "--wrap", "shifter ssh n3 true"], cwd=workdir) for _ in range(50)]
    for job in jobs:
        _wait_gone(runner, job, timeout=600)
    states = runner.run(["sinfo", "-h", "-o", "%t"], user=None).stdout.split()
    assert not [s for s in states if s.rstrip("*~#!%$@^-") in ("drain", "drng", "down", "fail")], states
    assert _leftovers(cluster) == []
    home = pwd.getpwnam(USER1).pw_dir
    assert sorted(os.listdir(os.path.join(home, ".udiRoot"))) == ["id_rsa.key", "id_rsa.key.pub"]


def _state(runner, node) -> str:
    return runner.run(["sinfo", "-h", "-n", node, "-o", "%T"], user=None).stdout.strip()


def test_the_epilog_kills_the_sshd_of_a_prolog_killed_halfway(cluster, runner, sshd_on, workdir):
    """The prolog is SIGKILLed right after starting the sshd on n3 (the documented fault
    point ``after-sshd``): Slurm drains n3, the epilog still kills the sshd it finds
    through the job's pid file and removes the container."""
    config = udiconfig.load(cluster.udiroot_conf)
    fault = f"{config.udiMount}.jobs/.fault"
    deadline = time.monotonic() + 60
    while _state(runner, "n3") != "idle":
        assert time.monotonic() < deadline, "n3 is not idle"
        time.sleep(0.2)
    _run_job(runner, sshd_on, ["-N1", "-w", "n3", f"--image={BUSYBOX}", "--wrap", "true"], workdir)  # the anchor
    assert _in_node(cluster, "n3", "sh", "-c", f"echo kill-after-sshd > {fault}").returncode == 0
    job = None
    try:
        job = _submit(runner, sshd_on, ["-N1", "-w", "n3", "--exclusive", f"--image={BUSYBOX}",
                                        "--output=/dev/null", "--wrap", "true"], cwd=workdir)
        deadline = time.monotonic() + 30
        while "drain" not in _state(runner, "n3"):
            assert time.monotonic() < deadline, "the killed prolog did not fail the node"
            time.sleep(0.2)
        _in_node(cluster, "n3", "rm", "-f", fault)
        subprocess.run(["scancel", job], env=runner.env(), capture_output=True)
        _wait_gone(runner, job, drained_ok=True)
        deadline = time.monotonic() + 30
        while _leftovers(cluster) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _leftovers(cluster) == []
    finally:
        _in_node(cluster, "n3", "rm", "-f", fault)
        deadline = time.monotonic() + 90
        while _state(runner, "n3") != "idle":
            subprocess.run(["scontrol", "update", "nodename=n3", "state=resume"], env=runner.env(),
                           capture_output=True)
            assert time.monotonic() < deadline, "n3 did not come back"
            time.sleep(0.5)
