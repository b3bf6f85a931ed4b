"""``tools/demo``: the local site up, then a real 3-node shifter job as a test user.

  sbatch -N3 --image=docker:test/debian:latest \
         --volume='~/shifter-demo-in:/input;/scratch:/tmp:perNodeCache=size=300M' \
         --wrap 'srun -N3 shifter sh -c "..."; srun -N3 shifter /app/mpi-hello'

Every node's prolog prepares the job's container (the image, the user's volume, an XFS
per-node cache on /tmp); the steps enter it.  It prints what each node saw inside the
container, the MPI ranks (the image's MPICH, the site's pmi2), and the prolog/epilog
lines the nodes logged.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import sys
import time

from shifter import command
from shifter.errors import UsageError
from tools import cluster
from tools.site import TEST_USERS, Site

IMAGE = "docker:test/debian:latest"


def main(argv: list[str] | None = None) -> int:
    return command.run("demo", _main, argv)


def _main(argv: list[str]) -> int:
    if argv:
        raise UsageError(f"unexpected argument {argv[0]!r}", "tools/demo takes no arguments")
    site = Site(nodes=max(3, cluster.saved_state(Site()).get("nodes") or 3))
    cluster.up(site, os.environ.get("SHIFTER_CHECKOUT"))
    user = TEST_USERS[0][0]
    pw = pwd.getpwnam(user)
    out = os.path.join(pw.pw_dir, "shifter-demo.out")
    inputs = os.path.join(pw.pw_dir, "shifter-demo-in")
    os.makedirs(inputs, exist_ok=True)
    with open(os.path.join(inputs, "data.txt"), "w") as f:
        f.write("input data\n")
    for path in (inputs, os.path.join(inputs, "data.txt")):
        os.chown(path, pw.pw_uid, pw.pw_gid)
    wrap = ("srun -N3 --ntasks-per-node=1 shifter sh -c 'echo $(hostname): $(id -un) in "
            "$(grep ^PRETTY_NAME= /etc/os-release | cut -d= -f2), "
            "$(test -r /var/shifter/launch.plan && echo prepared) container, /input has $(ls /input), "
            "/tmp is $(stat -f -c %T /tmp)'; srun -N3 --ntasks-per-node=1 shifter /app/mpi-hello")
    argv = ["sbatch", "-N3", "--wait", f"--output={out}", f"--image={IMAGE}",
            f"--volume={inputs}:/input;/scratch:/tmp:perNodeCache=size=300M", "--wrap", wrap]
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
    inside = sorted(ln for ln in output if ": " in ln and "hello" not in ln)
    ranks = sorted(ln for ln in output if ln.startswith("hello from rank"))
    print("demo: inside the container (srun -N3 shifter sh -c ...):")
    print("\n".join(f"  {ln}" for ln in inside))
    print("demo: srun -N3 shifter /app/mpi-hello:")
    print("\n".join(f"  {ln}" for ln in ranks))
    time.sleep(1)  # the epilog lines land just after the job ends
    pattern = re.compile(rf"shifter: (prolog|epilog): job={job} ")
    lines = []
    for node in site.node_names():
        with open(site.slurmd_log(node), errors="replace") as f:
            lines += [f"  slurmd-{node}.log: {ln.rstrip()}" for ln in f if pattern.search(ln)]
    print("demo: what the nodes' prolog/epilog logged:")
    print("\n".join(lines))
    ok = (sum("UDI ready" in ln for ln in lines) == 3 and sum("removed the UDI" in ln for ln in lines) == 3
          and [ln.split(":")[0] for ln in inside] == ["n1", "n2", "n3"]
          and all("Debian" in ln and "prepared" in ln and "data.txt" in ln and "xfs" in ln for ln in inside)
          and [ln.split(" on ")[0] for ln in ranks] == [f"hello from rank {i} of 3" for i in range(3)])
    print("demo: ok" if ok else "demo: FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
