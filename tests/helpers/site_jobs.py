"""Jobs on the local cluster for slurm-tier tests: a batch job's output, and the users'
private plans on the nodes."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import time

from helpers.prereq import USER1
from shifter.runtime import plandir

NODES = ("n1", "n2", "n3")  # the local site's nodes (they share /var/lib and /home)


def batch(runner, args: list[str], script: str, timeout: float = 120) -> str:
    """Submit `script` as sftest1 with sbatch ARGS, wait for the job to end, return its output."""
    out = f"/tmp/shifter-job-{os.getpid()}.out"
    res = runner.run(["sbatch", f"--output={out}", *args, "--wrap", script])
    assert res.returncode == 0, res.stderr
    job = re.search(r"(\d+)", res.stdout).group(1)
    try:
        deadline = time.monotonic() + timeout
        while runner.run(["squeue", "-h", "-j", job], user=None).stdout.strip():
            assert time.monotonic() < deadline, "job did not finish"
            time.sleep(0.2)
        return open(out).read()
    finally:
        subprocess.run(["scancel", job], env=runner.env())
        if os.path.exists(out):
            os.unlink(out)


def forget_node_plans(user: str = USER1) -> None:
    """Remove the user's plans on the local site's nodes (they share /var/lib and /home),
    so that the next launch on each is built by Python."""
    pw = pwd.getpwnam(user)
    for node in NODES:
        job_dir, home_dir = plandir.candidates(pw.pw_uid, node, pw.pw_dir)
        shutil.rmtree(home_dir, ignore_errors=True)
        if os.path.isdir(job_dir):
            for name in os.listdir(job_dir):
                if name.endswith(".plan"):
                    os.unlink(os.path.join(job_dir, name))
