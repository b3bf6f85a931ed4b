"""Private plans on the real kernel: the first private container of a request is built
by Python and recorded; the next identical `shifter CMD` is built by the compiled
launcher replaying the plan (no Python), and sees the same container.  A stale or
broken plan goes back to Python and leaves nothing behind."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import time

import pytest

from helpers.prereq import USER1, USER2
from helpers.site_launch import SHIFTER, make_plan_dir, plan_dir, plans, python_ran, run
from shifter.runtime import linux, privplan

pytestmark = pytest.mark.root

#: what a user sees of the container: identity, the tree, the mounts, the environment
PROBE = ("id -u; id -g; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; "
         "stat -c '%n %a %u %g %F' / /* /var/* /opt/* /opt/udiImage/* /etc/passwd /etc/group /etc/os-release; "
         "cat /etc/passwd /etc/group; "
         "awk '{print $5, $6}' /proc/self/mountinfo | grep -v '^/proc/\\|^/sys/\\|^/dev/' | sort; "
         "env | grep -v '^_=' | sort; pwd")


def _leftovers(base):
    """What a launch may leave on the host: mounts under the test's directory, staging
    directories, squashfuse processes, loop devices."""
    mounts = [mp for mp, _, _ in linux.mountinfo() if mp.startswith(base) and mp.split("/")[-1] not in ("udi", "loop")]
    staging = glob.glob("/tmp/shifter.*")
    # live FUSE servers (squashfuse_ll, or the replay's helper, which serves from the
    # launcher's image: a `shifter` whose parent is a `shifter`); zombies are left alone:
    # pid 1 of these VMs does not reap
    procs = subprocess.run(["ps", "-eo", "pid=,ppid=,stat=,comm="], capture_output=True, text=True).stdout
    rows = [ln.split(None, 3) for ln in procs.splitlines()]
    comm = {r[0]: r[3] for r in rows if len(r) == 4}
    fuse = [r[0] for r in rows if len(r) == 4 and not r[2].startswith("Z")
            and (r[3] == "squashfuse_ll" or (r[3] == "shifter" and comm.get(r[1]) == "shifter"))]
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return mounts, staging, fuse, loops


def _settled(base, before, timeout=3.0):
    """The leftovers once the namespaces of exited launches are gone (the kernel frees
    them, and with them loop devices and FUSE servers, just after the exit)."""
    deadline = time.monotonic() + timeout
    while True:
        now = _leftovers(base)
        if now == before or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


@pytest.mark.parametrize("user", ["root", USER1])
def test_second_launch_replays_the_plan_without_python(fresh_plans, user):
    extra = {"SHIFTER_MODULE": "hook", "SHIFTER_VOLUME": "/tmp:/scratch:ro", "SLURM_JOB_ID": "none-prepared"}
    before = _leftovers(fresh_plans["base"])
    first = run(fresh_plans, ["sh", "-c", PROBE], user=user, extra_env=extra, strace=True)
    assert first.returncode == 0, first.stderr
    assert python_ran(first)
    assert len(plans(user)) == 1
    second = run(fresh_plans, ["sh", "-c", PROBE], user=user, extra_env=extra, strace=True)
    assert second.returncode == 0, second.stderr
    assert not python_ran(second), second.execs
    # the replay serves the image from its helper process: no squashfuse_ll exec
    assert not any("squashfuse" in ln for ln in second.execs), second.execs
    assert second.stdout == first.stdout
    lines = second.stdout.splitlines()
    uid = str(pwd.getpwnam(user).pw_uid)
    assert lines[0] == uid
    assert "NoNewPrivs:\t1" in lines and ("CapEff:\t0000000000000000" in lines or user == "root")
    assert "LAYER=module" in lines and "SITE_ONLY=1" in lines and "HOST_ONLY=1" in lines
    assert any(line.startswith("/scratch ro,") for line in lines)
    assert any(line.startswith("/ ro,") for line in lines)
    # the module's userhook ran in the replayed container, from the compiled launcher
    assert open(f"/tmp/shifter-hook-parent-{uid}").read().startswith(SHIFTER)
    assert _settled(fresh_plans["base"], before) == before


def test_user_replay_keeps_root_files_unreadable_and_returns_status(fresh_plans):
    for _ in range(2):
        res = run(fresh_plans, ["sh", "-c", "cat /root/secret 2>/dev/null || echo denied; exit 7"],
                  extra_env={"SLURM_JOB_ID": "none-prepared"}, strace=True)
        assert res.returncode == 7, res.stderr
        assert res.stdout.split() == ["denied"]
    assert not python_ran(res)


def test_signal_reaches_the_command_in_a_replayed_user_container(fresh_plans):
    pw = pwd.getpwnam(USER1)
    env_ = {"PATH": "/usr/bin:/bin", "SHIFTER_CONFIG": fresh_plans["conf"], "SHIFTER_IMAGETYPE": "id",
            "SHIFTER_IMAGE": fresh_plans["id"]}
    argv = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--", SHIFTER]
    script = "trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.1; done"
    subprocess.run(argv + ["true"], env=env_, check=True, cwd="/tmp")  # Python: writes the plan
    before = _leftovers(fresh_plans["base"])
    proc = subprocess.Popen(argv + ["sh", "-c", script], env=env_, cwd="/tmp", stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            assert b"python" not in f.read()  # setpriv exec'd the compiled launcher, which stayed
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 42
        assert proc.stdout.read().split() == ["got-term"]
    finally:
        proc.kill()
        proc.wait()
    assert _settled(fresh_plans["base"], before) == before


def test_stale_plan_goes_back_to_python_which_records_again(fresh_plans):
    extra = {"SLURM_JOB_ID": "none-prepared"}
    assert run(fresh_plans, ["true"], extra_env=extra).returncode == 0
    assert not python_ran(run(fresh_plans, ["true"], extra_env=extra, strace=True))
    meta = os.path.join(os.path.dirname(fresh_plans["conf"]), "images", fresh_plans["id"] + ".meta")
    os.utime(meta)  # the image's metadata changed: the plan is stale
    res = run(fresh_plans, ["true"], extra_env=extra, strace=True)
    assert res.returncode == 0 and python_ran(res)
    res = run(fresh_plans, ["true"], extra_env=extra, strace=True)
    assert res.returncode == 0 and not python_ran(res)


@pytest.mark.parametrize("user", ["root", USER1])
def test_failing_replay_falls_back_to_python_and_leaves_nothing(fresh_plans, user):
    extra = {"SLURM_JOB_ID": "none-prepared"}
    assert run(fresh_plans, ["true"], user=user, extra_env=extra).returncode == 0
    [path] = plans(user)
    records = privplan.loads(open(path, "rb").read())
    # an op that fails late, after the image is mounted: bind a source that is gone
    at = max(i for i, r in enumerate(records) if r[0] in ("bindkeep", "mount") and r[1].startswith((b"/", b"@")))
    name, src, *rest = records[at]
    records[at] = (name, b"/nonexistent/shifter-test", *rest)
    st = os.stat(path)
    with open(path, "wb") as f:
        f.write(privplan.dumps([tuple(x if isinstance(x, str) else x.decode() for x in r) for r in records]))
    os.chown(path, st.st_uid, st.st_gid)
    before = _leftovers(fresh_plans["base"])
    res = run(fresh_plans, ["sh", "-c", "cat /etc/os-release | head -1"], user=user, extra_env=extra, strace=True)
    assert res.returncode == 0, res.stderr
    assert python_ran(res) and res.stdout.startswith("NAME=\"BusyBox\"") and res.stderr == ""
    assert _settled(fresh_plans["base"], before) == before
    # Python recorded a good plan again
    res = run(fresh_plans, ["true"], user=user, extra_env=extra, strace=True)
    assert res.returncode == 0 and not python_ran(res)


def test_a_plan_not_owned_by_the_caller_is_ignored(fresh_plans):
    extra = {"SLURM_JOB_ID": "none-prepared"}
    assert run(fresh_plans, ["true"], extra_env=extra).returncode == 0
    [path] = plans(USER1)
    os.chmod(path, 0o620)  # group-writable: not trusted
    assert python_ran(run(fresh_plans, ["true"], extra_env=extra, strace=True))
    # a directory that belongs to someone else is neither used nor written into
    other = plan_dir(USER2)
    os.makedirs(os.path.dirname(other), mode=0o700)
    os.chown(os.path.dirname(other), 4243, 4243)
    shutil.copytree(plan_dir(USER1), other)
    for p in [other, *glob.glob(other + "/*")]:
        os.chown(p, 4242, 4242)
    res = run(fresh_plans, ["true"], user=USER2, extra_env=extra, strace=True)
    assert res.returncode == 0 and python_ran(res)
    assert all(os.stat(p).st_uid == 4242 for p in glob.glob(other + "/*"))


def test_options_and_tags_are_never_replayed(fresh_plans):
    extra = {"SLURM_JOB_ID": "none-prepared"}
    assert run(fresh_plans, ["true"], extra_env=extra).returncode == 0
    res = run(fresh_plans, [f"--image=id:{fresh_plans['id']}", "true"], extra_env=extra, strace=True)
    assert res.returncode == 0 and python_ran(res)
    assert len(plans(USER1)) == 1  # an invocation with options records nothing


@pytest.mark.parametrize("user", ["root", USER1])
def test_private_containers_share_the_image_mount_of_the_prepared_udi(fresh_plans, user):
    """With the node's prepared UDI holding the image, a private container of the same
    image (another job here) binds that squashfs mount instead of mounting its own (a
    fresh loop device as root, squashfuse as a user): both the Python build and the
    replay.  The kernel still enforces the image's modes for the user, and the private
    container outlives the prepared UDI's teardown."""
    from shifter.runtime.builder import udi

    res = subprocess.run(["/opt/shifter/bin/setupRoot", "-U", "4242", "id", fresh_plans["id"]], capture_output=True,
                         text=True, env={"SHIFTER_CONFIG": fresh_plans["conf"], "SLURM_JOB_ID": "4711"})
    assert res.returncode == 0, res.stderr
    try:
        # /usr's filesystem type and source in the container
        probe = ("awk '$5 == \"/usr\" {for (i = 7; i < NF; i++) if ($i == \"-\") print $(i + 1), $(i + 2)}' "
                 "/proc/self/mountinfo; "
                 "cat /root/secret 2>/dev/null || echo denied")
        for python in (True, False):
            res = run(fresh_plans, ["sh", "-c", probe], user=user, extra_env={"SLURM_JOB_ID": "other"}, strace=True)
            assert res.returncode == 0, res.stderr
            assert python_ran(res) == python
            # the very loop device of the prepared UDI's image mount
            [device] = [src for mp, _, src in linux.mountinfo() if mp == fresh_plans["config"].loopMount and src != linux.ANCHOR]
            assert res.stdout.split() == ["squashfs", device, *(["root", "only"] if user == "root" else ["denied"])]
        # a running private container keeps the image after the prepared UDI is gone
        pw = pwd.getpwnam(user)
        proc = subprocess.Popen(
            ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--", SHIFTER, "sh", "-c",
             "read x; /bin/busybox echo alive; head -1 /etc/os-release"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={"PATH": "/usr/bin:/bin", "SHIFTER_CONFIG": fresh_plans["conf"], "SHIFTER_IMAGETYPE": "id",
                 "SHIFTER_IMAGE": fresh_plans["id"], "SLURM_JOB_ID": "other"}, cwd="/")
        time.sleep(0.5)
        udi.teardown(fresh_plans["config"])
        out, _ = proc.communicate("go\n", timeout=20)
        assert proc.returncode == 0 and out.split("\n")[:2] == ["alive", 'NAME="BusyBox"'], out
    finally:
        udi.teardown(fresh_plans["config"])


