"""The shifter launcher as root-tier tests run it: as a test user, traced, and the users'
private plans on this host."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess

from helpers.prereq import USER1
from shifter.runtime import plandir

SHIFTER = "/opt/shifter/bin/shifter"


def run(env, args, user=USER1, extra_env=None, strace=False):
    """``shifter ARGS`` as ``user`` in job 4711 of the image of ``env`` (``launch_env``); with
    ``strace`` the result's ``execs`` are the programs it executed."""
    pw = pwd.getpwnam(user)
    e = {"PATH": "/usr/bin:/bin", "HOME": pw.pw_dir, "SHIFTER_CONFIG": env["conf"], "SLURM_JOB_ID": "4711",
         "SHIFTER_IMAGETYPE": "id", "SHIFTER_IMAGE": env["id"], "LAYER": "host", "HOST_ONLY": "1"}
    e.update(extra_env or {})
    e = {k: v for k, v in e.items() if v is not None}
    trace = []
    if strace:
        out = f"/tmp/shifter-strace-{user}-{os.getpid()}"
        trace = ["strace", "-f", "-qq", "-e", "trace=execve", "-o", out]
    res = subprocess.run(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--",
                          *trace, SHIFTER, *args], capture_output=True, text=True, env=e, cwd="/tmp", timeout=60)
    if strace:
        with open(out) as f:
            res.execs = [ln for ln in f.read().splitlines() if "execve(" in ln]
        os.unlink(out)
    return res


def python_ran(res) -> bool:
    """The launch ran Python (``run(..., strace=True)`` recorded its execs)."""
    return any("/bin/python" in ln for ln in res.execs)


def plan_dir(user):
    """The user's plan directory on this host (outside jobs: in the home directory)."""
    return plandir.path(pwd.getpwnam(user).pw_uid)


def make_plan_dir(user):
    """The user's plan directory in the home directory, made as Python makes it."""
    pw = pwd.getpwnam(user)
    path = plan_dir(user)
    for d in (os.path.dirname(path), path):
        os.makedirs(d, mode=0o700, exist_ok=True)
        os.chown(d, pw.pw_uid, pw.pw_gid)
    return path


def forget_plans(user):
    """Remove the user's plan directory on this host (and ~/.shifter, which tests make)."""
    path = plan_dir(user)
    shutil.rmtree(path, ignore_errors=True)
    if path.startswith(pwd.getpwnam(user).pw_dir.rstrip("/") + "/"):
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def plans(user):
    """The user's private plans on this host."""
    return sorted(glob.glob(os.path.join(plan_dir(user), "*.plan")))
