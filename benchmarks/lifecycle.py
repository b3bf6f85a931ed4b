"""The job lifecycle's cost, as a test user on the local site (medians of interleaved
runs; ratios within one run):

  prolog+epilog, id:       srun -N1 --exclusive --image=id:<debian id> true
                           vs srun -N1 --exclusive true            (target <= 1.1x)
  prolog+epilog, docker:   the same with --image=docker:test/debian:latest (adds the
                           submit-time lookup at the gateway)       (target <= 1.5x)
  step in an image job     `srun -N1 true` inside an --image job vs inside a plain job
                                                                    (target <= 1.05x)
  srun -N3 shifter true    in a prepared job vs `srun -N3 true` in the same job
                                                                    (target <= 1.1x)
  python start-up          an import-heavy script (json, email, http.client,
                           xml.dom.minidom, asyncio) in the prepared container vs on the
                           host; beside it, the same in a private FUSE container
                                                                    (target <= 1.1x)

The in-job rows run inside one batch job per set-up, timing from its batch script.
With ``--scale 1,3,16,64`` it resizes the local cluster to each size in turn (and back)
and reports, per size, the prolog's and the epilog's CPU time per node (the hooks log it,
children included: it must stay flat), the time from submission to the first step's first
task of an image job against a plain one, `srun -NN shifter true` in a prepared job against
`srun -NN true` in the same job, and the gateway requests per job (from the gateway's log).
All nodes share this machine's cores: wall time at scale measures the machine, and CPU time
grows with the contention too; the control column is the CPU time of the prolog's imports
alone in N cold interpreters started at once, outside Slurm.
With ``--sshd`` it reports the prolog's own wall time per node (its "prolog done in"
log line) for an --exclusive Debian job at 1 and 3 nodes, with the job's sshd
(``enable_sshd=1``) against without (``enable_sshd=0``), interleaved: each run lays the
plugstack.conf variant over the site's in every node's namespace (target: <= +20 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from tools import cluster
from tools.site import TEST_USERS, Site

USER = TEST_USERS[0][0]
DEBIAN = "docker:test/debian:latest"
IMPORTS = "import json, email.parser, http.client, xml.dom.minidom, asyncio"

# runs inside a job, as its batch script (the host's python): times commands, prints JSON
_IN_JOB = r'''
import json, os, statistics, subprocess, sys, time
runs, cmds = int(sys.argv[1]), json.loads(sys.argv[2])
out = {name: [] for name in cmds}
for i in range(runs + 2):
    for name, argv in cmds.items():
        t0 = time.perf_counter()
        res = subprocess.run(argv, capture_output=True, text=True)
        dt = time.perf_counter() - t0
        if res.returncode != 0:
            print(json.dumps({"error": name, "stderr": res.stderr}))
            sys.exit(1)
        if i >= 2:
            out[name].append(dt)
print(json.dumps({k: statistics.median(v) for k, v in out.items()}))
'''


def _as_user(pw, site, argv, **kw):
    env = {"PATH": f"{site.bindir}:/usr/bin:/bin", "SLURM_CONF": site.slurm_conf, "HOME": pw.pw_dir,
           "SHIFTER_CONFIG": site.udiroot_conf}
    return subprocess.run(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--",
                           *argv], env=env, cwd=pw.pw_dir, capture_output=True, text=True, **kw)


def _wait_node_idle(site, node: str, timeout: float = 30.0) -> None:
    """Until slurmctld says ``node`` is idle (its last job's epilog done), then a pause for
    the scheduler to settle."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = subprocess.run(["scontrol", "-o", "show", "node", node], capture_output=True, text=True,
                             env=cluster.slurm_env(site))
        if "State=IDLE " in res.stdout and "COMPLETING" not in res.stdout:
            break
        time.sleep(0.02)
    time.sleep(0.2)


def _timed(pw, site, argv) -> float:
    t0 = time.perf_counter()
    res = _as_user(pw, site, argv)
    if res.returncode != 0:
        raise SystemExit(f"lifecycle: {' '.join(argv)} failed: {res.stderr.strip()}")
    return time.perf_counter() - t0


