"""The job lifecycle on the real cluster: every node's prolog prepares the job's container
(at the job's own path, ``shifter.runtime.jobpath``), `srun shifter` enters it, the epilog
removes every trace; a user's mistake found on the node is recorded for the job's steps
and never drains the node."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time

import pytest

from helpers.prereq import USER1, USER2
from shifter.runtime import config as udiconfig
from tools import cluster as cluster_tool

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


def _submit(runner, args, script, user=USER1, cwd=None):
    res = runner.run(["sbatch", "--parsable", "--output=/dev/null", *args, "--wrap", script], user=user,
                     cwd=cwd or pwd.getpwnam(user).pw_dir)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().split(";")[0]


def _wait_file(path, timeout=60):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.1)


def test_two_users_jobs_on_one_node_each_have_their_own_container(cluster, runner, userdirs):
    """Shared-node jobs (not --exclusive) of two users on n3: each job's steps enter their
    own prepared container; neither user can reach into the other's."""
    config = udiconfig.load(cluster.udiroot_conf)
    flags = {}
    jobs = {}
    for user, image in ((USER1, "docker:test/busybox:latest"), (USER2, "docker:test/debian:latest")):
        home = pwd.getpwnam(user).pw_dir
        flags[user] = tempfile.mktemp(prefix="go-", dir="/tmp")
        out = os.path.join(home, f"shared-{os.getpid()}.out")
        script = (f"shifter sh -c 'grep ^ID= /etc/os-release; test -r /var/shifter/launch.plan && echo prepared' "
                  f"> {out}; while [ ! -e {flags[user]} ]; do sleep 0.1; done")
        jobs[user] = (_submit(runner, ["-N1", "-n1", "-w", "n3", f"--image={image}"], script, user=user), out)
    try:
        for user, (job, out) in jobs.items():
            _wait_file(out)
        deadline = time.monotonic() + 30
        while len(open(jobs[USER2][1]).read().split()) < 2 or len(open(jobs[USER1][1]).read().split()) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert open(jobs[USER1][1]).read().split() == ["ID=busybox", "prepared"]
        assert open(jobs[USER2][1]).read().split() == ["ID=debian", "prepared"]
        pid = _node_pid(cluster, "n3")
        for me, other in ((USER1, USER2), (USER2, USER1)):
            theirs = f"{config.udiMount}.jobs/{jobs[other][0]}/root"
            uid = pwd.getpwnam(me).pw_uid
            for argv in (["ls", theirs], ["chroot", theirs, "true"], ["cat", f"{theirs}/etc/os-release"]):
                res = subprocess.run(["nsenter", "-t", pid, "-m", "--", "setpriv", f"--reuid={uid}",
                                      f"--regid={uid}", "--clear-groups", *argv], capture_output=True, text=True)
                assert res.returncode != 0, (me, argv, res.stdout)
    finally:
        for user, (job, out) in jobs.items():
            open(flags[user], "w").close()
        for user, (job, out) in jobs.items():
            _wait_gone(runner, job)
            os.unlink(flags[user])
            if os.path.exists(out):
                os.unlink(out)
    for job, _ in jobs.values():
        assert _node_mounts(cluster, "n3", f".jobs/{job}") == []


def test_the_epilog_cleans_up_after_slurmd_was_killed_and_restarted(cluster, runner, userdirs):
    """slurmd dies mid-job and `tools/cluster up` restarts it in the node's own namespace
    (the node's holder keeps it): the epilog still finds and removes the job's container."""
    flag = os.path.join(userdirs, "go")
    started = os.path.join(userdirs, "started")
    job = _submit(runner, ["-N1", "-w", "n2", "--image=docker:test/busybox:latest",
                           "--volume=/x:/tmp:perNodeCache=size=300M"],
                  f"touch {started}; while [ ! -e {flag} ]; do sleep 0.1; done", cwd=userdirs)
    try:
        _wait_file(started)
        _kill_and_restart_slurmd(cluster, job)
    finally:
        open(flag, "w").close()
        _wait_gone(runner, job)
    deadline = time.monotonic() + 30
    while _node_mounts(cluster, "n2", f".jobs/{job}"):
        assert time.monotonic() < deadline, "the epilog left the job's mounts"
        time.sleep(0.2)
    config = udiconfig.load(cluster.udiroot_conf)
    assert [n for n in os.listdir(config.perNodeCachePath) if f".{job}." in n] == []


