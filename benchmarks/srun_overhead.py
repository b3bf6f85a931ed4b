"""Interleaved timing of `srun -N1 true` (as a test user) in three set-ups:

  no plugin      srun reads a plugstack.conf without shifter, and the node it runs on
                 (n3) sees the same empty plugstack.conf (bind-mounted over the site's in
                 that slurmd's own mount namespace, for the duration of the benchmark)
  plugin, unused the site's plugstack.conf on srun and node n1, no shifter option
  --image        the same with --image=docker:test/busybox:latest (Python in srun,
                 in the prolog and in slurmstepd)

Runs are interleaved (A B C A B C ...) so drift hits all three alike.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import time

from shifter.tools import cluster
from shifter.tools.site import TEST_USERS, Site


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="runs per set-up (default 100)")
    args = parser.parse_args()
    site = Site(nodes=cluster.saved_state(Site()).get("nodes", 3))
    if site.nodes < 2:
        print("srun_overhead: needs at least 2 nodes (tools/cluster up -n 3)", file=sys.stderr)
        return 2
    bare_node, plugin_node = site.node_names()[-1], site.node_names()[0]
    user = TEST_USERS[0][0]
    pw = pwd.getpwnam(user)

    bare_conf, empty = cluster.private_slurm_conf(site, "# no plugins\n")
    tmp = os.path.dirname(bare_conf)

    slurmd_pid = int(open(cluster.slurmd_pidfile(site, bare_node)).read())
    subprocess.run(["nsenter", "-t", str(slurmd_pid), "-m", "mount", "--bind", empty, site.plugstack_conf],
                   check=True)
    setups = [
        ("no plugin", bare_conf, bare_node, []),
        ("plugin, no shifter option", site.slurm_conf, plugin_node, []),
        ("plugin, --image=docker:test/busybox:latest", site.slurm_conf, plugin_node,
         ["--image=docker:test/busybox:latest"]),
    ]
    times: dict[str, list[float]] = {name: [] for name, *_ in setups}
    try:
        for i in range(args.runs + 3):
            for name, conf_path, node, extra in setups:
                env = {"PATH": "/usr/bin:/bin", "SLURM_CONF": conf_path, "HOME": pw.pw_dir}
                argv = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--",
                        "srun", "-N1", "-w", node, *extra, "true"]
                t0 = time.perf_counter()
                res = subprocess.run(argv, env=env, cwd=pw.pw_dir, capture_output=True, text=True)
                elapsed = (time.perf_counter() - t0) * 1000
                if res.returncode != 0:
                    print(f"srun_overhead: {name}: srun failed: {res.stderr.strip()}", file=sys.stderr)
                    return 1
                if i >= 3:  # warm-up runs are not counted
                    times[name].append(elapsed)
    finally:
        subprocess.run(["nsenter", "-t", str(slurmd_pid), "-m", "umount", site.plugstack_conf])
        shutil.rmtree(tmp)

    base = statistics.median(times["no plugin"])
    print(f"srun -N1 true as {user}, {args.runs} interleaved runs each (ms)")
    print(f"{'set-up':45} {'median':>8} {'p10':>8} {'p90':>8} {'vs none':>8}")
    for name, values in times.items():
        q = statistics.quantiles(values, n=10)
        med = statistics.median(values)
        print(f"{name:45} {med:8.1f} {q[0]:8.1f} {q[-1]:8.1f} {med - base:+8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