def _in_job(pw, site, sbatch_args, runs, cmds) -> dict:
    script = os.path.join(pw.pw_dir, f".lifecycle-bench-{os.getpid()}.py")
    with open(script, "w") as f:
        f.write(_IN_JOB)
    os.chmod(script, 0o644)
    out = os.path.join(pw.pw_dir, f".lifecycle-bench-{os.getpid()}.out")
    try:
        res = _as_user(pw, site, ["sbatch", "--wait", f"--output={out}", *sbatch_args, "--wrap",
                                  f"{sys.prefix}/bin/python {script} {runs} '{json.dumps(cmds)}'"], timeout=1800)
        text = open(out).read() if os.path.exists(out) else ""
        if res.returncode != 0:
            raise SystemExit(f"lifecycle: the job failed: {res.stderr.strip()} {text}")
        return json.loads(text.strip().splitlines()[-1])
    finally:
        for path in (script, out):
            if os.path.exists(path):
                os.unlink(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="runs per set-up (default 30)")
    parser.add_argument("--scale", default="", help="node counts for the scale table, e.g. 1,3,16,64")
    parser.add_argument("--sshd", action="store_true", help="the prolog with the job's sshd against without")
    parser.add_argument("--config", help="with --sshd: the udiRoot.conf the plugin reads (default: the site's)")
    args = parser.parse_args()
    if args.scale:
        return scale(args)
    if args.sshd:
        return sshd_table(args)
    site = Site(nodes=cluster.saved_state(Site()).get("nodes", 3))
    pw = pwd.getpwnam(USER)
    debian_id = _as_user(pw, site, ["shifterimg", "lookup", DEBIAN]).stdout.strip()
    rows = []

    # prolog + epilog: whole srun allocations, interleaved
    setups = {"plain": [], "id": [f"--image=id:{debian_id}"], "docker": [f"--image={DEBIAN}"]}
    times = {k: [] for k in setups}
    for i in range(args.runs + 2):
        for name, extra in setups.items():
            _wait_node_idle(site, "n1")  # each starts on a free node: none waits for the one before's epilog
            dt = _timed(pw, site, ["srun", "-N1", "-w", "n1", "--exclusive", *extra, "true"])
            if i >= 2:
                times[name].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows.append(("srun -N1 --exclusive --image=id:<debian> true", med["id"], "srun -N1 --exclusive true",
                 med["plain"], 1.1))
    rows.append(("the same with --image=docker:test/debian:latest", med["docker"], "srun -N1 --exclusive true",
                 med["plain"], 1.5))

    # inside jobs
    host_py = [f"{sys.prefix}/bin/python", "-c", IMPORTS]
    in_image = _in_job(pw, site, ["-N3", f"--image={DEBIAN}"], args.runs, {
        "srun1": ["srun", "-N1", "true"],
        "srun3_shifter": ["srun", "-N3", "shifter", "true"],
        "srun3": ["srun", "-N3", "true"],
        "py_prepared": ["shifter", "python3", "-c", IMPORTS],
        "py_private": ["env", "SHIFTER_VOLUME=/tmp:/scratch", "shifter", "python3", "-c", IMPORTS],
        "py_host": host_py,
    })
    plain = _in_job(pw, site, ["-N3"], args.runs, {"srun1": ["srun", "-N1", "true"]})
    rows.append(("srun -N1 true in an --image job", in_image["srun1"], "in a plain job", plain["srun1"], 1.05))
    rows.append(("srun -N3 shifter true (prepared)", in_image["srun3_shifter"], "srun -N3 true",
                 in_image["srun3"], 1.1))
    rows.append(("import-heavy python3, prepared container", in_image["py_prepared"], "on the host (python3.11)",
                 in_image["py_host"], 1.1))
    rows.append(("import-heavy python3, private FUSE container", in_image["py_private"], "on the host",
                 in_image["py_host"], None))

    print(f"median of {args.runs} interleaved runs (ms), as {USER}")
    print(f"{'measure':48} {'ms':>8}  {'against':28} {'ms':>8} {'ratio':>6} {'target':>7}")
    for name, value, other, base, target in rows:
        print(f"{name:48} {value * 1000:8.1f}  {other:28} {base * 1000:8.1f} {value / base:5.2f}x "
              f"{'<= %.2fx' % target if target else '':>7}")
    return 0


def _log_numbers(site, pattern: str) -> list[float]:
    """The number the regex ``pattern`` captures, in every node's slurmd log line it matches."""
    import re

    rx = re.compile(pattern)
    out = []
    for node in site.node_names():
        with open(site.slurmd_log(node), errors="replace") as f:
            out += [float(m.group(1)) for m in map(rx.search, f) if m]
    return out