def _kill_and_restart_slurmd(cluster, job):
    from tools import daemons

    assert _node_mounts(cluster, "n2", f".jobs/{job}/root")
    pid = daemons.running(cluster_tool.slurmd_pidfile(cluster, "n2"), "slurmd")
    ns = cluster_tool.mount_ns(pid)
    os.kill(pid, 9)
    daemons.wait_for(lambda: daemons.running(cluster_tool.slurmd_pidfile(cluster, "n2"), "slurmd") is None, 10,
                     "slurmd n2 to die")
    cluster_tool.slurmd_up(cluster)  # what `tools/cluster up` does for a dead slurmd (it then waits for idle)
    new = daemons.running(cluster_tool.slurmd_pidfile(cluster, "n2"), "slurmd")
    assert new and cluster_tool.mount_ns(new) == ns


def _users_mistake_job(runner, userdirs, n) -> str:
    """A job whose volume source is removed between submission and its prolog."""
    gone = os.path.join(userdirs, f"gone-{n}")
    os.mkdir(gone)
    os.chown(gone, 4242, 4242)
    job = _submit(runner, ["-N1", "-n1", "--hold", "--image=docker:test/busybox:latest", f"--volume={gone}:/data"],
                  "shifter true", cwd=userdirs)
    os.rmdir(gone)
    subprocess.run(["scontrol", "release", job], env=runner.env(), check=True, capture_output=True)
    return job


def test_two_hundred_jobs_of_every_shape_leave_no_trace(cluster, runner, userdirs):
    """Exclusive, shared, failing, cancelled mid-run, timed out, a user's mistake found on
    the node, with and without per-node caches: afterwards no mount, loop device, cache
    file, job directory or user process is left on any node, and slurmctld drained none."""
    config = udiconfig.load(cluster.udiroot_conf)

    def loops():  # loop devices of images and per-node caches (the machine may have others)
        out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
        return sorted(ln.split(":")[0] for ln in out.splitlines()
                      if config.imagePath in ln or config.perNodeCachePath in ln)

    loops_before = loops()
    ctld_log = os.path.join(cluster.log, "slurmctld.log")
    ctld_before = os.path.getsize(ctld_log)
    # timed out: Slurm's limits are whole minutes, so one runs beside all the others
    timed_out = _submit(runner, ["-N1", "-n1", "-w", "n3", "-t", "1", "--image=docker:test/busybox:latest"],
                        "srun shifter sleep 600", cwd=userdirs)
    shapes = [
        (["-N2", "--exclusive"], "srun -N2 shifter true"),
        (["-N1", "-n1"], "shifter true"),
        (["-N1", "-n1"], "shifter false"),
        (["-N1", "-n1", "--volume=/x:/tmp:perNodeCache=size=300M"], "shifter touch /tmp/x"),
        (["-N3"], "srun -N3 shifter sleep 30"),  # cancelled below
    ]
    jobs, cancel = [], []
    for i in range(200):
        args, script = shapes[i % len(shapes)]
        image = "docker:test/busybox:latest" if i % 2 else "docker:test/debian:latest"
        job = _submit(runner, [*args, f"--image={image}"], script, cwd=userdirs)
        jobs.append(job)
        if "sleep 30" in script:
            cancel.append(job)
        if len(jobs) % 20 == 0:
            jobs.append(_users_mistake_job(runner, userdirs, len(jobs)))
            for c in cancel:
                subprocess.run(["scancel", c], env=runner.env(), capture_output=True)
            cancel = []
            for j in jobs[-20:]:
                _wait_gone(runner, j, timeout=120)
    for c in cancel:
        subprocess.run(["scancel", c], env=runner.env(), capture_output=True)
    for j in jobs:
        _wait_gone(runner, j, timeout=120)
    _wait_gone(runner, timed_out, timeout=180)
    jobs.append(timed_out)
    time.sleep(1)  # the last epilogs
    with open(ctld_log, errors="replace") as f:  # `tools/cluster up` resumes drained nodes:
        f.seek(ctld_before)                       # look at what slurmctld did meanwhile
        ctld = f.readlines()
    assert any(f"Time limit exhausted for JobId={timed_out}" in ln for ln in ctld)
    drained = [ln for ln in ctld if "drain" in ln.lower() or "prolog error" in ln.lower()]
    assert drained == [], drained
    for node in cluster.node_names():
        assert _node_mounts(cluster, node, ".jobs/") == [], node
        with open(f"/proc/{_node_pid(cluster, node)}/mountinfo") as f:
            assert not [ln for ln in f if " squashfs " in ln and ".jobs" in ln]
        left = subprocess.run(["nsenter", "-t", _node_pid(cluster, node), "-m", "--", "ls", "-A",
                               f"{config.udiMount}.jobs", f"{config.loopMount}.jobs"],
                              capture_output=True, text=True).stdout.split()
        assert [x for x in left if x.isdigit()] == [], (node, left)
    assert [n for n in os.listdir(config.perNodeCachePath) if n.startswith("shifter-cache.")] == []
    deadline = time.monotonic() + 15  # autoclear frees a device just after its last unmount
    while loops() != loops_before:
        assert time.monotonic() < deadline, (loops(), loops_before)
        time.sleep(0.2)
    ours = set(jobs)
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(x.split(b"=", 1) for x in f.read().split(b"\0") if b"=" in x)
        except OSError:
            continue
        if env.get(b"SLURM_JOB_ID", b"").decode() in ours:
            left.append(pid)
    assert left == [], left