def test_staging_directories_of_killed_launchers_are_swept(fresh_plans):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"/tmp/shifter.4242.{dead.pid}.0badf00d"
    live = f"/tmp/shifter.4242.{os.getpid()}.0badf00d"  # its pid is alive: kept
    for path in (stale, live):
        os.mkdir(path, 0o700)
        os.chown(path, 4242, 4242)
    try:
        res = run(fresh_plans, ["true"], extra_env={"SLURM_JOB_ID": "none-prepared"}, strace=True)
        assert res.returncode == 0 and python_ran(res)  # Python's launches sweep
        assert not os.path.exists(stale) and os.path.isdir(live)
    finally:
        for path in (stale, live):
            if os.path.isdir(path):
                os.rmdir(path)


def test_replay_when_the_hosts_tmp_has_submounts(fresh_plans):
    """A mount below the host's /tmp is locked in the user's namespace: /tmp is then bound
    recursively and the copy of the staging directory's mount dropped (`dropstaging`),
    which the replay must do for its own staging directory."""
    sub = f"/tmp/shifter-test-sub-{os.getpid()}"
    os.mkdir(sub)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "testsub", sub], check=True)
    try:
        probe = f"ls -d {sub}; ls /tmp/shifter.4242.*/ 2>/dev/null | wc -l"
        extra = {"SLURM_JOB_ID": "none-prepared"}
        for python in (True, False):
            res = run(fresh_plans, ["sh", "-c", probe], extra_env=extra, strace=True)
            assert res.returncode == 0, res.stderr
            assert python_ran(res) == python, res.execs
            assert res.stdout.split() == [sub, "0"]  # the host's submount; no staging tree inside
        records = privplan.loads(open(plans(USER1)[0], "rb").read())
        assert ("dropstaging", b"@/root/tmp", b"/tmp") in records
    finally:
        subprocess.run(["umount", sub])
        os.rmdir(sub)


