"""The job prolog makes the user's plan directory on every node of the job
(/var/lib/shifter/users/<node>/<uid>, see shifter.runtime.plandir): with another user
squatting /tmp/.shifter-<uid>, the user's private containers on every node are still
recorded there and replayed by the compiled launcher, and the directory stays after
the job for the user's other tasks on the node."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess

import pytest

from helpers.prereq import USER1, USER2
from helpers.site_jobs import batch, forget_node_plans

pytestmark = pytest.mark.slurm

NODES = ("n1", "n2", "n3")
SQUAT = "/tmp/.shifter-4242"


def _remove_squat():
    if os.path.islink(SQUAT) or os.path.isfile(SQUAT):
        os.unlink(SQUAT)
    elif os.path.isdir(SQUAT):
        shutil.rmtree(SQUAT)


def test_prolog_plan_directory_with_a_squatted_tmp_name(cluster, runner):
    forget_node_plans()
    _remove_squat()
    pw2 = pwd.getpwnam(USER2)
    subprocess.run(["setpriv", f"--reuid={pw2.pw_uid}", f"--regid={pw2.pw_gid}", "--init-groups", "--",
                    "sh", "-c", f"mkdir {SQUAT} && chmod 777 {SQUAT}"], check=True)
    try:
        # other volumes than the job's prepared container: a private container per step
        step = ("srun -N3 --ntasks-per-node=1 --label env SHIFTER_VOLUME=/tmp:/scratch /opt/shifter/bin/shifter "
                "sh -c 'echo $(hostname) $(tr \"\\0\" \" \" < /proc/$PPID/cmdline | cut -d\" \" -f1)'")
        output = batch(runner, ["-N3", "--image=docker:test/busybox:latest"],
                        f"{step} 2>&1; echo second; {step} 2>&1; echo third; {step} 2>&1")
        parts = output.split("second\n")
        parts = [parts[0], *parts[1].split("third\n")]
        for text, parent in zip(parts, ("/opt/shifter/bin/python", "/opt/shifter/bin/shifter",
                                        "/opt/shifter/bin/shifter")):
            rows = sorted(ln.split(": ", 1)[1] for ln in text.splitlines() if ": " in ln)
            assert rows == [f"{n} {parent}" for n in NODES], output  # no notice line either
        home = pwd.getpwnam(USER1).pw_dir
        for node in NODES:
            path = f"/var/lib/shifter/users/{node}/4242"
            st = os.lstat(path)  # kept after the job (the epilog ran)
            assert stat.S_ISDIR(st.st_mode) and (st.st_uid, st.st_mode & 0o777) == (4242, 0o700)
            for parent in ("/var/lib/shifter", "/var/lib/shifter/users", f"/var/lib/shifter/users/{node}"):
                pst = os.lstat(parent)
                assert stat.S_ISDIR(pst.st_mode) and pst.st_uid == 0 and not pst.st_mode & 0o022, parent
            assert len([n for n in os.listdir(path) if n.endswith(".plan")]) == 1, os.listdir(path)
            assert not os.path.exists(f"{home}/.shifter/{node}")
        assert os.listdir(SQUAT) == []  # nothing of the victim's in the attacker's directory
    finally:
        _remove_squat()