def test_a_private_container_does_not_keep_another_jobs_container_alive(cluster, runner, userdirs):
    """sftest2's private container (another image), started on n1 while sftest1's job has
    its container there, holds copies of the node's mounts; when sftest1's job ends, its
    epilog's unmounts reach those copies too, so the job's loop device is freed while
    sftest2's container still runs."""
    flag = os.path.join(userdirs, "go")
    started = os.path.join(userdirs, "started")
    job = _submit(runner, ["-N1", "-w", "n1", "-n1", "--image=docker:test/busybox:latest"],
                  f"touch {started}; while [ ! -e {flag} ]; do sleep 0.1; done", cwd=userdirs)
    other = None
    marker = os.path.join(pwd.getpwnam(USER2).pw_dir, f"private-{os.getpid()}")
    try:
        _wait_file(started)
        with open(f"/proc/{_node_pid(cluster, 'n1')}/mountinfo") as f:
            [device] = [ln.split(" - ")[1].split()[1] for ln in f if ln.split()[4].endswith(f".jobs/{job}/image")]
        backing = f"/sys/block/{os.path.basename(device)}/loop/backing_file"
        assert os.path.exists(backing)
        other = _submit(runner, ["-N1", "-w", "n1", "-n1"],
                        f"shifter --image=docker:test/debian:latest sh -c 'echo $$ > {marker}; exec sleep 60'",
                        user=USER2)
        _wait_file(marker)
        time.sleep(0.5)
        assert os.path.exists(f"/proc/{open(marker).read().strip()}")  # sftest2's container runs
        open(flag, "w").close()
        _wait_gone(runner, job)
        deadline = time.monotonic() + 20
        while os.path.exists(backing):
            assert time.monotonic() < deadline, f"{device} of job {job} is still held"
            time.sleep(0.2)
        assert os.path.exists(f"/proc/{open(marker).read().strip()}")  # ... and still runs
    finally:
        open(flag, "w").close()
        if other:
            subprocess.run(["scancel", other], env=runner.env(), capture_output=True)
            _wait_gone(runner, other)
        _wait_gone(runner, job)
        if os.path.exists(marker):
            os.unlink(marker)


def test_one_gateway_request_per_job(cluster, runner, userdirs):
    """A 3-node job with a docker: tag and three steps asks the gateway once: at
    submission.  The prologs use the pinned id, the steps inherit it (no Python in srun)."""
    log = os.path.join(cluster.log, "gateway.log")
    tag = "docker:test/busybox:latest"
    before = os.path.getsize(log)
    out = os.path.join(userdirs, "gw.out")
    res = runner.run(["sbatch", "--wait", "-N3", f"--image={tag}", f"--output={out}", "--wrap",
                      "srun -N3 shifter true; srun -N3 shifter true; srun -N1 true"], cwd=userdirs, timeout=120)
    assert res.returncode == 0, res.stderr + open(out).read()
    with open(log, errors="replace") as f:
        f.seek(before)
        requests = [ln for ln in f if "/api/" in ln]
    assert len(requests) == 1 and "/api/lookup/" in requests[0], requests