def _hook_cpu(site, job: str, hook: str) -> list[float]:
    return _log_numbers(site, rf"shifter: {hook}: job={job} node=\S+: .*\(cpu ([0-9.]+) s, ")


def _gateway_requests(site, since: int) -> int:
    with open(os.path.join(site.log, "gateway.log"), errors="replace") as f:
        f.seek(since)
        return sum(1 for ln in f if "/api/" in ln)


def _first_step(pw, site, argv) -> tuple[float, str]:
    """Seconds from submitting ``argv`` (an srun making its own allocation) to the first of
    its tasks starting, and the job id; every task prints its start time and the job id."""
    t0 = time.time()
    res = _as_user(pw, site, [*argv, "sh", "-c", 'echo "$(date +%s.%N) $SLURM_JOB_ID"; exec "$@"', "task", *TASK])
    if res.returncode != 0:
        raise SystemExit(f"lifecycle: {' '.join(argv)} failed: {res.stderr.strip()}")
    rows = [ln.split() for ln in res.stdout.splitlines() if ln.strip()]
    return min(float(r[0]) for r in rows) - t0, rows[0][1]


TASK = ["true"]

# the control: the prolog's imports, N cold interpreters at once (what 64 nodes' prologs
# starting together cost each other on this machine's shared cores)
_CONTROL = r"""
import os, resource, sys, time
while not os.path.exists(sys.argv[1]):
    time.sleep(0.001)
r0 = resource.getrusage(resource.RUSAGE_SELF)
import shifter.spank.dispatch, shifter.wlm.prolog, shifter.runtime.builder.udi
r = resource.getrusage(resource.RUSAGE_SELF)
print(r.ru_utime + r.ru_stime - r0.ru_utime - r0.ru_stime)
"""


def _control_cpu(n: int) -> float:
    """Median CPU seconds of the prolog's imports, ``n`` cold interpreters started at once
    (the interpreter's own start excluded: it happens before the go signal)."""
    with tempfile.TemporaryDirectory() as d:
        go = os.path.join(d, "go")
        procs = [subprocess.Popen([sys.executable, "-I", "-c", _CONTROL, go], stdout=subprocess.PIPE, text=True)
                 for _ in range(n)]
        time.sleep(0.5 + n * 0.03)
        open(go, "w").close()
        return statistics.median(float(p.communicate()[0]) for p in procs)


def scale(args) -> int:
    """Per cluster size: the prolog's and epilog's CPU per node, the time to the first
    step of an image job against a plain one, `srun -NN shifter true` in a prepared job
    against `srun -NN true` in it, and the gateway requests per job."""
    sizes = [int(x) for x in args.scale.split(",")]
    before = cluster.saved_state(Site()).get("nodes", 3)
    pw = pwd.getpwnam(USER)
    image = "--image=docker:test/busybox:latest"
    m = statistics.median
    print(f"median of {args.runs} runs per size, as {USER}; CPU per node (s), wall (ms)")
    print(f"{'nodes':>5} {'prolog cpu (min)':>16} {'epilog cpu (min)':>16} | {'1st step image':>14} {'plain':>6} {'ratio':>6} | "
          f"{'srun shifter true':>17} {'srun true':>9} {'ratio':>6} | {'gw req/job':>10} | {'control cpu':>11}")
    try:
        for n in sizes:
            site = Site(nodes=n)
            cluster.up(site, images=False)
            first_image, first_plain, prolog, epilog, requests = [], [], [], [], []
            nodes = [f"-N{n}", "--ntasks-per-node=1"]
            for i in range(args.runs + 1):
                since = os.path.getsize(os.path.join(site.log, "gateway.log"))
                t_image, job = _first_step(pw, site, ["srun", *nodes, image])
                t_plain, _ = _first_step(pw, site, ["srun", *nodes])
                time.sleep(1.0)  # the epilogs log after srun returns
                if i >= 1:
                    first_image.append(t_image)
                    first_plain.append(t_plain)
                    prolog += _hook_cpu(site, job, "prolog")
                    epilog += _hook_cpu(site, job, "epilog")
                    requests.append(_gateway_requests(site, since))
            in_job = _in_job(pw, site, [*nodes, image], args.runs, {
                "shifter": ["srun", *nodes, "shifter", "true"], "plain": ["srun", *nodes, "true"]})
            print(f"{n:5d} {m(prolog):8.3f} ({min(prolog):.3f}) {m(epilog):8.3f} ({min(epilog):.3f}) | {m(first_image) * 1000:14.0f} "
                  f"{m(first_plain) * 1000:6.0f} {m(first_image) / m(first_plain):5.2f}x | "
                  f"{in_job['shifter'] * 1000:17.0f} {in_job['plain'] * 1000:9.0f} "
                  f"{in_job['shifter'] / in_job['plain']:5.2f}x | {max(requests):10d} | "
                  f"{m(_control_cpu(n) for _ in range(3)):11.3f}", flush=True)
    finally:
        cluster.up(Site(nodes=before), images=False)
    return 0


