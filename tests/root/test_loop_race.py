"""Many processes attaching loop devices at the same moment (a 64-node job's prologs on
the local site, which shares one kernel; several jobs starting on one node) all get one:
LOOP_CTL_GET_FREE hands every racer the same number and one wins per round."""

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
