"""Interleaved timing of `srun -N1 true` as a test user.

Table "plugin" (srun creating its own allocation), three set-ups:

  no plugin      srun reads a plugstack.conf without shifter, and the node it runs on
                 (n3) sees the same empty plugstack.conf (bind-mounted over the site's in
                 that slurmd's own mount namespace, for the duration of the benchmark)
  plugin, unused the site's plugstack.conf on srun and node n1, no shifter option
  --image        the same with --image=docker:test/busybox:latest (Python in srun
                 with the gateway lookup, and in the prolog)
  --image=id:    the same image by its id (no Python in srun: the shim opens the
                 image's files as the user)

Table "steps": `srun -N1 true` as a step inside a running job (the step gets the job's
environment, as one started by the batch script does):
  plain job      sbatch -N1 --exclusive
  image job      sbatch -N1 --exclusive --image=docker:test/debian:latest: the step
                 inherits the job's --image (rewritten at submission to the pinned id),
                 and the shim hands it to the step without Python
  image job, a new image   the same job, `srun --image=docker:test/busybox:latest true`
                 (Python in srun validates it; shown for scale)
The two jobs run on two nodes; half the runs are made with the nodes swapped.  The
target: image job / plain job <= 1.05.

Runs are interleaved (A B C A B C ...) so drift hits all set-ups alike.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from tools import cluster
from tools.site import TEST_USERS, Site


def plugin_table(site: Site, runs: int, user: str, pw) -> int:
    bare_node, plugin_node = site.node_names()[-1], site.node_names()[0]
    image_id = subprocess.run(
        ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--",
         os.path.join(site.bindir, "shifterimg"), "lookup", "docker:test/busybox:latest"],
        env={"PATH": "/usr/bin:/bin", "HOME": pw.pw_dir, "SHIFTER_CONFIG": site.udiroot_conf},
        cwd=pw.pw_dir, capture_output=True, text=True, check=True).stdout.strip()

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
        ("plugin, --image=id:<busybox id>", site.slurm_conf, plugin_node, [f"--image=id:{image_id}"]),
    ]
    times: dict[str, list[float]] = {name: [] for name, *_ in setups}
    try:
        for i in range(runs + 3):
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
    print(f"srun -N1 true as {user}, {runs} interleaved runs each (ms)")
    print(f"{'set-up':45} {'median':>8} {'p10':>8} {'p90':>8} {'vs none':>8}")
    for name, values in times.items():
        q = statistics.quantiles(values, n=10)
        med = statistics.median(values)
        print(f"{name:45} {med:8.1f} {q[0]:8.1f} {q[-1]:8.1f} {med - base:+8.1f}")
    return 0


def _timed(argv: list[str], env: dict, cwd: str) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    res = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    return (time.perf_counter() - t0) * 1000, res


def _idle_nodes(site: Site) -> list[str]:
    res = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "SLURM_CONF": site.slurm_conf})
    return [line.split()[0] for line in res.stdout.splitlines() if line.split()[1] == "idle"]


def _start_job(site: Site, pw, node: str, extra: list[str], tmp: str, name: str, jobs: list[str]) -> dict:
    """An sbatch job on ``node`` that records its environment and waits (its id is added
    to ``jobs`` at once, for cancelling); returns that environment."""
    env_file = os.path.join(tmp, f"{name}.env")
    script = f"env -0 > {env_file}.tmp && mv {env_file}.tmp {env_file}; exec sleep 3600"
    argv = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--",
            "sbatch", "-N1", "--exclusive", "-w", node, "--output=/dev/null", *extra, "--wrap", script]
    env = {"PATH": "/usr/bin:/bin", "SLURM_CONF": site.slurm_conf, "HOME": pw.pw_dir}
    res = subprocess.run(argv, env=env, cwd=pw.pw_dir, capture_output=True, text=True, check=True)
    job = re.search(r"(\d+)", res.stdout).group(1)
    jobs.append(job)
    deadline = time.monotonic() + 120
    while not os.path.exists(env_file):
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job} ({name}) did not start on {node}")
        time.sleep(0.1)
    with open(env_file, "rb") as f:
        items = [item.decode(errors="surrogateescape") for item in f.read().split(b"\0") if item]
    return dict(item.split("=", 1) for item in items)


def step_table(site: Site, runs: int, user: str, pw) -> int:
    deadline = time.monotonic() + 60  # nodes of jobs just ended may still be completing
    while len(_idle_nodes(site)) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    nodes = _idle_nodes(site)[:2]
    if len(nodes) < 2:
        print("srun_overhead: the steps table needs 2 idle nodes", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="shifter-srun-steps-")
    os.chown(tmp, pw.pw_uid, pw.pw_gid)
    setups = [("plain job", [], []),
              ("image job (inherited request)", ["--image=docker:test/debian:latest"], []),
              ("image job, step --image=docker:test/busybox", ["--image=docker:test/debian:latest"],
               ["--image=docker:test/busybox:latest"])]
    times: dict[str, list[float]] = {name: [] for name, *_ in setups}
    jobs: list[str] = []
    try:
        for rnd, (plain_node, image_node) in enumerate((nodes, nodes[::-1])):
            plain = _start_job(site, pw, plain_node, [], tmp, f"plain{rnd}", jobs)
            image = _start_job(site, pw, image_node, setups[1][1], tmp, f"image{rnd}", jobs)
            envs = {"plain job": plain, setups[1][0]: image, setups[2][0]: image}
            share = runs // 2 if rnd == 0 else runs - runs // 2
            for i in range(share + 3):
                for name, _, step_args in setups:
                    argv = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--",
                            "srun", "-N1", *step_args, "true"]
                    elapsed, res = _timed(argv, envs[name], pw.pw_dir)
                    if res.returncode != 0:
                        print(f"srun_overhead: {name}: srun failed: {res.stderr.strip()}", file=sys.stderr)
                        return 1
                    if i >= 3:
                        times[name].append(elapsed)
            for job in jobs[-2:]:
                subprocess.run(["scancel", job], env={"PATH": "/usr/bin:/bin", "SLURM_CONF": site.slurm_conf})
    finally:
        for job in jobs:
            subprocess.run(["scancel", job], env={"PATH": "/usr/bin:/bin", "SLURM_CONF": site.slurm_conf})
        shutil.rmtree(tmp)

    base = statistics.median(times["plain job"])
    print(f"srun -N1 true as a step of a running job, as {user}, {runs} interleaved runs each (ms), "
          f"nodes {' and '.join(nodes)}")
    print(f"{'set-up':45} {'median':>8} {'p10':>8} {'p90':>8} {'ratio':>8}")
    for name, values in times.items():
        q = statistics.quantiles(values, n=10)
        med = statistics.median(values)
        print(f"{name:45} {med:8.1f} {q[0]:8.1f} {q[-1]:8.1f} {med / base:7.2f}x")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="runs per set-up (default 100)")
    parser.add_argument("--table", choices=("plugin", "steps", "all"), default="all",
                        help="which table (default all)")
    args = parser.parse_args()
    site = Site(nodes=cluster.saved_state(Site()).get("nodes", 3))
    if site.nodes < 2:
        print("srun_overhead: needs at least 2 nodes (tools/cluster up -n 3)", file=sys.stderr)
        return 2
    user = TEST_USERS[0][0]
    pw = pwd.getpwnam(user)
    rc = 0
    if args.table in ("plugin", "all"):
        rc = plugin_table(site, args.runs, user, pw)
    if rc == 0 and args.table in ("steps", "all"):
        if args.table == "all":
            print()
        rc = step_table(site, args.runs, user, pw)
    return rc


if __name__ == "__main__":
    sys.exit(main())