def _prolog_wall(site, job: str) -> list[float]:
    return _log_numbers(site, rf"shifter: prolog: job={job} node=\S+: prolog done in ([0-9.]+) s")


def sshd_table(args) -> int:
    import re
    import signal

    # the plugstack.conf laid over the nodes' must come off even when killed (timeout)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    site = Site(nodes=cluster.saved_state(Site()).get("nodes", 3))
    pw = pwd.getpwnam(USER)
    with open(site.plugstack_conf) as f:
        text = f.read()
    base = re.sub(r" enable_sshd=[01]", "", text)
    if args.config:
        base = re.sub(r"shifter_config=\S+", f"shifter_config={args.config}", base)
    variants = {flag: re.sub(r"^(required .*)$", rf"\1 enable_sshd={flag}", base, count=1, flags=re.M)
                for flag in ("0", "1")}
    tmp = tempfile.mkdtemp(prefix="shifter-bench-sshd-")
    paths = {}
    for flag, body in variants.items():
        paths[flag] = os.path.join(tmp, f"plugstack-{flag}.conf")
        with open(paths[flag], "w") as f:
            f.write(body)
        os.chmod(paths[flag], 0o644)
    pids = [open(cluster.slurmd_pidfile(site, n)).read().strip() for n in site.node_names()]
    client_conf, _ = cluster.private_slurm_conf(site, variants["0"])  # srun reads the same udiRoot.conf
    os.chmod(os.path.dirname(client_conf), 0o755)
    for name in os.listdir(os.path.dirname(client_conf)):
        os.chmod(os.path.join(os.path.dirname(client_conf), name), 0o644)

    def lay(flag):
        for pid in pids:
            subprocess.run(["nsenter", "-t", pid, "-m", "umount", site.plugstack_conf], capture_output=True)
            subprocess.run(["nsenter", "-t", pid, "-m", "mount", "--bind", paths[flag], site.plugstack_conf],
                           check=True)

    times = {(n, flag): [] for n in (1, 3) for flag in ("0", "1")}
    try:
        for i in range(args.runs + 2):
            for n in (1, 3):
                for flag in ("0", "1"):
                    lay(flag)
                    res = _as_user(pw, site, ["env", f"SLURM_CONF={client_conf}", "srun", f"-N{n}", "--exclusive",
                                              f"--image={DEBIAN}", "sh", "-c", "echo $SLURM_JOB_ID"])
                    if res.returncode != 0:
                        raise SystemExit(f"lifecycle: srun failed: {res.stderr.strip()}")
                    job = res.stdout.split()[0]
                    walls = _prolog_wall(site, job)
                    if len(walls) != n:
                        raise SystemExit(f"lifecycle: job {job}: {len(walls)} prolog times for {n} nodes")
                    if i >= 2:
                        times[(n, flag)] += walls
    finally:
        for pid in pids:
            subprocess.run(["nsenter", "-t", pid, "-m", "umount", site.plugstack_conf], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(os.path.dirname(client_conf), ignore_errors=True)
    print(f"prolog wall time per node, --exclusive {DEBIAN}, median of {args.runs} interleaved runs (ms), as {USER}")
    print(f"{'nodes':>5} {'enable_sshd=0':>14} {'enable_sshd=1':>14} {'delta':>8} {'target':>8}")
    for n in (1, 3):
        off, on = statistics.median(times[(n, "0")]), statistics.median(times[(n, "1")])
        print(f"{n:5d} {off * 1000:14.1f} {on * 1000:14.1f} {(on - off) * 1000:+8.1f} {'<= +20':>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