def test_the_image_server_outlives_the_signals_the_command_gets(fresh_plans):
    """Slurm signals every process of a step (scancel -s USR1, SIGTERM before KillWait):
    the user container's FUSE server ignores them, so a command that handles them keeps
    reading its image.  Both the Python build (squashfuse_ll) and the replay (in the
    helper)."""
    pw = pwd.getpwnam(USER1)
    env_ = {"PATH": "/usr/bin:/bin", "SHIFTER_CONFIG": fresh_plans["conf"], "SHIFTER_IMAGETYPE": "id",
            "SHIFTER_IMAGE": fresh_plans["id"]}
    argv = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--", SHIFTER, "sh", "-c",
            "trap 'echo got-usr1' USR1; echo ready; read x; head -1 /etc/os-release"]
    for _ in range(2):  # Python, then the replay
        proc = subprocess.Popen(argv, env=env_, cwd="/tmp", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                children = [int(c) for c in f.read().split()]
            [helper] = [c for c in children if "sh" != open(f"/proc/{c}/comm").read().strip()]
            for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                os.kill(helper, sig)
            os.kill(proc.pid, signal.SIGUSR1)  # to the launcher: forwarded, once
            time.sleep(0.3)
            out, _ = proc.communicate("go\n", timeout=20)
            assert proc.returncode == 0, out
            assert out.split("\n")[:2] == ["got-usr1", 'NAME="BusyBox"'], out
        finally:
            proc.kill()
            proc.wait()


def test_private_containers_of_a_user_share_one_user_namespace(fresh_plans):
    """Ranks in separate private containers (srun shifter ... without a prepared UDI)
    can process_vm_readv each other (MPI's CMA, shared memory): they live in one user
    namespace per user on the node.  A Python-built target with a replayed reader, then
    two replays."""
    pw = pwd.getpwnam(USER1)
    env_ = {"PATH": "/usr/bin:/bin", "SHIFTER_CONFIG": fresh_plans["conf"], "SHIFTER_IMAGETYPE": "id",
            "SHIFTER_IMAGE": fresh_plans["id"], "SLURM_JOB_ID": "none-prepared"}
    as_user = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--", SHIFTER]
    for first in (True, False):
        assert bool(plans(USER1)) != first  # no plan yet: the target is built by Python
        target = subprocess.Popen([*as_user, "/bin/cma"], env=env_, cwd="/tmp", stdout=subprocess.PIPE, text=True)
        try:
            pid, addr = target.stdout.readline().split()
            reader = run(fresh_plans, ["/bin/cma", pid, addr], extra_env={"SLURM_JOB_ID": "none-prepared"}, strace=True)
            assert reader.stdout.strip() == "read: secret-of-the-target", reader
            assert not python_ran(reader)
            with open(f"/proc/{pid}/status") as f:
                assert "CapEff:\t0000000000000000" in f.read()
        finally:
            target.terminate()  # forwarded to the command: the launcher cleans up and reaps
            target.wait()


def test_a_user_namespace_with_another_mapping_is_never_joined(fresh_plans):
    """The rendezvous names a process of the user's own `unshare -r` (uid 0 inside, mapped
    to the user): joining it would make the container's processes uid 0.  It is refused
    and a namespace of the right shape is made."""
    from shifter.runtime.launcher import userns

    pw = pwd.getpwnam(USER1)
    other = subprocess.Popen(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--",
                              "unshare", "-r", "sleep", "30"])
    try:
        time.sleep(0.3)
        make_plan_dir(USER1)
        path = userns.registry(pw.pw_uid, pw.pw_gid)
        for python in (True, False):
            with open(path, "w") as f:
                f.write(str(other.pid))
            os.chown(path, pw.pw_uid, pw.pw_gid)
            res = run(fresh_plans, ["sh", "-c", "id -u; id -g"], extra_env={"SLURM_JOB_ID": "none-prepared"}, strace=True)
            assert res.returncode == 0 and python_ran(res) == python, res
            assert res.stdout.split() == [str(pw.pw_uid), str(pw.pw_gid)]
            assert open(path).read().strip() != str(other.pid)  # replaced by the new namespace's
    finally:
        other.kill()
        other.wait()
