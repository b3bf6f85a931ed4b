"""A plan directory no other user can take away (issue 9, item 5).

The private plans and the rendezvous of a user's shared user namespace used to live in
``/tmp/.shifter-<uid>``: another user who made that name first (a directory, or a
symlink) left the victim without replays (Python on every launch) and without the
shared user namespace (MPI ranks in separate private containers could not share
memory).  Here sftest2 squats every such name, then sftest1's private containers must
still be replayed by the compiled launcher, silently, and two concurrent ones must live
in one user namespace: outside a job (the plan directory in the home directory) and in
the directory the job prolog makes."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess

import pytest

from helpers.prereq import USER1, USER2
from helpers.site_launch import SHIFTER, plan_dir, plans, python_ran, run
from shifter.runtime import plandir

pytestmark = pytest.mark.root

SQUAT = "/tmp/.shifter-4242"


def _as(user, *argv):
    pw = pwd.getpwnam(user)
    return subprocess.run(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--", *argv],
                          capture_output=True, text=True, check=True, cwd="/tmp")


def _remove(path):
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


@pytest.fixture(params=["directory", "symlink"])
def squatted(request):
    """sftest2 owns /tmp/.shifter-4242: a directory open to all, or a symlink to one of
    theirs; what lands there is the attacker's."""
    trap = f"/tmp/shifter-test-trap-{os.getpid()}"
    for path in (SQUAT, trap):
        _remove(path)
    if request.param == "directory":
        _as(USER2, "sh", "-c", f"mkdir {SQUAT} && chmod 777 {SQUAT}")
        looks = SQUAT
    else:
        _as(USER2, "sh", "-c", f"mkdir {trap} && chmod 777 {trap} && ln -s {trap} {SQUAT}")
        looks = trap
    yield looks
    for path in (SQUAT, trap):
        _remove(path)


@pytest.fixture
def prolog_dir(fresh_plans):
    """The plan directory the job prolog makes on this node, by the prolog's own code;
    everything the test made under /var/lib goes again."""
    made = [p for p in ("/var/lib/shifter", "/var/lib/shifter/users",
                        f"/var/lib/shifter/users/{plandir.hostname()}") if not os.path.exists(p)]
    path = plandir.prepare(4242, 4242)
    yield path
    shutil.rmtree(path, ignore_errors=True)
    for p in reversed(made):
        os.rmdir(p)


def _launch_and_share(fresh_plans, squat):
    """Four launches of one request, then two concurrent containers reading each
    other's memory; the attacker's squat comes and goes meanwhile."""
    extra = {"SLURM_JOB_ID": "none-prepared"}
    runs = [run(fresh_plans, ["sh", "-c", "id -u"], extra_env=extra, strace=True) for _ in range(4)]
    assert all(r.returncode == 0 and r.stdout == "4242\n" for r in runs), runs
    assert [python_ran(r) for r in runs] == [True, False, False, False]  # then the compiled launcher
    notices = [ln for r in runs for ln in r.stderr.splitlines()]
    assert len(notices) <= 1, notices  # at most one line over all launches
    assert len(plans(USER1)) == 1
    assert not os.listdir(squat)  # nothing of the victim's in the attacker's directory

    pw = pwd.getpwnam(USER1)
    env_ = {"PATH": "/usr/bin:/bin", "SHIFTER_CONFIG": fresh_plans["conf"], "SHIFTER_IMAGETYPE": "id",
            "SHIFTER_IMAGE": fresh_plans["id"], "SLURM_JOB_ID": "none-prepared"}
    as_user = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--", SHIFTER]
    target = subprocess.Popen([*as_user, "/bin/cma"], env=env_, cwd="/tmp", stdout=subprocess.PIPE, text=True)
    try:
        pid, addr = target.stdout.readline().split()
        _remove(SQUAT)  # the attacker's name goes away (and could come back): nothing changes
        reader = run(fresh_plans, ["sh", "-c", f"readlink /proc/self/ns/user; /bin/cma {pid} {addr}"],
                     extra_env=extra, strace=True)
        assert not python_ran(reader) and reader.returncode == 0, reader
        ns, read = reader.stdout.splitlines()
        assert read == "read: secret-of-the-target", reader
        assert os.readlink(f"/proc/{pid}/ns/user") == ns  # one user namespace
    finally:
        target.terminate()
        target.wait()


def test_a_squatted_tmp_name_changes_nothing_outside_a_job(fresh_plans, squatted):
    home = pwd.getpwnam(USER1).pw_dir
    _launch_and_share(fresh_plans, squatted)
    assert plan_dir(USER1) == f"{home}/.shifter/{plandir.hostname()}"
    st = os.stat(plan_dir(USER1))
    assert (st.st_uid, st.st_mode & 0o777) == (4242, 0o700)


def test_a_squatted_tmp_name_changes_nothing_in_the_prolog_directory(fresh_plans, squatted, prolog_dir):
    _launch_and_share(fresh_plans, squatted)
    assert plan_dir(USER1) == prolog_dir == f"/var/lib/shifter/users/{plandir.hostname()}/4242"
    assert os.path.dirname(plans(USER1)[0]) == prolog_dir
    assert os.path.exists(os.path.join(prolog_dir, "userns.4242"))  # the rendezvous
    home = pwd.getpwnam(USER1).pw_dir
    assert not os.path.exists(f"{home}/.shifter")  # the prolog's directory is the one used


def test_other_users_cannot_make_the_prolog_directory(fresh_plans, prolog_dir):
    """Its parents are root's: sftest2 can neither make sftest1's directory on another
    node name nor put anything into sftest1's."""
    parent = os.path.dirname(os.path.dirname(prolog_dir))
    res = subprocess.run(["setpriv", "--reuid=4243", "--regid=4243", "--init-groups", "--", "sh", "-c",
                          f"mkdir {parent}/elsewhere; mkdir -p {parent}/{plandir.hostname()}/4243; "
                          f"touch {prolog_dir}/x"], capture_output=True, text=True)
    assert res.stderr.count("Permission denied") == 3, res.stderr
    assert not os.path.exists(f"{parent}/elsewhere") and not os.path.exists(f"{prolog_dir}/x")