def test_a_site_fault_drains_the_node_with_a_shifter_reason(cluster, runner, userdirs, tmp_path):
    """Node n3's udiRoot.conf is broken (in n3's own namespace only): its prolog drains n3
    with a reason naming shifter and the cause, and logs job, node and cause; the job
    does not run there.  (A user's mistake never drains: see the test above.)"""
    broken = tmp_path / "udiRoot.conf"
    broken.write_text("udiMount=relative/path\n")
    os.chmod(tmp_path, 0o755)
    os.chmod(broken, 0o644)
    pid = _node_pid(cluster, "n3")
    deadline = time.monotonic() + 30  # earlier jobs' epilogs on n3 are done
    while (state := _node_state(runner, "n3")) != "IDLE":
        assert time.monotonic() < deadline, f"n3 is {state}, not idle: " + runner.run(
            ["squeue", "-h", "-w", "n3", "-o", "%i %T %j"], user=None).stdout
        time.sleep(0.2)
    subprocess.run(["nsenter", "-t", pid, "-m", "--", "mount", "--bind", str(broken), cluster.udiroot_conf],
                   check=True)
    job = None
    try:
        job = _submit(runner, ["-N1", "-w", "n3", "--image=docker:test/busybox:latest"], "true", cwd=userdirs)
        deadline = time.monotonic() + 30
        while True:
            show = runner.run(["scontrol", "show", "node", "n3"], user=None).stdout
            if "Reason=shifter:" in show:
                break
            assert time.monotonic() < deadline, show
            time.sleep(0.2)
        assert "DRAIN" in show and "udiMount" in show.split("Reason=")[1], show
        with open(cluster.slurmd_log("n3"), errors="replace") as f:
            assert any(f"job={job} node=n3: site fault, draining the node" in ln for ln in f)
    finally:
        subprocess.run(["nsenter", "-t", pid, "-m", "--", "umount", cluster.udiroot_conf], check=False)
        if job:
            subprocess.run(["scancel", job], env=runner.env(), capture_output=True)
        _resume(runner, "n3", job)



def test_the_epilog_cleans_up_after_a_prolog_killed_halfway(cluster, runner, userdirs):
    """The prolog is killed (SIGKILL, the documented fault point udi.fault_point) right
    after mounting the job's image on n3: Slurm drains n3 for the failed prolog; the
    epilog still removes what the prolog had made (the loop device included)."""
    config = udiconfig.load(cluster.udiroot_conf)
    pid = _node_pid(cluster, "n3")
    deadline = time.monotonic() + 30
    while (state := _node_state(runner, "n3")) != "IDLE":
        assert time.monotonic() < deadline, f"n3 is {state}, not idle: " + runner.run(
            ["squeue", "-h", "-w", "n3", "-o", "%i %T %j"], user=None).stdout
        time.sleep(0.2)
    fault = f"{config.udiMount}.jobs/.fault"

    def in_n3(*argv):
        return subprocess.run(["nsenter", "-t", pid, "-m", "--", *argv], capture_output=True, text=True)

    if not _node_mounts(cluster, "n3", f"{config.udiMount}.jobs"):  # the anchor: made by n3's first job
        _wait_gone(runner, _submit(runner, ["-N1", "-w", "n3", "--image=docker:test/busybox:latest"], "true",
                                   cwd=userdirs))
    assert _node_mounts(cluster, "n3", f"{config.udiMount}.jobs")
    assert in_n3("sh", "-c", f"echo kill-after-image > {fault}").returncode == 0
    job = None
    try:
        job = _submit(runner, ["-N1", "-w", "n3", "--image=docker:test/busybox:latest"], "true", cwd=userdirs)
        deadline = time.monotonic() + 30
        while "drain" not in runner.run(["sinfo", "-h", "-n", "n3", "-o", "%T"], user=None).stdout:
            assert time.monotonic() < deadline, "the killed prolog did not fail the node"
            time.sleep(0.2)
        in_n3("rm", "-f", fault)
        subprocess.run(["scancel", job], env=runner.env(), capture_output=True)
        deadline = time.monotonic() + 30
        while _node_mounts(cluster, "n3", f".jobs/{job}"):
            assert time.monotonic() < deadline, _node_mounts(cluster, "n3", f".jobs/{job}")
            time.sleep(0.2)
    finally:
        in_n3("rm", "-f", fault)
        _resume(runner, "n3", job)


def _node_state(runner, node) -> str:
    """slurmctld's own state of ``node`` (``IDLE``, ``IDLE+DRAIN``, ``MIXED``...).  sinfo's
    %T is computed from the select plugin's usage, which for a job requeued after a failed
    prolog and then cancelled can say "mixed" for minutes after the node is idle."""
    out = runner.run(["scontrol", "show", "node", node], user=None).stdout
    m = re.search(r"\bState=(\S+)", out)
    return m.group(1) if m else out


