"""Many processes attaching loop devices at the same moment (a 64-node job's prologs on
the local site, which shares one kernel; several jobs starting on one node) all get one:
LOOP_CTL_GET_FREE hands every racer the same number and one wins per round.  Prologs
starting together on a fresh node share one jobs anchor."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.root

RACERS = 48
CHILD = r"""
import os, sys, time
from shifter.runtime import linux
backing, go = sys.argv[1], sys.argv[2]
fd = os.open(backing, os.O_RDONLY | os.O_CLOEXEC)
while not os.path.exists(go):
    time.sleep(0.001)
with linux.loop_device(fd) as dev:
    print(dev, flush=True)
    time.sleep(1.0)  # hold it while the others race
"""


def test_racing_attaches_all_get_a_device(tmp_path):
    from helpers.prereq import require

    require(os.geteuid() == 0, "attaching loop devices needs root")
    backing = tmp_path / "backing"
    backing.write_bytes(b"\0" * 1024 * 1024)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(backing), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(RACERS)]
    time.sleep(1.5)  # every child imported and waits
    go.touch()
    results = [p.communicate(timeout=60) for p in procs]
    failed = [err for p, (out, err) in zip(procs, results) if p.returncode != 0]
    assert failed == [], failed[0]
    devices = [out.strip() for out, _ in results]
    assert len(set(devices)) == RACERS  # each its own device, all at once
    deadline = time.monotonic() + 10  # autoclear: freed at the last close
    while any(os.path.exists(f"/sys/block/{os.path.basename(d)}/loop/backing_file") and
              str(backing) in open(f"/sys/block/{os.path.basename(d)}/loop/backing_file").read()
              for d in devices):
        assert time.monotonic() < deadline
        time.sleep(0.1)


ANCHOR_RACE = r"""
import os, sys, time
from shifter.runtime import linux
from shifter.runtime import config as udiconfig
from shifter.runtime.builder import udi
base, go = sys.argv[1], sys.argv[2]
# a fresh node: its own mount namespace, no anchor yet (the first jobs after a restart)
linux.unshare(linux.CLONE_NEWNS)
linux.make_propagation("/", linux.MS_PRIVATE, recursive=True)
config = udiconfig.parse(f"udiMount={base}/udi\nloopMount={base}/loop\n")
pids = []
for job in range(16):
    pid = os.fork()
    if pid == 0:
        while not os.path.exists(go):
            time.sleep(0.0002)
        try:
            udi.prepare_job_dirs(config, str(job), 4242)
            # what the prolog does next: mount the image on the job's directory
            linux.mount("none", udi.job_paths(config, job)[1], "tmpfs", 0, "size=16k")
        except OSError as e:
            print(f"job {job}: {e}", flush=True)
            os._exit(1)
        os._exit(0)
    pids.append(pid)
time.sleep(0.5)
open(go, "w").close()
failed = sum(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) != 0 for p in pids)
anchors = sum(1 for mp, _, src in linux.mountinfo() if mp == f"{base}/loop.jobs" and src == linux.ANCHOR)
print(f"failed={failed} anchors={anchors}", flush=True)
"""


def test_prologs_starting_together_on_a_fresh_node_share_one_anchor(tmp_path):
    """Jobs starting together on a node whose namespace has no anchor yet: every prolog
    finds its job's directories (before: two anchors stacked, the second hiding the job
    directories made in the first, and the prolog failed with ENOENT)."""
    from helpers.prereq import require

    require(os.geteuid() == 0, "mount namespaces need root")
    for attempt in range(5):
        base = tmp_path / f"r{attempt}"
        base.mkdir()
        go = tmp_path / f"go{attempt}"
        res = subprocess.run([sys.executable, "-c", ANCHOR_RACE, str(base), str(go)], capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip().splitlines()[-1] == "failed=0 anchors=1", res.stdout
