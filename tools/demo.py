"""``tools/demo``: the local site up, then a real 3-node shifter job as a test user.

  sbatch -N3 --image=docker:test/busybox:latest \
         --wrap 'srun -N3 hostname; srun -N3 shifter sh -c "..."'

prints the job's output (its steps on n1, n2, n3; the image's OS seen from inside the
container on each node) and the prolog/epilog lines its nodes logged.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import sys
import time

from shifter.errors import ShifterError
from shifter.tools import cluster
from shifter.tools.site import TEST_USERS, Site

IMAGE = "docker:test/busybox:latest"


def main() -> int:
    site = Site(nodes=max(3, cluster.saved_state(Site()).get("nodes") or 3))
    try:
        cluster.up(site, os.environ.get("SHIFTER_CHECKOUT"))
    except ShifterError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 1
    user = TEST_USERS[0][0]
    pw = pwd.getpwnam(user)
    out = os.path.join(pw.pw_dir, "shifter-demo.out")
    wrap = ("srun -N3 hostname; srun -N3 shifter sh -c "
            "'echo $(hostname): $(id -un) in $(grep ^PRETTY_NAME= /etc/os-release)'")
    argv = ["sbatch", "-N3", "--wait", f"--output={out}", f"--image={IMAGE}", "--wrap", wrap]
    print(f"demo: as {user}: {' '.join(argv[:-1])} '{argv[-1]}'", flush=True)
    env = {"PATH": f"{site.bindir}:/usr/bin:/bin", "SLURM_CONF": site.slurm_conf, "HOME": pw.pw_dir}
    res = subprocess.run(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--", *argv],
                         env=env, cwd=pw.pw_dir, capture_output=True, text=True, timeout=300)
    print(res.stdout.strip())
    if res.returncode != 0:
        print(f"demo: the job failed: {res.stderr.strip()}", file=sys.stderr)
        return 1
    job = re.search(r"Submitted batch job (\d+)", res.stdout).group(1)
    with open(out) as f:
        output = f.read().splitlines()
    hosts = sorted(ln for ln in output if ":" not in ln)
    inside = sorted(ln for ln in output if ":" in ln)
    print(f"demo: the job's steps ran on: {' '.join(hosts)}")
    print("demo: inside the container (srun -N3 shifter ...):")
    print("\n".join(f"  {ln}" for ln in inside))
    time.sleep(1)  # the epilog lines land just after the job ends
    pattern = re.compile(rf"shifter: (prolog|epilog): job={job} ")
    lines = []
    for node in site.node_names():
        with open(site.slurmd_log(node), errors="replace") as f:
            lines += [f"  slurmd-{node}.log: {ln.rstrip()}" for ln in f if pattern.search(ln)]
    print("demo: what the nodes' prolog/epilog logged:")
    print("\n".join(lines))
    ok = (hosts == ["n1", "n2", "n3"] and sum("prolog" in ln for ln in lines) >= 3
          and [ln.split(":")[0] for ln in inside] == ["n1", "n2", "n3"]
          and all("BusyBox" in ln for ln in inside))
    print("demo: ok" if ok else "demo: FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