def _resume(runner, node, job):
    """Cancel ``job``, wait until it is gone, and resume ``node`` until it is idle again."""
    if job:
        subprocess.run(["scancel", job], env=runner.env(), capture_output=True)
        _wait_gone(runner, job)
    deadline = time.monotonic() + 90
    while (state := _node_state(runner, node)) != "IDLE":
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], env=runner.env(),
                       capture_output=True)
        assert time.monotonic() < deadline, f"{node} did not come back: {state}: " + runner.run(
            ["squeue", "-h", "-w", node, "-o", "%i %T %j"], user=None).stdout
        time.sleep(0.5)


def _retag(site, source, tag):
    """Point ``tag`` of the local registry at ``source``'s image (what a user's `docker push`
    of a new build does)."""
    reg = site.registry_url()
    subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false",
                    "--dest-tls-verify=false", f"docker://{reg}/{source}", f"docker://{reg}/{tag}"],
                   check=True, capture_output=True, timeout=300)


@contextlib.contextmanager
def eager_gateway(cluster):
    """The site's gateway restarted with PullUpdateTimeout=0: a pull always asks the
    registry (the site default, 300 s, would serve the first pull's image for five
    minutes; a restart also ends the 10 s in which a finished pull answers its polls)."""
    from tools import gateway

    gateway.stop(cluster)
    gateway.render_config(gateway.config_path(cluster), system=gateway.SYSTEM, image_dir=cluster.images,
                          munge_socket=cluster.munge_socket, state_dir=gateway.state_dir(cluster),
                          listen=f"127.0.0.1:{cluster.gateway_port}",
                          locations={cluster.registry_url(): f"http://{cluster.registry_url()}"},
                          default_location=cluster.registry_url(), pull_update_timeout=0)
    proc = gateway.launch(gateway.config_path(cluster), gateway.log_path(cluster), cluster.prefix)
    try:
        gateway.wait_ready(gateway.url(cluster), proc, gateway.log_path(cluster))
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        gateway.start(cluster)  # the site's own configuration again


def test_a_tag_re_pulled_during_a_job_does_not_change_its_image(cluster, runner, userdirs):
    """The job is pinned to the id its tag had at submission: after the tag moves to a new
    build and the gateway pulls it, the job's running and later steps (prepared container,
    new steps on another node, the batch script's own shifter) still see the first image;
    a new job gets the new one."""
    tag = f"test/repull-{os.getpid()}:latest"
    _retag(cluster, "test/busybox:latest", tag)
    assert runner.run(["shifterimg", "pull", f"docker:{tag}"], timeout=300).returncode == 0
    first = runner.run(["shifterimg", "lookup", f"docker:{tag}"]).stdout.strip()
    which = "test -e /etc/debian_version && echo debian || echo busybox"
    flag = os.path.join(userdirs, "go")
    out = os.path.join(userdirs, "repull.out")
    script = (f"srun -N2 shifter sh -c '{which}'; while [ ! -e {flag} ]; do sleep 0.1; done; "
              f"srun -N2 shifter sh -c '{which}'; srun -N1 -w n2 shifter sh -c '{which}'; "
              f"shifter sh -c '{which}'; echo $SLURM_SPANK_SHIFTER_IMAGE")
    job = _submit(runner, ["-N2", f"--image=docker:{tag}", f"--output={out}"], script, cwd=userdirs)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(out) or len(open(out).read().split()) < 2:
            assert time.monotonic() < deadline, "the job's first step did not run"
            time.sleep(0.1)
        _retag(cluster, "test/debian:latest", tag)
        with eager_gateway(cluster):
            res = runner.run(["shifterimg", "pull", f"docker:{tag}"], timeout=300)
            assert res.returncode == 0, res.stderr
            second = runner.run(["shifterimg", "lookup", f"docker:{tag}"]).stdout.strip()
        assert second != first
        open(flag, "w").close()
        _wait_gone(runner, job)
    finally:
        open(flag, "w").close()
    assert open(out).read().split() == ["busybox"] * 6 + [first], open(out).read()
    res = runner.run(["srun", "-N1", f"--image=docker:{tag}", "shifter", "sh", "-c", which])
    assert res.stdout.split() == ["debian"], res.stderr
